"""Address -> (pymap user, mailbox) rules."""

from __future__ import annotations

import pytest

from pymap_deliver.recipients import RecipientRules, Target


@pytest.mark.parametrize(("rules", "address", "expected"), [
    (RecipientRules(), "Alice@Example.COM", Target("Alice@Example.COM", "Alice@example.com")),
    (RecipientRules(), "alice+tag@example.com",
     Target("alice+tag@example.com", "alice+tag@example.com")),
    (RecipientRules(), "demouser", Target("demouser", "demouser")),
    (RecipientRules(local_part_only=True), "Alice@Example.COM",
     Target("Alice@Example.COM", "Alice")),
    (RecipientRules(delimiter="+"), "alice+tag@Example.com",
     Target("alice+tag@Example.com", "alice@example.com")),
    (RecipientRules(delimiter="+-"), "alice-tag+x@example.com",
     Target("alice-tag+x@example.com", "alice@example.com")),
    (RecipientRules(delimiter="+", detail_mailbox=True), "alice+Lists@example.com",
     Target("alice+Lists@example.com", "alice@example.com", "Lists")),
    (RecipientRules(delimiter="+", detail_mailbox=True), "alice+@example.com",
     Target("alice+@example.com", "alice@example.com", None)),
    # A delimiter at the very start is part of the name, not a detail.
    (RecipientRules(delimiter="+", detail_mailbox=True), "+alice@example.com",
     Target("+alice@example.com", "+alice@example.com", None)),
    (RecipientRules(delimiter="+", local_part_only=True), "a+b@c",
     Target("a+b@c", "a")),
    # The last @ separates the domain ("a@b"@c is a quoted local part).
    (RecipientRules(), '"a@b"@Example.com', Target('"a@b"@Example.com', '"a@b"@example.com')),
])
def test_resolve(rules: RecipientRules, address: str, expected: Target) -> None:
    assert rules.resolve(address) == expected


def test_invalid_rules() -> None:
    with pytest.raises(ValueError, match="delimiter"):
        RecipientRules(delimiter="@")
    with pytest.raises(ValueError, match="detail mailbox"):
        RecipientRules(detail_mailbox=True)
