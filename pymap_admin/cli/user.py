"""``get-user``, ``set-user``, ``change-password``, ``delete-user``: the User service."""

from __future__ import annotations

from typing import Any

from ..client import UserInfo
from .args import ChangePasswordOptions, DeleteUserOptions, GetUserOptions, SetUserOptions
from .base import Command, Field, read_secret_file, result_fields

__all__ = ["ChangePasswordCommand", "DeleteUserCommand", "GetUserCommand", "SetUserCommand"]


def _fields(info: UserInfo) -> list[Field]:
    fields: list[Field] = [*result_fields(info.response), ("user", info.user),
                           ("entity_tag", info.entity_tag)]
    data: list[Field] = [("password", info.password)]
    data += [("roles", role) for role in info.roles]
    data += [("params", [("key", key), ("value", value)])
             for key, value in sorted(info.params.items())]
    if info.password is not None or info.roles or info.params:
        fields.append(("data", data))
    return fields


def _data(info: UserInfo) -> dict[str, Any]:
    return {"user": info.user, "entity_tag": info.entity_tag, "response": info.response,
            "data": {"password": info.password, "roles": list(info.roles),
                     "params": dict(info.params)}}


def _new_password(command: Command[Any], options: SetUserOptions | ChangePasswordOptions
                  ) -> str | None:
    """From --password-file, none with --no-password, else asked on the
    terminal without echo."""
    if options.no_password:
        return None
    if options.password_file is not None:
        return read_secret_file(options.password_file)
    import getpass

    return getpass.getpass(f"New password for {options.user}: ",
                           stream=command.streams.stderr)


def _show(command: Command[Any], info: UserInfo) -> int:
    command.emit(_fields(info), _data(info))
    return 0


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
        self.emit([("user", self.options.user)], {"user": self.options.user, "deleted": True})
        return 0
