"""Where tokens come from, and what a token says.

pymap's admin tokens are macaroons. Anyone holding one can add first-party
caveats without the server's key, and pymap checks two kinds: ``time <
<ISO-8601 with timezone>`` and ``authzid = <user>``. The client uses that to
send, with each request, a token narrowed to the user it acts on and to a few
minutes: a request token seen by anyone else is good for one user, briefly.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .errors import ConfigurationError, InvalidUserName

__all__ = [
    "MAX_USER_NAME",
    "REQUEST_TOKEN_LIFETIME",
    "RequestTokens",
    "TokenInfo",
    "TokenSource",
    "attenuate",
    "inspect_token",
    "token_kind",
]

#: How long an attenuated request token stays valid. Minutes, not seconds:
#: a request can wait for a loaded server, and clocks drift a little.
REQUEST_TOKEN_LIFETIME = timedelta(minutes=10)
#: The longest user name a request may carry, in UTF-8 bytes. Addresses are
#: at most a few hundred; anything near a caveat's 64 KiB is an attack.
MAX_USER_NAME = 4096
# What a caveat line cannot hold.
_UNSAFE_IN_CAVEAT = re.compile(r"[\r\n\x00]")
# A cached request token is renewed when less than this is left of it.
_RENEW_MARGIN = timedelta(minutes=5)


class TokenSource:
    """The current token: a literal one, or the contents of a token file,
    re-read whenever the file changes (pymap writes a new admin token on
    every start)."""

    def __init__(self, *, token: str | None = None, path: Path | None = None,
                 check_interval: float = 0.0) -> None:
        """``check_interval``: look at the file at most this often (seconds);
        a client that re-reads it when the server refuses the token anyway
        need not ``stat`` it for every call."""
        self._literal = token.strip() if token else None
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._cached: str | None = None
        self._check_interval = check_interval
        self._next_check = 0.0
        #: How many times the token file was read (for metrics).
        self.reads = 0

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def configured(self) -> bool:
        return self._literal is not None or self._path is not None

    def current(self) -> str:
        """The token to use now; re-reads the file if it changed."""
        if self._literal is not None:
            return self._literal
        if self._path is None:
            raise ConfigurationError(
                "no admin token: set PYMAP_ADMIN_TOKEN, use --token-file, or "
                "save one with 'pymap-admin login -s'"
            )
        if self._cached is not None and self._check_interval:
            now = time.monotonic()
            if now < self._next_check:
                return self._cached
            self._next_check = now + self._check_interval
        try:
            stat = os.stat(self._path)
        except OSError as exc:
            raise ConfigurationError(f"cannot read token file {self._path}: "
                                     f"{exc.strerror}") from exc
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp or self._cached is None:
            self._cached = self._read()
            self._stamp = stamp
        return self._cached

    def reload(self) -> bool:
        """Force a re-read (after the server refused the token); True if it changed."""
        if self._literal is not None or self._path is None:
            return False
        before = self._cached
        self._stamp = None
        self._next_check = 0.0
        return self.current() != before

    def _read(self) -> str:
        assert self._path is not None
        self.reads += 1
        try:
            token = self._path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read token file {self._path}: {exc}") from exc
        if not token:
            raise ConfigurationError(f"token file is empty: {self._path}")
        return token


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a token says about itself, without the server's key."""

    kind: str  #: "admin", "login" or "unknown"
    identifier: str
    location: str
    authcid: str | None
    authzid: str | None
    expires: datetime | None  #: the earliest ``time <`` caveat
    caveats: tuple[str, ...]

    def expired(self, now: datetime | None = None) -> bool:
        if self.expires is None:
            return False
        return (now or datetime.now(UTC)) >= self.expires


def _as_text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    # The server compares against an aware "now"; a naive time is treated as
    # UTC here for display.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def inspect_token(token: str) -> TokenInfo:
    """Read a token's caveats. Raises :class:`ValueError` if it is no macaroon."""
    from pymacaroons import Macaroon
    from pymacaroons.exceptions import MacaroonException

    try:
        macaroon = Macaroon.deserialize(token.strip())
        caveats = tuple(_as_text(c.caveat_id) for c in macaroon.first_party_caveats())
        identifier = _as_text(macaroon.identifier)
        location = _as_text(macaroon.location)
    except (MacaroonException, ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"not a pymap token: {exc}") from exc
    kind = "unknown"
    authcid = authzid = None
    expiries: list[datetime] = []
    for caveat in caveats:
        name, _, rest = caveat.partition(" ")
        op, _, value = rest.partition(" ")
        if caveat == "role = admin":
            kind = "admin"
        elif name == "authcid" and op == "=":
            kind = "login" if kind == "unknown" else kind
            authcid = value
        elif name == "authzid" and op == "=":
            authzid = value
        elif name == "time" and op == "<":
            parsed = _parse_time(value)
            if parsed is not None:
                expiries.append(parsed)
    return TokenInfo(kind=kind, identifier=identifier, location=location, authcid=authcid,
                     authzid=authzid, expires=min(expiries, default=None), caveats=caveats)


def attenuate(token: str, *, authzid: str | None = None,
              expires: datetime | None = None) -> str:
    """A narrower token: only for acting as ``authzid``, only until ``expires``."""
    if expires is not None and expires.tzinfo is None:
        raise ValueError("the expiry must carry a timezone")
    caveats = []
    if authzid is not None:
        if any(ch in authzid for ch in "\r\n\0"):
            raise ValueError("invalid user name for a caveat")
        caveats.append(f"authzid = {authzid}")
    if expires is not None:
        caveats.append(f"time < {expires.astimezone(UTC).isoformat()}")
    token = token.strip()
    fast = _attenuate_v1(token, caveats)
    if fast is not None:
        return fast
    from pymacaroons import Macaroon

    try:
        macaroon = Macaroon.deserialize(token)
    except Exception as exc:  # pymacaroons raises assorted types on bad input
        raise ValueError(f"not a pymap token: {exc}") from exc
    for caveat in caveats:
        macaroon.add_first_party_caveat(caveat)
    serialized: str = macaroon.serialize()
    return serialized


