"""Client CPU per admin call: what one Append costs AdminClient itself.

A zero-work admin server (``benchmarks.lmtp_load``'s, in its own process)
answers at once, so what is measured is the client's CPU per call (this
process's user+system time over the calls) and the server's, for a 4 KB
Append at concurrency 10, and for GetUser. The anchor in the same run is
grpclib's own generated stub making the same Append with a fixed metadata
dict (no token narrowing, no result mapping, no pool): the floor a client
on grpclib can reach.

    .venv/bin/python -m benchmarks.client_calls [-n CALLS]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from .harness import Child, cpu_seconds, make_message, work_directory, write_fake_token


async def run_calls(call: Callable[[int], Awaitable[object]], count: int,
                    concurrency: int) -> tuple[float, float]:
    """(wall seconds, client CPU seconds) for ``count`` calls."""
    started = 0

    async def worker() -> None:
        nonlocal started
        while started < count:
            started += 1
            await call(started)

    t0, c0 = time.perf_counter(), cpu_seconds()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, cpu_seconds() - c0


async def measure(path: Path, token: Path, count: int, concurrency: int,
                  server: Child) -> list[tuple[str, float, float, float]]:
    from grpclib.client import Channel

    from pymap_admin import AdminClient, ConnectionSettings
    from pymap_admin._wire import Codec, StatusDetailsCodec
    from pymap_admin.client import PROTOCOL_VERSION
    from pymap_admin.grpc.admin_grpc import MailboxStub
    from pymap_admin.grpc.admin_pb2 import AppendRequest

    data = make_message(4096, to="user", subject="calls")
    rows: list[tuple[str, float, float, float]] = []

    async def one(label: str, call: Callable[[int], Awaitable[object]]) -> None:
        for _ in range(2):  # warm-up, then measured
            s0 = float(server.stats()["cpu"])
            wall, client_cpu = await run_calls(call, count, concurrency)
            server_cpu = float(server.stats()["cpu"]) - s0
        rows.append((label, count / wall, client_cpu / count * 1e6, server_cpu / count * 1e6))

    channel = Channel(path=str(path), codec=Codec(), status_details_codec=StatusDetailsCodec())
    stub = MailboxStub(channel)
    metadata = {"client-version": PROTOCOL_VERSION, "auth-token": token.read_text().strip()}
    try:
        await one("grpclib stub, fixed metadata (anchor)",
                  lambda n: stub.Append(AppendRequest(user="user", data=data), timeout=60,
                                        metadata=metadata))
    finally:
        channel.close()
    settings = ConnectionSettings(path=path, token_file=token, login_tokens=False)
    plain = Channel(path=str(path), codec=Codec(), status_details_codec=StatusDetailsCodec())
    async with AdminClient(settings, channel=plain) as client:
        await one("AdminClient.append, plain grpclib channel",
                  lambda n: client.append("user", data))
    async with AdminClient(settings) as client:
        await one("AdminClient.append", lambda n: client.append("user", data))
        await one("AdminClient.get_user", lambda n: client.get_user("user"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", "--calls", type=int, default=3000)
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    args = parser.parse_args()
    with work_directory("client-calls-") as workdir:
        path = workdir / "admin.sock"
        token = workdir / "token"
        write_fake_token(token)
        server = Child(["_fake", "--path", str(path)], log=workdir / "fake.log")
        try:
            rows = asyncio.run(measure(path, token, args.calls, args.concurrency, server))
        finally:
            server.close()
    print(f"{args.calls} calls, {args.concurrency} in flight, one connection, "
          f"zero-work server in its own process ({os.cpu_count()} CPUs, shared)")
    print(f"{'':<40} {'calls/s':>8} {'client us/call':>15} {'server us/call':>15}")
    anchor = rows[0][2]
    for label, rate, client_us, server_us in rows:
        print(f"{label:<40} {rate:>8.0f} {client_us:>15.0f} {server_us:>15.0f}"
              f"  {client_us / anchor:.2f}x anchor CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
