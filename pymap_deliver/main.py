"""The ``pymap-deliver`` command: an LMTP delivery agent in front of pymap."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from pymap_admin.cli.connection import add_connection_arguments, connection_options
from pymap_admin.errors import ConfigurationError

from .delivery import DeliveryOptions
from .recipients import RecipientRules
from .server import ServerConfig, TcpEndpoint, UnixEndpoint

__all__ = ["DeliverArgs", "main", "parse_args", "run"]

log = logging.getLogger("pymap_deliver")

# sysexits(3): a configuration error is EX_CONFIG.
EX_CONFIG = 78


@dataclass(frozen=True, slots=True)
class DeliverArgs:
    """The command line, typed."""

    server: ServerConfig
    delivery: DeliveryOptions
    connection: dict[str, object | None]
    config_file: str | None
    log_level: int


def _tcp_endpoint(text: str) -> TcpEndpoint:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}") from None
    if not 0 <= number < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {number}")
    return TcpEndpoint(host=host.strip("[]") or "127.0.0.1", port=number)


def _mode(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pymap-deliver",
        description="LMTP delivery agent (RFC 2033) storing mail into pymap "
                    "through its admin API.",
    )
    listen = parser.add_argument_group("listeners (at least one)")
    listen.add_argument("--listen", metavar="[HOST:]PORT", type=_tcp_endpoint, action="append",
                        default=[], help="TCP listener, repeatable (host defaults to 127.0.0.1; "
                        "LMTP has no authentication: listen on loopback)")
    listen.add_argument("--unix", metavar="PATH", action="append", default=[],
                        help="UNIX socket listener, repeatable (e.g. for postfix's lmtp:unix:)")
    listen.add_argument("--unix-mode", metavar="MODE", type=_mode, default=0o660,
                        help="permissions of the UNIX sockets (default: 0660)")
    listen.add_argument("--unix-owner", metavar="USER", help="owner of the UNIX sockets")
    listen.add_argument("--unix-group", metavar="GROUP", help="group of the UNIX sockets")
    listen.add_argument("--systemd", action="store_true",
                        help="also serve sockets passed by systemd (LISTEN_FDS)")

    lmtp = parser.add_argument_group("protocol")
    lmtp.add_argument("--hostname", help="name in the greeting and Received: (default: FQDN)")
    lmtp.add_argument("--max-size", metavar="BYTES", type=int, default=64 * 1024 * 1024,
                      help="largest message accepted, announced as SIZE (default: 64 MiB)")
    lmtp.add_argument("--max-connections", metavar="N", type=int, default=100,
                      help="sessions at once; more get 421 (default: 100)")
    lmtp.add_argument("--idle-timeout", metavar="SECONDS", type=float, default=300.0,
                      help="close a session idle this long (default: 300, like postfix)")
    lmtp.add_argument("--shutdown-timeout", metavar="SECONDS", type=float, default=600.0,
                      help="on SIGTERM, abort what is still open after this long "
                           "(default: 600, postfix's lmtp_data_done_timeout)")
    lmtp.add_argument("--max-recipients", metavar="N", type=int, default=1000,
                      help="recipients per transaction (default: 1000)")

    rcpt = parser.add_argument_group("recipients")
    rcpt.add_argument("--local-part-only", action="store_true",
                      help="the pymap user is the local part, not the whole address")
    rcpt.add_argument("--recipient-delimiter", metavar="CHARS", default="",
                      help="separators of an address detail, e.g. '+' (stripped for the user)")
    rcpt.add_argument("--detail-mailbox", action="store_true",
                      help="file user+Folder mail into Folder (INBOX if it does not exist)")
    rcpt.add_argument("--no-check-recipients", action="store_true",
                      help="accept every RCPT; unknown users are refused after DATA")
    rcpt.add_argument("--accept-when-unreachable", action="store_true",
                      help="accept RCPTs when pymap cannot be asked (default: defer with 451)")
    rcpt.add_argument("--max-in-flight", metavar="N", type=int, default=256,
                      help="admin calls in flight at once, all sessions together (default: 256)")

    rcpt.add_argument("--max-bytes-in-flight", metavar="BYTES", type=int,
                      default=64 * 1024 * 1024,
                      help="message bytes in Append calls at once, all sessions together; "
                           "more wait their turn (default: 64 MiB)")

    add_connection_arguments(parser)
    parser.add_argument("--timeout", metavar="SECONDS", type=float,
                        help="deadline of each call to pymap (default: 60; keep it well "
                             "below postfix's lmtp_data_done_timeout of 600 s)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging threshold (default: INFO)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> DeliverArgs:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not (ns.listen or ns.unix or ns.systemd):
        parser.error("nothing to listen on: give --listen, --unix or --systemd")
    try:
        rules = RecipientRules(local_part_only=ns.local_part_only,
                               delimiter=ns.recipient_delimiter,
                               detail_mailbox=ns.detail_mailbox)
        extra: dict[str, object] = {}
        if ns.hostname:
            extra["hostname"] = ns.hostname
        server = ServerConfig(
            tcp=tuple(ns.listen),
            unix=tuple(UnixEndpoint(path=path, mode=ns.unix_mode, owner=ns.unix_owner,
                                    group=ns.unix_group) for path in ns.unix),
            use_systemd_sockets=ns.systemd,
            data_size_limit=ns.max_size,
            max_connections=ns.max_connections,
            idle_timeout=ns.idle_timeout,
            max_recipients=ns.max_recipients,
            shutdown_timeout=ns.shutdown_timeout,
            **extra,  # type: ignore[arg-type]
        )
        delivery = DeliveryOptions(
            hostname=server.hostname, rules=rules,
            check_recipients=not ns.no_check_recipients,
            defer_unreachable_at_rcpt=not ns.accept_when_unreachable,
            max_in_flight=ns.max_in_flight,
            max_bytes_in_flight=ns.max_bytes_in_flight,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return DeliverArgs(server=server, delivery=delivery, connection=connection_options(ns),
                       config_file=ns.config, log_level=getattr(logging, ns.log_level))


def configure_logging(level: int, stream: TextIO) -> None:
    from pymap_admin.logs import configure_logging as configure_admin_logging

    configure_admin_logging(level, stream)
    # aiosmtpd narrates every connection at INFO; our own session and
    # delivery lines say what an operator needs.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, level))


async def run(args: DeliverArgs) -> int:
    """Serve until SIGTERM/SIGINT, then finish what is in flight."""
    from pymap_admin.client import AdminClient
    from pymap_admin.settings import load_settings

    from .delivery import PymapBackend
    from .server import DeliveryServer, install_signal_handlers

    settings = load_settings(args.connection, config_file=args.config_file)
    async with AdminClient(settings) as client:
        # A token problem should show at start-up, not at the first message.
        if not client.tokens.configured:
            raise ConfigurationError(
                "no admin token: set PYMAP_ADMIN_TOKEN or --token-file "
                "(pymap writes one to $TMPDIR/pymap/pymap-admin.token)")
        client.tokens.current()
        backend = PymapBackend(client, args.delivery)
        server = DeliveryServer(backend, args.server)
        await server.start()
        install_signal_handlers(asyncio.get_running_loop(), server)
        log.info("delivering to pymap at %s", settings.target)
        await server.wait_closed()
    return 0


def main(argv: Sequence[str] | None = None, *, stderr: TextIO | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["install-contrib"]:
        from .install import main as install_contrib

        return install_contrib((sys.argv[1:] if argv is None else argv)[1:])
    args = parse_args(argv)
    configure_logging(args.log_level, stderr or sys.stderr)
    try:
        return asyncio.run(run(args))
    except ConfigurationError as exc:
        print(f"pymap-deliver: {exc}", file=stderr or sys.stderr)
        return EX_CONFIG
    except OSError as exc:
        # Typically a listener that cannot be bound.
        print(f"pymap-deliver: {exc}", file=stderr or sys.stderr)
        return 71  # EX_OSERR


if __name__ == "__main__":
    sys.exit(main())
