"""Envelope recipient -> (pymap user, mailbox): the address rules.

By default the pymap user is the whole address with the domain lowercased
(domains are case-insensitive, local parts are not: RFC 5321 §2.4). Options
choose the local part only, and a recipient delimiter (``+``) whose detail is
stripped for the user and may choose the mailbox, as Dovecot's
``lmtp_save_to_detail_mailbox`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_DETAIL_MAILBOX", "RecipientRules", "Target", "is_mailbox_name"]

#: pymap's hierarchy separator, on every backend.
MAILBOX_SEPARATOR = "/"
#: The longest detail taken as a mailbox name, in characters. Folder names
#: are short; a long one is an attack or a mistake, and INBOX is safe.
MAX_DETAIL_MAILBOX = 255


def is_mailbox_name(name: str) -> bool:
    """True when ``name`` is a mailbox name and nothing else: every component
    between separators is a real name (not empty, not ``.`` or ``..``, so no
    leading, trailing or doubled separator and no way out of the user's own
    folders on a file-system layout), with no control characters, and the
    whole is at most :data:`MAX_DETAIL_MAILBOX` characters.

    This is the one place holding the rule: an address detail that fails it
    is not a mailbox, and the message goes to INBOX.
    """
    if not name or len(name) > MAX_DETAIL_MAILBOX or any(_is_control(c) for c in name):
        return False
    return all(part not in ("", ".", "..") for part in name.split(MAILBOX_SEPARATOR))


def _is_control(char: str) -> bool:
    # C0, DEL and C1; other non-printables (spaces of other scripts) are names.
    return ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F


@dataclass(frozen=True, slots=True)
class Target:
    """Where one recipient's copy goes."""

    address: str
    user: str
    #: The mailbox chosen by the address detail, or None for the default (INBOX).
    mailbox: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientRules:
    local_part_only: bool = False
    #: Characters that separate the user from a detail, e.g. ``"+"`` (postfix's
    #: ``recipient_delimiter`` may list several); empty for none.
    delimiter: str = ""
    #: File mail for ``user+Folder`` into ``Folder`` (INBOX if it does not
    #: exist, or if the detail is not a mailbox name: :func:`is_mailbox_name`).
    detail_mailbox: bool = False

    def __post_init__(self) -> None:
        if "@" in self.delimiter or any(c.isspace() for c in self.delimiter):
            raise ValueError(f"invalid recipient delimiter {self.delimiter!r}")
        if self.detail_mailbox and not self.delimiter:
            raise ValueError("a detail mailbox needs a recipient delimiter")

    def resolve(self, address: str) -> Target:
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        detail: str | None = None
        if self.delimiter:
            cut = min((i for i in (local.find(d) for d in self.delimiter) if i > 0),
                      default=-1)
            if cut > 0:
                local, detail = local[:cut], local[cut + 1:]
        if self.local_part_only or not domain:
            user = local
        else:
            user = f"{local}@{domain.lower()}"
        mailbox = detail if self.detail_mailbox and detail and is_mailbox_name(detail) else None
        return Target(address=address, user=user, mailbox=mailbox)
