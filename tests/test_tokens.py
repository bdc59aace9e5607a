"""Token sources and macaroon helpers (without a server; the real server's
verdict on attenuated tokens is in test_client_real)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pymacaroons import Macaroon

from pymap_admin import ConfigurationError, TokenSource, attenuate, inspect_token
from pymap_admin.tokens import RequestTokens


def admin_token() -> str:
    macaroon = Macaroon(location="", identifier="", key=b"k" * 32)
    macaroon.add_first_party_caveat("role = admin")
    token: str = macaroon.serialize()
    return token


def test_inspect_admin_and_attenuated_tokens() -> None:
    base = admin_token()
    info = inspect_token(base)
    assert info.kind == "admin"
    assert info.expires is None
    assert not info.expired()
    until = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    narrowed = inspect_token(attenuate(base, authzid="alice", expires=until))
    assert narrowed.kind == "admin"
    assert narrowed.authzid == "alice"
    assert narrowed.expires == until
    assert narrowed.caveats[-1] == "time < 2030-01-02T03:04:05+00:00"


def test_attenuation_keeps_the_signature_chain() -> None:
    from pymacaroons import Verifier

    narrowed = Macaroon.deserialize(attenuate(admin_token(), authzid="bob"))
    verifier = Verifier()
    verifier.satisfy_exact("role = admin")
    verifier.satisfy_exact("authzid = bob")
    assert verifier.verify(narrowed, b"k" * 32)


@pytest.mark.parametrize("base", [admin_token(), "login"])
def test_fast_attenuation_equals_pymacaroons(base: str) -> None:
    if base == "login":
        macaroon = Macaroon(location="", identifier="abc123", key=b"user key")
        macaroon.add_first_party_caveat("authcid = alice")
        base = macaroon.serialize()
    until = datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    reference = Macaroon.deserialize(base)
    reference.add_first_party_caveat("authzid = alice")
    reference.add_first_party_caveat(f"time < {until.isoformat()}")
    assert attenuate(base, authzid="alice", expires=until) == reference.serialize()


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="not a pymap token"):
        inspect_token("not a macaroon")
    with pytest.raises(ValueError, match="timezone"):
        attenuate(admin_token(), expires=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="invalid user"):
        attenuate(admin_token(), authzid="a\nrole = admin")


def test_expired() -> None:
    past = attenuate(admin_token(), expires=datetime.now(UTC) - timedelta(seconds=1))
    assert inspect_token(past).expired()


def test_request_tokens_are_cached_per_user_and_renewed() -> None:
    tokens = RequestTokens(lifetime=timedelta(minutes=10))
    base = admin_token()
    first = tokens.for_user(base, "alice")
    assert tokens.for_user(base, "alice") == first
    assert tokens.for_user(base, "bob") != first
    assert inspect_token(tokens.for_user(base, "bob")).authzid == "bob"
    # A token that is no macaroon is passed through for the server to judge.
    assert tokens.for_user("opaque", "alice") == "opaque"


def test_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    source = TokenSource(path=path)
    assert source.current() == "first"
    path.write_text("second-token\n")
    assert source.current() == "second-token"
    # Same size and mtime (a fast rewrite): only a forced reload sees it.
    stat = path.stat()
    path.write_text("third--token\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source.current() == "second-token"
    assert source.reload() is True
    assert source.current() == "third--token"
    assert source.reload() is False


def test_literal_token_wins_and_empty_file_is_an_error(tmp_path: Path) -> None:
    assert TokenSource(token=" literal \n").current() == "literal"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigurationError, match="empty"):
        TokenSource(path=empty).current()
    with pytest.raises(ConfigurationError, match="no admin token"):
        TokenSource().current()
