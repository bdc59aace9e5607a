"""``get-user``, ``set-user``, ``change-password``, ``delete-user``: the User service."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from ..client import UserInfo
from ..outcomes import ExitStatus
from .args import CommandSpec, param
from .base import Command, ask_secret, read_secret_file, result_message

__all__ = ["SPECS", "ChangePasswordCommand", "ChangePasswordOptions", "DeleteUserCommand",
           "DeleteUserOptions", "GetUserCommand", "GetUserOptions", "SetUserCommand",
           "SetUserOptions"]


class GetUserOptions(NamedTuple):
    user: str
    show_password_hash: bool = False


class SetUserOptions(NamedTuple):
    user: str
    overwrite: bool = True
    password_file: Path | None = None
    no_password: bool = False
    params: tuple[tuple[str, str], ...] = ()
    roles: tuple[str, ...] = ()
    show_password_hash: bool = False


class ChangePasswordOptions(NamedTuple):
    user: str
    password_file: Path | None = None
    no_password: bool = False
    show_password_hash: bool = False


class DeleteUserOptions(NamedTuple):
    user: str


def _message(info: UserInfo, show_hash: bool) -> Any:
    """The UserResponse the server sent, as far as the client kept it."""
    from ..grpc.admin_pb2 import UserData, UserResponse

    # The stored hash is a secret worth guessing at: shown only when asked.
    password = info.password if show_hash else None
    data = UserData(password=password, roles=info.roles, params=info.params)
    return UserResponse(**result_message(info.response), user=info.user,
                        entity_tag=info.entity_tag,
                        data=data if data.ByteSize() else None)


def _data(info: UserInfo, show_hash: bool) -> dict[str, Any]:
    return {"user": info.user, "entity_tag": info.entity_tag, "response": info.response,
            "data": {"password": info.password if show_hash else None,
                     "roles": list(info.roles), "params": dict(info.params)}}


def _new_password(command: Command[Any], options: SetUserOptions | ChangePasswordOptions
                  ) -> str | None:
    """From --password-file, none with --no-password, else asked on the
    terminal without echo."""
    if options.no_password:
        return None
    if options.password_file is not None:
        return read_secret_file(options.password_file)
    return ask_secret(command, f"New password for {options.user}: ")


def _show(command: Command[Any], info: UserInfo) -> int:
    show_hash = bool(getattr(command.options, "show_password_hash", False))
    command.emit(_message(info, show_hash), _data(info, show_hash))
    return ExitStatus.OK


class GetUserCommand(Command[GetUserOptions]):
    """Print a user and its metadata."""

    async def execute(self) -> int:
        async with self.client() as client:
            return _show(self, await client.get_user(self.options.user))


class SetUserCommand(Command[SetUserOptions]):
    """Set the metadata for a user, creating it if it does not exist."""

    async def execute(self) -> int:
        options = self.options
        password = _new_password(self, options)
        async with self.client() as client:
            info = await client.set_user(options.user, password=password, roles=options.roles,
                                         params=dict(options.params),
                                         overwrite=options.overwrite)
        return _show(self, info)


class ChangePasswordCommand(Command[ChangePasswordOptions]):
    """Change only the password; a concurrent change of the user is detected."""

    async def execute(self) -> int:
        password = _new_password(self, self.options)
        async with self.client() as client:
            info = await client.change_password(self.options.user, password)
        return _show(self, info)


class DeleteUserCommand(Command[DeleteUserOptions]):
    """Delete a user and its mail data."""

    async def execute(self) -> int:
        async with self.client() as client:
            await client.delete_user(self.options.user)
        from ..grpc.admin_pb2 import UserResponse

        self.emit(UserResponse(user=self.options.user),
                  {"user": self.options.user, "deleted": True})
        return ExitStatus.OK


def _user(parser: Any) -> None:
    parser.add_argument("user", help="the user name")


def _show_hash(parser: Any) -> None:
    parser.add_argument("--show-password-hash", action="store_true",
                        help="print the stored password hash too (hidden by default)")


def _new_password_arguments(parser: Any) -> None:
    parser.add_argument("--password-file", metavar="FILE", type=Path,
                        help="read the password from a file (first line)")
    parser.add_argument("--no-password", action="store_true",
                        help="send the request with no password value")


def _get_user_arguments(parser: Any, common: Any) -> None:
    _show_hash(parser)
    _user(parser)


def _set_user_arguments(parser: Any, common: Any) -> None:
    parser.add_argument("--no-overwrite", action="store_false", dest="overwrite",
                        help="do not overwrite existing users")
    _new_password_arguments(parser)
    parser.add_argument("--param", action="append", dest="params", default=[],
                        metavar="KEY=VAL", type=param,
                        help="additional parameters for the request")
    parser.add_argument("--role", action="append", dest="roles", default=[], metavar="ROLE",
                        help="assigned roles for the user")
    _show_hash(parser)
    _user(parser)


def _change_password_arguments(parser: Any, common: Any) -> None:
    _new_password_arguments(parser)
    _show_hash(parser)
    _user(parser)


def _one_password_source(ns: Any, error: Any) -> None:
    if ns.password_file is not None and ns.no_password:
        error("--password-file and --no-password exclude each other")


def _set_user_options(ns: Any, error: Any) -> tuple[str, SetUserOptions, type[SetUserCommand]]:
    _one_password_source(ns, error)
    return "set-user", SetUserOptions(
        user=ns.user, overwrite=ns.overwrite, password_file=ns.password_file,
        no_password=ns.no_password, params=tuple(ns.params), roles=tuple(ns.roles),
        show_password_hash=ns.show_password_hash), SetUserCommand


def _change_password_options(ns: Any, error: Any
                             ) -> tuple[str, ChangePasswordOptions, type[ChangePasswordCommand]]:
    _one_password_source(ns, error)
    return "change-password", ChangePasswordOptions(
        user=ns.user, password_file=ns.password_file, no_password=ns.no_password,
        show_password_hash=ns.show_password_hash), ChangePasswordCommand


SPECS = {
    "get-user": CommandSpec(
        "get a user", "Print a user and its metadata (the password hash only with "
        "--show-password-hash).", _get_user_arguments,
        lambda ns, error: ("get-user", GetUserOptions(
            user=ns.user, show_password_hash=ns.show_password_hash), GetUserCommand)),
    "set-user": CommandSpec(
        "add or overwrite a user",
        "Set the metadata for a user, creating it if it does not exist. The password is "
        "asked on the terminal unless --password-file or --no-password is given.",
        _set_user_arguments, _set_user_options),
    "change-password": CommandSpec(
        "assign a new password to a user",
        "Change a password for an existing user, without modifying any other metadata; a "
        "concurrent change of the user is detected, not overwritten.",
        _change_password_arguments, _change_password_options),
    "delete-user": CommandSpec(
        "delete a user", "Delete a user and its mail data.",
        lambda parser, common: _user(parser),
        lambda ns, error: ("delete-user", DeleteUserOptions(user=ns.user), DeleteUserCommand)),
}
