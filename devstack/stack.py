"""The local stack (``make run``): pymap with its in-memory backend, and
pymap-deliver in front of it.

Starts a pymap server (``dict --demo-data``, its own environment, a private
temporary folder), serves LMTP on loopback TCP and a UNIX socket, delivers a
sample message through LMTP, shows the reply and the message read back over
IMAP, then keeps serving until Ctrl-C (or SIGTERM) stops everything.

``--cluster N`` (``make run-cluster``: two) starts a pymap cluster instead:
a private redis-server and N pymap members on its ``redis`` backend in one
SWIM cluster, with pymap-deliver in front of all of them; the sample is read
back through a member other than the one that stored it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import smtplib
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING

from devstack.localpymap import DEMO_PASSWORD, DEMO_USER, PymapServer, free_port
from pymap_admin import AdminClient, ConnectionSettings
from pymap_admin.settings import EndpointAddress
from pymap_deliver.delivery import DeliveryOptions, PymapBackend
from pymap_deliver.main import configure_logging
from pymap_deliver.protocol import LMTPOptions
from pymap_deliver.server import (
    DeliveryServer,
    ServerConfig,
    TcpEndpoint,
    UnixEndpoint,
    install_signal_handlers,
)

if TYPE_CHECKING:
    from devstack.cluster import PymapCluster

log = logging.getLogger("devstack.stack")


def sample_message() -> bytes:
    message = EmailMessage()
    message["From"] = "Local Stack <stack@example.com>"
    message["To"] = f"<{DEMO_USER}>"
    message["Subject"] = "Hello from pymap-deliver"
    message["Date"] = formatdate(localtime=True)
    message["Message-Id"] = make_msgid(domain="stack.example.com")
    message.set_content("This message went MTA -> LMTP -> pymap-deliver -> Append -> pymap.\n")
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


@contextlib.asynccontextmanager
async def _delivering(settings: ConnectionSettings, port: int, once: bool,
                      unix: Sequence[UnixEndpoint] = ()) -> AsyncIterator[AdminClient]:
    """pymap-deliver in front of the pymap of ``settings``, on loopback TCP
    ``port`` (and ``unix``), with the sample delivered over LMTP and its reply
    shown; the block shows what came of it; then serves until stopped
    (``once``: stops at once)."""
    config = ServerConfig(tcp=(TcpEndpoint(host="127.0.0.1", port=port),), unix=tuple(unix),
                          lmtp=LMTPOptions(hostname=socket.gethostname() or "localhost"))
    async with AdminClient(settings) as client:
        backend = PymapBackend(client, DeliveryOptions(hostname=config.hostname))
        server = DeliveryServer(backend, config)
        await server.start()
        install_signal_handlers(asyncio.get_running_loop(), server)
        print(f"\ndelivering a sample message to {DEMO_USER} over LMTP ...", flush=True)
        reply = await asyncio.to_thread(_lmtp_reply, port, sample_message())
        print(f"LMTP reply: {reply}")
        yield client
        print("Press Ctrl-C to stop.", flush=True)
        if once:
            server.stop()
        await server.wait_closed()


def _show_newest(stored: Sequence[bytes]) -> None:
    print(stored[-1].decode("utf-8", "replace").replace("\r\n", "\n"))


async def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="pymap-stack-"))
    pymap = PymapServer(workdir=workdir)
    print(f"starting pymap (dict --demo-data) in {workdir} ...", flush=True)
    await asyncio.to_thread(pymap.start)
    try:
        settings = ConnectionSettings(path=pymap.socket_path, token_file=pymap.token_path)
        lmtp_socket = workdir / "lmtp.sock"
        port = args.port or free_port()
        async with _delivering(settings, port, args.once,
                               unix=[UnixEndpoint(path=str(lmtp_socket), mode=0o666)]):
            stored = await asyncio.to_thread(pymap.fetch_all)
            print(f"\nread back over IMAP (INBOX of {DEMO_USER}, newest message):\n")
            _show_newest(stored)
            print("pymap-deliver is serving. Point your MTA at it:")
            print(f"  postfix:  mailbox_transport = lmtp:inet:127.0.0.1:{port}")
            print(f"            (or lmtp:unix:{lmtp_socket})")
            print(f"  IMAP:     127.0.0.1:{pymap.imap_port}  user {DEMO_USER} / {DEMO_PASSWORD}")
            print(f"  admin:    pymap-admin --path {pymap.socket_path} "
                  f"--token-file {pymap.token_path} ping")
    finally:
        print("stopping pymap ...", flush=True)
        await asyncio.to_thread(pymap.stop)
        shutil.rmtree(workdir, ignore_errors=True)
    print("stopped.")
    return 0


async def run_cluster(args: argparse.Namespace) -> int:
    from devstack.cluster import PymapCluster, redis_executable

    if redis_executable() is None:
        print("redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="pymap-cluster-"))
    cluster = PymapCluster(workdir=workdir, size=args.cluster)
    print(f"starting redis-server and {args.cluster} pymap members (redis backend, "
          f"one SWIM cluster) in {workdir} ...", flush=True)
    await asyncio.to_thread(cluster.start)
    try:
        await _create_demo_user(cluster)
        # Every member's socket and no token: pymap-deliver calls each member
        # with the admin token pymap wrote beside its socket, and mints
        # per-user login tokens (in Redis: valid on every member).
        settings = ConnectionSettings(
            endpoints=tuple(EndpointAddress(path=path) for path in cluster.socket_paths()))
        port = args.port or free_port()
        async with _delivering(settings, port, args.once) as client:
            # The member that took the Append (the only one that made
            # one), and another one to read from.
            stored_by = max(range(cluster.size),
                            key=lambda i: client.pool.endpoints[i].operations["Append"])
            reader = (stored_by + 1) % cluster.size
            stored = await asyncio.to_thread(cluster.members[reader].fetch_all)
            print(f"\nstored through member {stored_by}; read back over IMAP through "
                  f"member {reader} (INBOX of {DEMO_USER}, newest message):\n")
            _show_newest(stored)
            print("pymap-deliver is serving, in front of every member. Point your MTA at it:")
            print(f"  postfix:  mailbox_transport = lmtp:inet:127.0.0.1:{port}")
            for index, member in enumerate(cluster.members):
                print(f"  member {index}: IMAP 127.0.0.1:{member.imap_port}, "
                      f"admin socket {member.socket_path}")
            print(f"  IMAP user {DEMO_USER} / {DEMO_PASSWORD} on any member")
            print(f"  redis:    {cluster.redis.url}")
            paths = " ".join(f"--path {path}" for path in cluster.socket_paths())
            print(f"  admin:    pymap-admin {paths} get-user {DEMO_USER}")
    finally:
        print("stopping the cluster ...", flush=True)
        await asyncio.to_thread(cluster.cleanup)
    print("stopped.")
    return 0


async def _create_demo_user(cluster: PymapCluster) -> None:
    """The demo user, created through member 0 with its own admin token
    (which the other members trust only once SWIM has converged); Redis
    makes it a user of every member at once."""
    first = cluster.members[0]
    settings = ConnectionSettings(path=first.socket_path, token_file=first.token_path)
    async with AdminClient(settings, login_tokens=False) as admin:
        await admin.set_user(DEMO_USER, password=DEMO_PASSWORD)


def _lmtp_reply(port: int, data: bytes) -> str:
    """The reply to the sample transaction, as text."""
    with smtplib.LMTP("127.0.0.1", port, local_hostname="stack.example.com") as lmtp:
        lmtp.ehlo_or_helo_if_needed()
        lmtp.mail("stack@example.com")
        lmtp.rcpt(DEMO_USER)
        code, text = lmtp.data(data)
        return f"{code} {text.decode()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.stack",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0,
                        help="LMTP TCP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--once", action="store_true",
                        help="stop after the sample delivery instead of serving")
    parser.add_argument("--cluster", metavar="N", type=int, default=0,
                        help="N pymap members on a private redis-server, in one SWIM "
                             "cluster, instead of one in-memory pymap")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.cluster < 0 or args.cluster == 1:
        parser.error("--cluster needs at least 2 members")
    configure_logging(getattr(logging, args.log_level.upper()), sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_cluster(args) if args.cluster else run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
