"""The connection options shared by ``pymap-admin`` and ``pymap-deliver``.

One definition of the options pymap users know (cli-surface: --config,
--host, --port, --path, --token-file and the TLS options), and one mapping
from what was parsed to the ``options`` of
:func:`pymap_admin.settings.load_settings`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..settings import CONFIG_KEYS

__all__ = ["add_connection_arguments", "connection_options"]


def port_number(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return port


class _Repeatable(argparse.Action):
    """A repeatable option kept as one comma-separated value, the form the
    environment and the config file use for several endpoints; given once,
    the value is exactly what it was before the option became repeatable."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        if current is not None:
            values = type(values)(f"{current},{values}")
        setattr(namespace, self.dest, values)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the connection options. Every default means "not given", so that
    the environment and the config file still apply."""
    parser.add_argument("--config", metavar="PATH", type=Path,
                        help="connection config file (default: ~/.config/pymap/pymap-admin.conf)")
    parser.add_argument("--host", metavar="HOST[:PORT]", action=_Repeatable,
                        help="server host (TCP, always TLS); repeat it for the members "
                             "of a pymap cluster")
    parser.add_argument("--port", metavar="PORT", type=port_number,
                        help="server port (default: 50051)")
    parser.add_argument("--path", metavar="PATH", type=Path, action=_Repeatable,
                        help="server socket file (used as given: no fallback); repeat it "
                             "for the members of a pymap cluster")
    parser.add_argument("--token-file", metavar="PATH", type=Path, help="auth token file")
    tls = parser.add_argument_group("tls options")
    tls.add_argument("--cert", metavar="FILE", type=Path, help="client certificate")
    tls.add_argument("--key", metavar="FILE", type=Path, help="client private key")
    tls.add_argument("--cafile", metavar="FILE", type=Path, help="CA cert file")
    tls.add_argument("--capath", metavar="PATH", type=Path, help="CA cert path")
    tls.add_argument("--no-verify-cert", action="store_true",
                     help="disable TLS certificate verification")
    tls.add_argument("--no-tls", dest="tls", action="store_false", default=None,
                     help="plain TCP, for a service behind a TLS proxy "
                          "(pymap's own admin port always speaks TLS)")


def connection_options(parsed: Any) -> dict[str, object | None]:
    """The connection settings of a parsed command line (a Namespace or typed
    options with the same names) for :func:`load_settings`; None: not given."""
    options: dict[str, object | None] = {
        name: getattr(parsed, name, None) for name in CONFIG_KEYS}
    # A switch that was not given must not override the environment.
    options["no_verify_cert"] = True if options["no_verify_cert"] else None
    return options
