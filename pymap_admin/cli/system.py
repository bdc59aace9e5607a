"""``login``, ``ping`` and ``check``: the System and health services."""

from __future__ import annotations

from datetime import UTC, datetime

from ..errors import UnexpectedStatus
from .args import CheckOptions, LoginOptions, PingOptions
from .base import Command, Symbol, read_secret_file, result_fields, text_format, write_private

__all__ = ["CheckCommand", "LoginCommand", "PingCommand"]


class PingCommand(Command[PingOptions]):
    """Ping the server: its pymap and admin protocol versions."""

    async def execute(self) -> int:
        async with self.client() as client:
            ping = await client.ping()
        self.emit([*result_fields(ping.response), ("pymap_version", ping.pymap_version),
                   ("pymap_admin_version", ping.pymap_admin_version)],
                  {"pymap_version": ping.pymap_version,
                   "pymap_admin_version": ping.pymap_admin_version,
                   "response": ping.response})
        return 0


class CheckCommand(Command[CheckOptions]):
    """The standard gRPC health check: exit 0 when SERVING, 1 otherwise."""

    async def execute(self) -> int:
        async with self.client() as client:
            try:
                serving = await client.check(self.options.service)
            except UnexpectedStatus as exc:
                if exc.status is None or exc.status.name != "NOT_FOUND":
                    raise
                self.fail(ValueError(f"unknown service: {self.options.service!r}"))
                return 1
        status = Symbol("SERVING" if serving else "NOT_SERVING")
        if self.globals.json:
            self.emit([], {"service": self.options.service, "status": status,
                           "serving": serving})
        elif serving:
            self.print(text_format([("status", status)]) + "\n")
        else:
            self.streams.stderr.write(text_format([("status", status)]) + "\n")
        return 0 if serving else 1


class LoginCommand(Command[LoginOptions]):
    """Log in as a user and print a bearer token; ``-s`` saves it."""

    def _password(self) -> str | None:
        options = self.options
        if options.token:
            return None
        if options.password_file is not None:
            return read_secret_file(options.password_file)
        if options.ask_password:
            import getpass

            return getpass.getpass(f"{options.user} Password: ", stream=self.streams.stderr)
        return options.password

    async def execute(self) -> int:
        options = self.options
        password = self._password()
        expiration = (datetime.fromtimestamp(options.expiration, UTC)
                      if options.expiration is not None else None)
        async with self.client() as client:
            login = await client.login(options.user, password=password,
                                       authzid=options.authzid, expiration=expiration)
        saved = None
        if options.save:
            from ..settings import TOKEN_NAME, config_home

            saved = config_home() / TOKEN_NAME
            write_private(saved, login.bearer_token + "\n")
        self.emit([*result_fields(login.response), ("bearer_token", login.bearer_token)],
                  {"bearer_token": login.bearer_token, "response": login.response,
                   "token_file": str(saved) if saved else None})
        if saved is not None:
            print(f"Token file written: {saved}", file=self.streams.stderr)
        return 0
