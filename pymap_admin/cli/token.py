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
from typing import Any

from ..errors import ConfigurationError
from ..tokens import TokenSource, attenuate, inspect_token
from .args import TokenAttenuateOptions, TokenShowOptions
from .base import Command, Field, write_private

__all__ = ["TokenAttenuateCommand", "TokenShowCommand"]


def _token(command: Command[Any], from_stdin: bool) -> str:
    if from_stdin:
        token = command.streams.stdin.read()
        token = token.decode("ascii", "replace") if isinstance(token, bytes) else token
        if not token.strip():
            raise ConfigurationError("no token on stdin")
        return str(token).strip()
    settings = command.settings()
    return TokenSource(token=settings.token, path=settings.token_path()).current()


class TokenShowCommand(Command[TokenShowOptions]):
    """Show a token's kind, user, caveats and expiry; never its signature."""

    def run(self) -> int:
        try:
            return self._show()
        except (ValueError, OSError, ConfigurationError) as exc:
            return self.fail(exc)

    def _show(self) -> int:
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
        return 0


class TokenAttenuateCommand(Command[TokenAttenuateOptions]):
    """A narrower token: for one user, until a time."""

    def run(self) -> int:
        try:
            return self._attenuate()
        except (ValueError, OSError, ConfigurationError) as exc:
            return self.fail(exc)

    def _attenuate(self) -> int:
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
        return 0
