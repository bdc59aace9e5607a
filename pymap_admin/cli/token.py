"""``token show`` and ``token attenuate``: what a token allows, and a
narrower one, without the server (macaroon caveats need no key to add).

The token is the one other commands would use (``$PYMAP_ADMIN_TOKEN``,
``--token-file``, the saved or the server's token file) or, with
``--stdin``, read from stdin: never from the command line, where other
users could read it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ConfigurationError
from ..outcomes import ExitStatus
from ..tokens import TokenSource, attenuate, inspect_token
from .args import CommandSpec, duration, timestamp
from .base import Command, Field, OfflineCommand, write_private

__all__ = ["SPECS", "TokenAttenuateCommand", "TokenAttenuateOptions", "TokenShowCommand",
           "TokenShowOptions"]


class TokenShowOptions(NamedTuple):
    stdin: bool = False


class TokenAttenuateOptions(NamedTuple):
    user: str | None = None
    expires: float | None = None
    lifetime: float | None = None
    stdin: bool = False
    output: Path | None = None


def _token(command: Command[Any], from_stdin: bool) -> str:
    if from_stdin:
        token = command.streams.stdin.read()
        token = token.decode("ascii", "replace") if isinstance(token, bytes) else token
        if not token.strip():
            raise ConfigurationError("no token on stdin")
        return str(token).strip()
    settings = command.settings()
    return TokenSource(token=settings.token, path=settings.token_path()).current()


class TokenShowCommand(OfflineCommand[TokenShowOptions]):
    """Show a token's kind, user, caveats and expiry; never its signature."""

    def act(self) -> int:
        info = inspect_token(_token(self, self.options.stdin))
        expires = info.expires.isoformat() if info.expires else None
        fields: list[Field] = [("kind", info.kind), ("location", info.location),
                               ("identifier", info.identifier), ("authcid", info.authcid),
                               ("authzid", info.authzid), ("expires", expires),
                               ("expired", info.expired())]
        fields += [("caveat", caveat) for caveat in info.caveats]
        self.emit(fields, {"kind": info.kind, "location": info.location,
                           "identifier": info.identifier, "authcid": info.authcid,
                           "authzid": info.authzid, "expires": expires,
                           "expired": info.expired(), "caveats": list(info.caveats)})
        return ExitStatus.OK


class TokenAttenuateCommand(OfflineCommand[TokenAttenuateOptions]):
    """A narrower token: for one user, until a time."""

    def act(self) -> int:
        options = self.options
        expires = None
        if options.expires is not None:
            expires = datetime.fromtimestamp(options.expires, UTC)
        elif options.lifetime is not None:
            expires = datetime.fromtimestamp(time.time() + options.lifetime, UTC)
        narrowed = attenuate(_token(self, options.stdin), authzid=options.user, expires=expires)
        shown = expires.isoformat() if expires else None
        if options.output is not None:
            write_private(options.output, narrowed + "\n")
            self.emit([("token_file", str(options.output)), ("authzid", options.user),
                       ("expires", shown)],
                      {"token_file": str(options.output), "authzid": options.user,
                       "expires": shown})
        else:
            self.emit([("bearer_token", narrowed)],
                      {"bearer_token": narrowed, "authzid": options.user, "expires": shown})
        return ExitStatus.OK


def _arguments(token: Any, common: Any) -> None:
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION",
                                     parser_class=type(token))
    token_sub.required = True
    show = token_sub.add_parser(
        "show", parents=common, help="show what a token allows",
        description="Show a token's kind, user, caveats and expiry (never its signature). "
                    "The token is the one other commands would use, or read from stdin.")
    show.add_argument("--stdin", action="store_true", help="read the token from stdin")
    narrow = token_sub.add_parser(
        "attenuate", parents=common, help="make a narrower token",
        description="Print a narrower token: only for one user and/or only until a time. "
                    "The token is the one other commands would use, or read from stdin.")
    narrow.add_argument("--user", metavar="USER",
                        help="the token only acts as this user (authzid caveat)")
    until = narrow.add_mutually_exclusive_group()
    until.add_argument("--expires", metavar="TIMESTAMP", type=timestamp,
                       help="the token expires at this time (UNIX time or ISO-8601)")
    until.add_argument("--lifetime", metavar="DURATION", type=duration,
                       help="the token expires after this long (3600, 30m, 12h, 1d, ...)")
    narrow.add_argument("--stdin", action="store_true", help="read the token from stdin")
    narrow.add_argument("-o", "--output", metavar="FILE", type=Path,
                        help="write the token to FILE (mode 0600) instead of stdout")


def _options(ns: Any, error: Any) -> tuple[str, Any, Any]:
    if ns.token_command == "show":
        return "token show", TokenShowOptions(stdin=ns.stdin), TokenShowCommand
    if ns.user is None and ns.expires is None and ns.lifetime is None:
        error("token attenuate: give --user, --expires or --lifetime")
    return "token attenuate", TokenAttenuateOptions(
        user=ns.user, expires=ns.expires, lifetime=ns.lifetime, stdin=ns.stdin,
        output=ns.output), TokenAttenuateCommand


SPECS = {"token": CommandSpec(
    "inspect or narrow a token",
    "Inspect or narrow an admin or login token, without the server.", _arguments, _options)}
