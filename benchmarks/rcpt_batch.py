"""Pipelined RCPT lookups into a real pymap: 50 RCPTs to 50 distinct known
users, uncached, sent in one write after MAIL; the time from the write to the
50th reply (target: <= 1 s). The anchor, in the same run: 50 RCPTs to 50 other
users sent one at a time, each waiting for its reply (what the lookups cost
one after another).

    flock /work/bench.lock .venv/bin/python -m benchmarks.rcpt_batch
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from devstack.localpymap import PymapServer, cleanup, pymap_executable
from pymap_admin import AdminClient, ConnectionSettings
from pymap_deliver.delivery import DeliveryOptions, PymapBackend
from pymap_deliver.protocol import LMTPOptions
from pymap_deliver.server import DeliveryServer, ServerConfig, TcpEndpoint
from tests.lmtp_client import LMTPClient, tcp_port

from .harness import set_users, work_directory


async def _pipelined(client: LMTPClient, users: Sequence[str]) -> float:
    await client.send(b"MAIL FROM:<s@example.com>\r\n" + b"".join(
        f"RCPT TO:<{user}>\r\n".encode() for user in users))
    started = time.perf_counter()
    replies = await client.read_replies(1 + len(users))
    elapsed = time.perf_counter() - started
    codes = [r.code for r in replies]
    if codes != [250] * len(codes):
        raise RuntimeError(f"unexpected replies: {codes}")
    assert (await client.command("RSET")).code == 250
    return elapsed


async def _one_at_a_time(client: LMTPClient, users: Sequence[str]) -> float:
    assert (await client.command("MAIL FROM:<s@example.com>")).code == 250
    started = time.perf_counter()
    for user in users:
        reply = await client.command(f"RCPT TO:<{user}>")
        if reply.code != 250:
            raise RuntimeError(f"unexpected reply: {reply}")
    elapsed = time.perf_counter() - started
    assert (await client.command("RSET")).code == 250
    return elapsed


async def run(count: int, workdir: Path) -> tuple[float, float]:
    pymap = PymapServer(workdir=workdir / "pymap")
    pymap.start()
    try:
        tag = uuid.uuid4().hex[:8]
        batch = [f"b{i}-{tag}@example.com" for i in range(count)]
        serial = [f"s{i}-{tag}@example.com" for i in range(count)]
        await set_users(pymap.socket_path, pymap.token_path, batch + serial)
        settings = ConnectionSettings(path=pymap.socket_path, token_file=pymap.token_path)
        async with AdminClient(settings) as admin:
            backend = PymapBackend(admin, DeliveryOptions(hostname="bench.example"))
            config = ServerConfig(tcp=[TcpEndpoint(port=0)],
                                  lmtp=LMTPOptions(hostname="bench.example"))
            async with DeliveryServer(backend, config) as server:
                client = await LMTPClient.tcp("127.0.0.1", tcp_port(server))
                assert (await client.start()).code == 250
                # A first lookup warms the channel (and any token cache).
                await _one_at_a_time(client, [batch[0]])
                pipelined = await _pipelined(client, batch[1:])
                sequential = await _one_at_a_time(client, serial[1:])
                await client.quit()
    finally:
        cleanup(pymap)
    return pipelined, sequential


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=50,
                        help="recipients per batch, warm-up user included (default: 50)")
    args = parser.parse_args(argv)
    if pymap_executable() is None:
        print("real pymap not installed (make pymap-venv)", file=sys.stderr)
        return 1
    with work_directory("rcpt-bench-") as workdir:
        pipelined, sequential = asyncio.run(run(args.count, workdir))
    n = args.count - 1
    print(f"{n} pipelined RCPTs, distinct known users, uncached, real pymap (dict):")
    print(f"  pipelined (one write)      {pipelined:6.2f} s to the last reply (target <= 1 s)")
    print(f"  one at a time (anchor)     {sequential:6.2f} s  ({sequential / n * 1000:.0f} ms "
          "per lookup)")
    print(f"  pipelined / one at a time  {pipelined / sequential:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
