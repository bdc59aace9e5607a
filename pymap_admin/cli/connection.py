"""The connection options shared by ``pymap-admin`` and ``pymap-deliver``.

One definition of the global options pymap users know (cli-surface: --config,
--host, --port, --path, --token-file and the TLS options), turned into the
``options`` mapping of :func:`pymap_admin.settings.load_settings`.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_connection_arguments", "connection_options"]

# argparse dest -> settings name
_SETTINGS = {
    "host": "host", "port": "port", "path": "path", "token_file": "token_file",
    "cert": "cert", "key": "key", "cafile": "cafile", "capath": "capath",
    "no_verify_cert": "no_verify_cert", "tls": "tls", "timeout": "timeout",
}


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def add_connection_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """Add the connection options to a parser or an argument group.

    Every default is None so that "not given" falls through to the
    environment and the config file.
    """
    parser.add_argument("--config", metavar="PATH",
                        help="config file (default: ~/.config/pymap/pymap-admin.conf)")
    parser.add_argument("--host", metavar="HOST", help="server host (TCP, with TLS)")
    parser.add_argument("--port", metavar="PORT", type=int, help="server port (default 50051)")
    parser.add_argument("--path", metavar="PATH",
                        help="server UNIX socket (default: found in ~/.config/pymap or "
                             "$TMPDIR/pymap); used as given when named")
    parser.add_argument("--token-file", metavar="PATH", help="file holding the admin token")
    parser.add_argument("--timeout", metavar="SECONDS", type=_positive_float,
                        help="deadline of each call (default: 60)")
    tls = parser
    tls.add_argument("--cert", metavar="FILE", help="client certificate")
    tls.add_argument("--key", metavar="FILE", help="client private key")
    tls.add_argument("--cafile", metavar="FILE", help="CA certificates to verify the server")
    tls.add_argument("--capath", metavar="PATH", help="folder of CA certificates")
    tls.add_argument("--no-verify-cert", action="store_true", default=None,
                     help="do not verify the server certificate (insecure)")
    tls.add_argument("--no-tls", dest="tls", action="store_false", default=None,
                     help="plain TCP (pymap's own admin port always speaks TLS)")


def connection_options(ns: argparse.Namespace) -> dict[str, object | None]:
    """The parsed connection options as :func:`load_settings` wants them."""
    return {name: getattr(ns, dest, None) for dest, name in _SETTINGS.items()}
