"""The servers and load generators the LMTP benchmarks run in processes of
their own, each started by :class:`benchmarks.harness.Child`:

* ``_bare``: aiosmtpd's LMTP with a handler that only answers (the anchor);
* ``_fake``: the zero-work admin server, the tests' :class:`FakeAdmin`
  answering at once, keeping counters only;
* ``_append``: raw concurrent ``Append`` calls (the anchor of real pymap;
  :func:`run_appends` is also the cluster benchmark's anchor).

Each prints ``READY`` and answers ``stats`` lines on stdin with one JSON
line; it exits when stdin closes.

    python -m benchmarks.servers _fake --path /tmp/fake.sock
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .harness import HOSTNAME, SENDER, cpu_seconds, make_message

if TYPE_CHECKING:
    from pymap_admin import AdminClient


async def _control(stats: Callable[[], dict[str, Any]], ready: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(ready, flush=True)
    while line := await reader.readline():
        if line.strip() == b"stats":
            print(json.dumps(stats()), flush=True)


async def _serve_bare(port: int) -> None:
    """aiosmtpd's LMTP with a handler that does nothing but answer."""
    from aiosmtpd.lmtp import LMTP

    class Handler:
        messages = 0
        deliveries = 0

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            count = len(envelope.rcpt_tos)
            Handler.messages += 1
            Handler.deliveries += count
            # aiosmtpd sends the DATA reply as given: one line per recipient.
            return "\r\n".join(["250 2.0.0 OK"] * count)

    loop = asyncio.get_running_loop()
    handler = Handler()
    server = await loop.create_server(
        lambda: LMTP(handler, hostname=HOSTNAME, loop=loop), "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    await _control(lambda: {"messages": Handler.messages, "deliveries": Handler.deliveries,
                            "cpu": cpu_seconds()}, f"READY {bound}")
    server.close()


async def _serve_fake(path: str) -> None:
    """The tests' fake admin server, recording nothing but counters."""
    from pymap_admin.grpc import admin_pb2 as pb
    from tests.fake_admin import FakeAdmin, RunningFake, success

    counts = {"Append": 0, "last": 0}

    async def append(request: pb.AppendRequest) -> pb.AppendResponse:
        counts["Append"] += 1
        counts["last"] = len(request.data)
        return pb.AppendResponse(result=success("Append OK completed."), mailbox="INBOX",
                                 validity=1, uid=counts["Append"])

    # GetUser: the fake's own answer, the user exists.
    fake = FakeAdmin(script={"Append": append}, record=False)
    async with RunningFake(fake, Path(path)):
        await _control(lambda: {**counts, "cpu": cpu_seconds()}, "READY")


async def run_appends(client: AdminClient, users: Sequence[str], data: bytes,
                      concurrency: int, count: int) -> tuple[float, int, dict[str, int]]:
    """``count`` Appends of ``data``, ``concurrency`` in flight, users
    round-robin: the elapsed seconds, the calls that succeeded, and the
    failures by exception name."""
    started = ok = 0
    failed: dict[str, int] = {}

    async def worker(index: int) -> None:
        nonlocal started, ok
        user = users[index % len(users)]
        while started < count:
            started += 1
            try:
                await client.append(user, data, sender=SENDER, recipient=user)
            except Exception as exc:
                failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1
            else:
                ok += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return time.perf_counter() - t0, ok, failed


async def _append_load(path: str, token_file: str, users: Sequence[str], concurrency: int,
                       count: int, size: int, cache: str | None) -> None:
    """``count`` Appends (:func:`run_appends`); one JSON line with the
    elapsed time, the outcomes, this process's CPU and the calls made with a
    login token and with the admin token. With ``cache`` (a token cache
    folder of its own), first one Append per user, untimed, so that every
    measured call finds its login token minted."""
    from pymap_admin import AdminClient, ConnectionSettings

    data = make_message(size, to=users[0], subject="raw append")
    settings = ConnectionSettings(path=Path(path), token_file=Path(token_file),
                                  token_cache=cache)
    async with AdminClient(settings) as client:
        stats = client.fast_path
        warm = 0
        if cache is not None:
            assert stats is not None
            for user in users:
                await client.append(user, data, sender=SENDER, recipient=user)
                warm += 1
            deadline = time.monotonic() + 30
            while (stats.mints + stats.cache_hits < len(users)
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.01)
        before = (stats.fast_calls, stats.admin_calls) if stats else (0, 0)
        cpu0 = cpu_seconds()
        elapsed, ok, failed = await run_appends(client, users, data, concurrency, count)
        cpu = cpu_seconds() - cpu0
        fast = stats.fast_calls - before[0] if stats else 0
        admin = stats.admin_calls - before[1] if stats else 0
    print(json.dumps({"elapsed": elapsed, "ok": ok, "failed": failed, "cpu": cpu,
                      "fast": fast, "admin": admin, "warm": warm}), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="child", required=True)
    bare = sub.add_parser("_bare")
    bare.add_argument("--port", type=int, default=0)
    fake = sub.add_parser("_fake")
    fake.add_argument("--path", required=True)
    append = sub.add_parser("_append")
    append.add_argument("--path", required=True)
    append.add_argument("--token-file", required=True)
    append.add_argument("--users", required=True)
    append.add_argument("--concurrency", type=int, required=True)
    append.add_argument("--count", type=int, required=True)
    append.add_argument("--size", type=int, required=True)
    append.add_argument("--cache", help="a login-token cache folder; warm it up first")
    args = parser.parse_args(argv)
    if args.child == "_bare":
        asyncio.run(_serve_bare(args.port))
    elif args.child == "_fake":
        asyncio.run(_serve_fake(args.path))
    else:
        asyncio.run(_append_load(args.path, args.token_file, args.users.split(","),
                                 args.concurrency, args.count, args.size, args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
