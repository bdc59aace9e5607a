"""``save-args``: the connection options of this command line, saved to the
config file that later commands read (``~/.config/pymap/pymap-admin.conf``)."""

from __future__ import annotations

from configparser import ConfigParser
from io import StringIO
from pathlib import Path
from typing import Any, NamedTuple

from ..options import CONNECTION_OPTIONS
from ..options import path as path_value
from ..outcomes import ExitStatus
from ..settings import CONFIG_KEYS, CONFIG_NAME, CONFIG_SECTION, config_home
from .args import CommandSpec
from .base import OfflineCommand, write_private

__all__ = ["SPECS", "SaveArgsCommand", "SaveArgsOptions"]

#: The options that name files, and whether each is a comma-joined list.
_PATHS = {option.name: option.joined for option in CONNECTION_OPTIONS
          if option.parse is path_value}


def _absolute(value: str, joined: bool) -> str:
    """Relative to where save-args ran: made absolute, or they would mean
    something else from another directory (``~`` was expanded when parsed)."""
    items = value.split(",") if joined else [value]
    return ",".join(str(Path(item).absolute()) for item in items)


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
            section[key] = (_absolute(str(value), _PATHS[key]) if key in _PATHS
                            else str(value))
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