# The last packet of a version 1 binary macaroon: 4 hex digits of length
# (0x2f = 47), "signature ", 32 bytes of HMAC-SHA256, a newline.
_V1_SIGNATURE = b"002fsignature "
_V1_SIGNATURE_PACKET = 47


def _decode_v1(token: str) -> bytes | None:
    """The binary form of a version 1 macaroon, or None if it is not one."""
    import base64
    import binascii

    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, binascii.Error):
        return None
    packet = raw[-_V1_SIGNATURE_PACKET:]
    if not (packet.startswith(_V1_SIGNATURE) and packet.endswith(b"\n")
            and raw.startswith(b"0") and len(raw) > _V1_SIGNATURE_PACKET):
        return None
    return raw


def token_kind(token: str) -> str:
    """"admin" for pymap's admin token as pymap issues it (an empty
    identifier and the one caveat ``role = admin``), "narrowed admin" for one
    with more caveats, "login" for a macaroon with an identifier (a token
    pymap keeps in its token store), "unknown" otherwise. Cheap: no
    pymacaroons."""
    raw = _decode_v1(token.strip())
    if raw is None:
        return "unknown"
    identifier: bytes | None = None
    admin = False
    caveats = 0
    offset = 0
    while offset + 4 <= len(raw):
        try:
            length = int(raw[offset:offset + 4], 16)
        except ValueError:
            return "unknown"
        if length < 5 or offset + length > len(raw):
            return "unknown"
        key, _, value = raw[offset + 4:offset + length - 1].partition(b" ")
        if key == b"identifier":
            identifier = value
        elif key == b"cid":
            caveats += 1
            admin = admin or value == b"role = admin"
        offset += length
    if identifier is None:
        return "unknown"
    if not identifier:
        if not admin:
            return "unknown"
        return "admin" if caveats == 1 else "narrowed admin"
    return "login"


def _attenuate_v1(token: str, caveats: list[str]) -> str | None:
    """Add first-party caveats to a version 1 binary macaroon, the format
    pymap issues, without importing pymacaroons (and PyNaCl): each caveat is
    a ``cid`` packet, and the new signature is HMAC-SHA256 keyed with the old
    one over the caveat. This keeps the per-request narrowing off the start-up
    cost of ``pymap-admin append``. The output is what pymacaroons writes (a
    test compares them); None for anything else, left to pymacaroons.
    """
    import base64
    import hashlib
    import hmac

    raw = _decode_v1(token)
    if raw is None:
        return None
    packet = raw[-_V1_SIGNATURE_PACKET:]
    body = bytearray(raw[:-_V1_SIGNATURE_PACKET])
    signature = packet[len(_V1_SIGNATURE):-1]
    for caveat in caveats:
        data = caveat.encode("utf-8")
        length = 4 + len(b"cid ") + len(data) + 1
        if length > 0xFFFF:
            raise ValueError("caveat too long")
        body += b"%04x" % length + b"cid " + data + b"\n"
        signature = hmac.new(signature, data, hashlib.sha256).digest()
    body += _V1_SIGNATURE + signature + b"\n"
    return base64.urlsafe_b64encode(bytes(body)).decode("ascii").rstrip("=")


def _rounded_up(moment: datetime, lifetime: timedelta) -> datetime:
    """``moment`` rounded up to the minute (to a tenth of ``lifetime`` if
    that is shorter): tokens narrowed within the same window are the same
    token, byte for byte, so HPACK can send it as an index."""
    step = min(60.0, lifetime.total_seconds() / 10)
    if step <= 0:
        return moment
    stamp = moment.timestamp()
    return datetime.fromtimestamp(-(-stamp // step) * step, UTC)


class RequestTokens:
    """Attenuated per-user request tokens, cached while fresh.

    A token that is not a macaroon is passed through unchanged: the server
    will judge it.
    """

    def __init__(self, lifetime: timedelta = REQUEST_TOKEN_LIFETIME) -> None:
        self._lifetime = lifetime
        self._renew_after = max(lifetime - _RENEW_MARGIN, lifetime / 2)
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
        #: How many narrowed tokens were made (for metrics).
        self.minted = 0

    def for_user(self, token: str, user: str) -> str:
        """``token`` narrowed to ``user`` and a few minutes. Raises
        :class:`~pymap_admin.errors.InvalidUserName` for a user no caveat can
        name: the full token is never sent in place of a narrowed one."""
        if _UNSAFE_IN_CAVEAT.search(user) or len(user.encode("utf-8", "replace")) > (
                MAX_USER_NAME):
            raise InvalidUserName(f"user name unusable in a request: {user[:64]!r}"
                                  f"{'...' if len(user) > 64 else ''}")
        now = time.monotonic()
        cached = self._cache.get((token, user))
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            narrowed = attenuate(token, authzid=user,
                                 expires=_rounded_up(datetime.now(UTC) + self._lifetime,
                                                     self._lifetime))
        except ValueError:
            return token  # not a macaroon: the server will judge it
        self.minted += 1
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[(token, user)] = (narrowed, now + self._renew_after.total_seconds())
        return narrowed
