"""Cluster benchmark: pymap-deliver into one pymap member vs two, and the
failover gap when a member is killed.

One run, on a private redis-server and two pymap members (redis backend,
one SWIM cluster), with the real ``pymap-deliver`` command in front:

* **Throughput.** postfix's ``smtp-source -L`` (10 sessions, 4 KB messages,
  one recipient) through pymap-deliver configured with member 0 only (the
  anchor), then with both members; rounds interleaved, medians reported,
  and the ratio. Every delivery is counted on pymap-deliver's log lines.
* **CPU per delivery** of each process (user+system from /proc): pymap-deliver,
  each member, redis-server, smtp-source. This is the profile the capacity
  estimates below are computed from.
* **Failover gap.** 10 LMTP sessions deliver continuously through
  pymap-deliver in front of both members; member 1 gets SIGKILL; reported:
  the time from the kill to the next 250, and the longest pause between two
  250s around it. Repeated (the member restarted in between).

Nothing here asserts a time. The machine may be shared: compare the ratio,
which is measured against its anchor in the same run.

    flock /work/bench.lock .venv/bin/python -m benchmarks.cluster [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from devstack.cluster import PymapCluster
from pymap_admin import AdminClient, ConnectionSettings
from pymap_admin.settings import EndpointAddress

from .harness import (
    Deliver,
    Sample,
    Series,
    proc_cpu,
    smtp_source,
    smtp_source_installed,
    work_directory,
)
from .servers import run_appends

USER = "bench"
#: The members know the user by its local part; a member killed mid-call
#: answers within the call deadline.
DELIVER_OPTIONS = ("--local-part-only", "--timeout", "30")


def cpu_snapshot(cluster: PymapCluster, deliver: Deliver) -> dict[str, float]:
    snapshot = {"pymap-deliver": deliver.cpu()}
    for index, member in enumerate(cluster.members):
        if member.process is not None and member.running:
            snapshot[f"member {index}"] = proc_cpu(member.process.pid)
    assert cluster.redis.process is not None
    snapshot["redis-server"] = proc_cpu(cluster.redis.process.pid)
    return snapshot


def children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def load(cluster: PymapCluster, deliver: Deliver, messages: int, size: int,
         sessions: int) -> Sample:
    before_count, before_cpu = deliver.delivered(), cpu_snapshot(cluster, deliver)
    before_client = children_cpu()
    seconds = smtp_source(deliver.port, sessions=sessions, messages=messages, recipients=1,
                          size=size, to=f"{USER}@example.com", subject="cluster bench",
                          timeout=max(120.0, messages / 5))
    after_cpu = cpu_snapshot(cluster, deliver)
    delivered = deliver.delivered() - before_count
    if delivered != messages:
        raise RuntimeError(f"{delivered} of {messages} deliveries answered 250; see {deliver.log}")
    cpu = {name: after_cpu[name] - before_cpu.get(name, 0.0) for name in after_cpu}
    # smtp-source is a child of this process: os.times() counts it once it exited.
    cpu["smtp-source"] = children_cpu() - before_client
    members = sum(value for name, value in cpu.items() if name.startswith("member "))
    return Sample(messages, seconds, delivered, server_cpu=members,
                  agent_cpu=cpu["pymap-deliver"], processes=cpu)


async def raw_appends(sockets: Sequence[Path], token: str, messages: int, size: int,
                      concurrency: int) -> float:
    """The anchor: Append calls straight from AdminClient (no LMTP, no
    pymap-deliver), ``concurrency`` at a time; the rate."""
    body = b"Subject: raw\r\n\r\n" + os.urandom(size // 2).hex().encode()[:size]
    settings = ConnectionSettings(
        endpoints=tuple(EndpointAddress(path=path) for path in sockets) if len(sockets) > 1
        else (), path=sockets[0] if len(sockets) == 1 else None, token=token, timeout=30.0)
    async with AdminClient(settings) as client:
        elapsed, _, failed = await run_appends(client, [USER], body, concurrency, messages)
    if failed:
        raise RuntimeError(f"raw Append failures: {failed}")
    return messages / elapsed


async def prepare(cluster: PymapCluster, token_file: Path) -> None:
    first = cluster.members[0]
    settings = ConnectionSettings(path=first.socket_path, token_file=first.token_path)
    async with AdminClient(settings) as admin:
        await admin.set_user(USER, password="bench")
        await admin.set_user("pymap-deliver", password=os.urandom(8).hex(), roles=["admin"])
        token = (await admin.login("pymap-deliver")).bearer_token
    token_file.touch(mode=0o600)
    token_file.write_text(token)


# --- the failover gap ---------------------------------------------------------


async def _session(port: int, stop_at: float, body: bytes, acks: list[float],
                   deferred: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> int:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                return int(line[:3])

    try:
        await reply()
        writer.write(b"LHLO bench.example\r\n")
        await reply()
        while time.monotonic() < stop_at:
            writer.write(b"MAIL FROM:<load@example.com>\r\nRCPT TO:<" + USER.encode()
                         + b"@example.com>\r\nDATA\r\n")
            codes = [await reply() for _ in range(3)]
            if codes[2] != 354:
                writer.write(b"RSET\r\n")
                await reply()
                deferred.append(time.monotonic())
                await asyncio.sleep(0.05)
                continue
            writer.write(body + b".\r\n")
            code = await reply()
            (acks if code == 250 else deferred).append(time.monotonic())
        writer.write(b"QUIT\r\n")
        await reply()
    finally:
        writer.close()


async def measure_gap(cluster: PymapCluster, port: int, *, sessions: int, size: int,
                      kill_after: float, after_kill: float) -> dict[str, float]:
    body = b"Subject: failover\r\n\r\n" + (b"x" * 76 + b"\r\n") * max(1, size // 78)
    acks: list[float] = []
    deferred: list[float] = []
    started = time.monotonic()
    stop_at = started + kill_after + after_kill
    tasks = [asyncio.create_task(_session(port, stop_at, body, acks, deferred))
             for _ in range(sessions)]
    await asyncio.sleep(kill_after)
    victim = cluster.members[1]
    assert victim.process is not None
    killed_at = time.monotonic()
    os.kill(victim.process.pid, signal.SIGKILL)
    await asyncio.gather(*tasks)
    await asyncio.to_thread(victim.stop)
    after = sorted(t for t in acks if t > killed_at)
    pauses = [b - a for a, b in zip([killed_at, *after], after, strict=False)]
    return {"next_250_ms": (after[0] - killed_at) * 1000 if after else float("nan"),
            "longest_pause_ms": max(pauses, default=float("nan")) * 1000,
            "acks": len(acks), "deferred": len(deferred),
            "rate_before": sum(1 for t in acks if t <= killed_at) / (killed_at - started)}


# --- main ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.kills = 4.0, 2, 2
    if not smtp_source_installed():
        return 1
    # The logs stay behind for reading; the login-token cache goes there too.
    with work_directory("pymap-cluster-bench-", keep=True) as workdir:
        cluster = PymapCluster(workdir=workdir / "cluster", size=2)
        cluster.start()
        try:
            return run(args, cluster, workdir)
        finally:
            cluster.cleanup()


def run(args: argparse.Namespace, cluster: PymapCluster, workdir: Path) -> int:
    token_file = workdir / "delivery.token"
    asyncio.run(prepare(cluster, token_file))
    print(f"cluster bench: {args.sessions} sessions, {args.size} B messages, r=1, "
          f"{os.cpu_count()} CPUs (machine possibly shared)", flush=True)
    one = Series("pymap-deliver -> 1 member", recipients=1)
    two = Series("pymap-deliver -> 2 members", recipients=1)
    delivers = {
        one.label: Deliver(cluster.socket_paths()[:1], token_file,
                           log=workdir / "deliver-1.log", extra=DELIVER_OPTIONS),
        two.label: Deliver(cluster.socket_paths(), token_file,
                           log=workdir / "deliver-2.log", extra=DELIVER_OPTIONS),
    }
    try:
        # Pilot: warms both paths (connections, lookups, pymap's caches) and sizes the rounds.
        pilot = load(cluster, delivers[one.label], 200, args.size, args.sessions)
        load(cluster, delivers[two.label], 200, args.size, args.sessions)
        messages = max(100, int(pilot.rate * args.seconds))
        token = token_file.read_text()
        raw: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.rounds):
            for series in (one, two):
                series.samples.append(load(cluster, delivers[series.label], messages,
                                           args.size, args.sessions))
            for count in raw:
                raw[count].append(asyncio.run(raw_appends(
                    cluster.socket_paths()[:count], token, messages, args.size,
                    args.sessions)))
        print(f"\nthroughput, {args.rounds} rounds of {messages} messages (medians):")
        for series in (one, two):
            rates = [s.rate for s in series.samples]
            print(f"  {series.label:28s} {series.rate:7.0f}/s  "
                  f"(rounds {min(rates):.0f}-{max(rates):.0f})")
        print(f"  ratio 2 members / 1 member: {two.rate / one.rate:.2f}x")
        raw1, raw2 = statistics.median(raw[1]), statistics.median(raw[2])
        print(f"  anchor, raw Append (AdminClient, {args.sessions} at a time, same token): "
              f"1 member {raw1:.0f}/s, 2 members {raw2:.0f}/s, ratio {raw2 / raw1:.2f}x; "
              f"pymap-deliver / raw: {one.rate / raw1:.2f} (1), {two.rate / raw2:.2f} (2)")
        print("\nCPU per delivery (us, user+system):")
        names = ["pymap-deliver", "member 0", "member 1", "redis-server", "smtp-source"]
        print("  " + " ".join(f"{n:>13s}" for n in ["", *names]))
        for series in (one, two):
            print(f"  {series.label[-9:]:>13s} "
                  + " ".join(f"{series.process_cpu_us(n):13.0f}" for n in names))
        report_capacity(one, two)
    finally:
        for deliver in delivers.values():
            deliver.stop()

    print(f"\nfailover gap ({args.kills} kills of member 1 under {args.sessions} sessions):")
    gaps = []
    persistent_cpu: list[float] = []
    for attempt in range(args.kills):
        deliver = Deliver(cluster.socket_paths(), token_file,
                          log=workdir / f"gap-{attempt}.log", extra=DELIVER_OPTIONS)
        try:
            cpu_before = deliver.cpu()
            result = asyncio.run(measure_gap(cluster, deliver.port, sessions=args.sessions,
                                             size=args.size, kill_after=2.0, after_kill=3.0))
            persistent_cpu.append((deliver.cpu() - cpu_before) / result["acks"] * 1e6)
        finally:
            deliver.stop()
        log = deliver.log.read_text(errors="replace")
        gaps.append(result)
        print(f"  kill {attempt + 1}: next 250 after {result['next_250_ms']:.0f} ms, "
              f"longest pause after the kill {result['longest_pause_ms']:.0f} ms, "
              f"{result['acks']:.0f} x 250, {result['deferred']:.0f} x 4xx, "
              f"{log.count('status=ambiguous')} ambiguous")
        cluster.members[1].start()
    print(f"  pymap-deliver CPU per delivery in these runs (sessions kept open, many "
          f"transactions each, as postfix's connection cache does): "
          f"{statistics.median(persistent_cpu):.0f} us")
    return 0


def report_capacity(one: Series, two: Series) -> None:
    """The estimates the issue asks for, from the CPU per delivery."""
    member = statistics.mean([one.process_cpu_us("member 0"),
                              (two.process_cpu_us("member 0") + two.process_cpu_us("member 1"))])
    deliver = two.process_cpu_us("pymap-deliver")
    redis = two.process_cpu_us("redis-server")
    client = two.process_cpu_us("smtp-source")
    total = member + deliver + redis + client
    print("\nestimates from these CPU figures (estimates, not measurements):")
    print(f"  per delivery: pymap member {member:.0f} us, pymap-deliver {deliver:.0f} us, "
          f"redis {redis:.0f} us, load generator {client:.0f} us; total {total:.0f} us")
    print(f"  one member is CPU-bound at ~{1e6 / member:.0f}/s (one core); twice that needs "
          f"~{2e6 / member * total / 1e6:.1f} cores in all at this CPU per delivery, "
          f"pymap-deliver at {2e6 / member * deliver / 1e6:.2f} of a core and redis at "
          f"{2e6 / member * redis / 1e6:.2f} of a core (each single-threaded)")
    print(f"  one pymap-deliver saturates its core at ~{1e6 / deliver:.0f}/s: "
          f"it can feed ~{member / deliver:.1f} members before it is the bottleneck")


if __name__ == "__main__":
    sys.exit(main())
