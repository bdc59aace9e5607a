"""The connection options of ``pymap-admin``: generated from the one table
(:data:`pymap_admin.options.CONNECTION_OPTIONS`)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ..options import CONNECTION_OPTIONS, add_arguments
from ..settings import CONFIG_KEYS

__all__ = ["add_connection_arguments", "connection_options"]

#: ``--timeout`` is accepted after the command name too (args._common).
_GLOBAL = tuple(o for o in CONNECTION_OPTIONS if o.name != "timeout")


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the connection options. Every default means "not given", so that
    the environment and the config file still apply."""
    add_arguments(parser, _GLOBAL)


def connection_options(parsed: Mapping[str, Any]) -> dict[str, object | None]:
    """The connection settings of a parsed command line (option name ->
    value) for :func:`load_settings`; None: not given."""
    options: dict[str, object | None] = {name: parsed.get(name) for name in CONFIG_KEYS}
    # A switch that was not given must not override the environment.
    options["no_verify_cert"] = True if options["no_verify_cert"] else None
    return options
