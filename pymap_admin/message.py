"""What a message must look like when it is stored: the one place for the
line-ending rule, shared by ``pymap-admin append`` and ``pymap-deliver``."""

from __future__ import annotations

import re

__all__ = ["crlf"]

_BARE_LF = re.compile(rb"(?<!\r)\n")


def crlf(data: bytes) -> bytes:
    """Line endings as IMAP wants them (RFC 3501: CRLF).

    MTAs hand a local delivery command the message with UNIX line endings
    (postfix's pipe(8) and local(8), sendmail's local mailer), and some LMTP
    clients send bare LFs too; stored as they are, IMAP clients would get
    bare LFs. A message already in CRLF is returned unchanged (no copy).
    """
    lines = data.count(b"\n")
    bare = lines - data.count(b"\r\n")
    if not bare:
        return data
    if bare == lines:
        return data.replace(b"\n", b"\r\n")
    return _BARE_LF.sub(b"\r\n", data)
