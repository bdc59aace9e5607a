"""``save-args``: the connection options of this command line, saved to the
config file that later commands read (``~/.config/pymap/pymap-admin.conf``)."""

from __future__ import annotations

from configparser import ConfigParser
from io import StringIO
from typing import Any, NamedTuple

from ..outcomes import ExitStatus
from ..settings import CONFIG_KEYS, CONFIG_NAME, CONFIG_SECTION, config_home
from .args import CommandSpec
from .base import OfflineCommand, write_private

__all__ = ["SPECS", "SaveArgsCommand", "SaveArgsOptions"]


class SaveArgsOptions(NamedTuple):
    pass


class SaveArgsCommand(OfflineCommand[SaveArgsOptions]):
    """Save the connection options given on the command line to the config file."""

    def act(self) -> int:
        parser = ConfigParser(interpolation=None)
        parser.add_section(CONFIG_SECTION)
        section = parser[CONFIG_SECTION]
        given = self.globals.connection()
        for key in CONFIG_KEYS:
            value = given.get(key)
            if value is None:
                continue
            if key in ("path", "token_file", "cert", "key", "cafile", "capath"):
                # Relative to where save-args ran: made absolute, or they would
                # mean something else from another directory.
                value = str(value) if str(value).startswith("~") else value.absolute()  # type: ignore[attr-defined]
            section[key] = str(value)
        text = StringIO()
        parser.write(text)
        path = config_home() / CONFIG_NAME
        write_private(path, text.getvalue())
        self.emit([], {"config_file": str(path), "settings": dict(section)})
        if not self.globals.json:
            print("Config file written:", path, file=self.streams.stdout)
        return ExitStatus.OK


def _options(ns: Any, error: Any) -> tuple[str, SaveArgsOptions, type[SaveArgsCommand]]:
    return "save-args", SaveArgsOptions(), SaveArgsCommand


SPECS = {"save-args": CommandSpec(
    "save connection arguments to config file",
    "Save the connection options given before the command (--host, --port, --path, ...) "
    "to ~/.config/pymap/pymap-admin.conf (mode 0600).",
    lambda parser, common: None, _options)}
