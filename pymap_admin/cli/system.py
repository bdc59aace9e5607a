"""``login``, ``ping`` and ``check``: the System and health services."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import UnexpectedStatus
from ..outcomes import ExitStatus
from .args import CommandSpec, timestamp
from .base import (
    Command,
    Symbol,
    ask_secret,
    read_secret_file,
    result_message,
    write_private,
)

__all__ = ["SPECS", "CheckCommand", "CheckOptions", "LoginCommand", "LoginOptions",
           "PingCommand", "PingOptions"]


class LoginOptions(NamedTuple):
    user: str
    token: bool = False
    password: str | None = None
    password_file: Path | None = None
    ask_password: bool = False
    save: bool = False
    authzid: str | None = None
    expiration: float | None = None


class PingOptions(NamedTuple):
    pass


class CheckOptions(NamedTuple):
    service: str = ""


class PingCommand(Command[PingOptions]):
    """Ping the server: its pymap and admin protocol versions."""

    async def execute(self) -> int:
        async with self.client() as client:
            ping = await client.ping()
        from ..grpc.admin_pb2 import PingResponse

        self.emit(PingResponse(**result_message(ping.response),
                               pymap_version=ping.pymap_version,
                               pymap_admin_version=ping.pymap_admin_version),
                  {"pymap_version": ping.pymap_version,
                   "pymap_admin_version": ping.pymap_admin_version,
                   "response": ping.response})
        return ExitStatus.OK


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
                return ExitStatus.FAILURE
        status = Symbol("SERVING" if serving else "NOT_SERVING")
        if self.globals.json:
            self.emit([], {"service": self.options.service, "status": status,
                           "serving": serving})
        else:
            from google.protobuf import text_format as protobuf_text
            from grpclib.health.v1.health_pb2 import HealthCheckResponse

            answer = protobuf_text.MessageToString(HealthCheckResponse(
                status=HealthCheckResponse.SERVING if serving
                else HealthCheckResponse.NOT_SERVING))
            (self.streams.stdout if serving else self.streams.stderr).write(answer)
        return ExitStatus.OK if serving else ExitStatus.FAILURE


class LoginCommand(Command[LoginOptions]):
    """Log in as a user and print a bearer token; ``-s`` saves it."""

    def _password(self) -> str | None:
        options = self.options
        if options.token:
            return None
        if options.password_file is not None:
            return read_secret_file(options.password_file)
        if options.ask_password:
            return ask_secret(self, f"{options.user} Password: ")
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
        from ..grpc.admin_pb2 import LoginResponse

        self.emit(LoginResponse(**result_message(login.response),
                                bearer_token=login.bearer_token),
                  {"bearer_token": login.bearer_token, "response": login.response,
                   "token_file": str(saved) if saved else None})
        if saved is not None:
            print(f"Token file written: {saved}", file=self.streams.stderr)
        return ExitStatus.OK


def _login_arguments(login: argparse.ArgumentParser, common: Any) -> None:
    login.add_argument("-s", "--save", action="store_true", help="save the login token")
    login.add_argument("-z", "--authzid", metavar="NAME", help="authorization identity name")
    login.add_argument("--expiration", metavar="TIMESTAMP", type=timestamp,
                       help="token expiration (UNIX time or ISO-8601)")
    secret = login.add_mutually_exclusive_group(required=True)
    secret.add_argument("-t", "--token", action="store_true",
                        help="use token authentication to login")
    secret.add_argument("--password", metavar="VAL", help="login password")
    secret.add_argument("--password-file", metavar="PATH", type=Path,
                        help="file containing login password (first line)")
    secret.add_argument("-i", "--ask-password", action="store_true",
                        help="read login password from terminal")
    login.add_argument("user", help="login username")


def _check_arguments(check: argparse.ArgumentParser, common: Any) -> None:
    check.add_argument("service", nargs="?", default="",
                       help="the service name, if any (e.g. pymap.backend)")


SPECS = {
    "login": CommandSpec(
        "login as a user",
        "Log in as a user and print a bearer token; -s saves it (mode 0600) for later "
        "commands.", _login_arguments,
        lambda ns, error: ("login", LoginOptions(
            user=ns.user, token=ns.token, password=ns.password,
            password_file=ns.password_file, ask_password=ns.ask_password, save=ns.save,
            authzid=ns.authzid, expiration=ns.expiration), LoginCommand)),
    "ping": CommandSpec(
        "ping the server", "Ping the server: print its pymap version.",
        lambda parser, common: None,
        lambda ns, error: ("ping", PingOptions(), PingCommand)),
    "check": CommandSpec(
        "check the server health",
        "Check the health of the server; exit 0 when SERVING, 1 otherwise.",
        _check_arguments,
        lambda ns, error: ("check", CheckOptions(service=ns.service), CheckCommand)),
}
