"""LMTP load and size benchmark of pymap-deliver, printed as ratios to anchors.

One run measures, with postfix's ``smtp-source -L`` as the client (10
sessions, 4 KB messages, 1 and 5 recipients per message):

* aiosmtpd's bare LMTP server with a no-op handler answering 250 per
  recipient: the ceiling of the library;
* pymap-deliver into a zero-work admin server (this file's own, on the
  generated grpclib base classes): ratio to the bare rate, target >= 0.70;
* pymap-deliver into a real pymap 0.36.7 beside the raw concurrent
  ``Append`` rate at the same concurrency (sessions x recipients calls in
  flight, same message size, same number of deliveries): target >= 0.90;

and then delivers one 50 MB message and reports the peak RSS of the
pymap-deliver process above its idle baseline, relative to the message size
(target <= 3x).

Every server under test runs in its own process, the load generator in
another, and only one load runs at a time. Rates are recipient-deliveries per
second; each measured run is preceded by a pilot run that warms the server
(connections, recipient cache, token cache) and sizes the measured run to
about ``--seconds``. Deliveries are counted on the server side (the no-op
handler, the fake's Append counter, pymap-deliver's log lines, IMAP on the real
pymap) and must equal messages x recipients. Nothing here asserts a time.

    .venv/bin/python -m benchmarks.lmtp_load            # full run, a few minutes
    .venv/bin/python -m benchmarks.lmtp_load --quick    # about a minute

The parts: :mod:`benchmarks.servers` (the servers and the raw Append load,
each in a process of its own), :mod:`benchmarks.harness` (processes, loads,
series against their anchors), :mod:`benchmarks.big_message` (peak RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from devstack.localpymap import REPO

from .big_message import Memory, bench_big
from .harness import (
    DOMAIN,
    HOSTNAME,
    SENDER,
    SMTP_SOURCE,
    Child,
    Deliver,
    Load,
    Options,
    Sample,
    Series,
    imap_count,
    imap_size,
    lmtp_load,
    load_timeout,
    make_message,
    measure,
    proc_cpu,
    proc_status,
    recipients_of,
    smtp_source,
    write_fake_token,
)

# The names other benchmarks import from here (they predate the split).
__all__ = [
    "DOMAIN",
    "HOSTNAME",
    "SENDER",
    "SMTP_SOURCE",
    "Child",
    "Deliver",
    "Load",
    "Options",
    "Sample",
    "Series",
    "imap_count",
    "lmtp_load",
    "load_timeout",
    "main",
    "make_message",
    "measure",
    "proc_cpu",
    "proc_status",
    "recipients_of",
    "smtp_source",
    "write_fake_token",
]

BIG_SIZE = 50_000_000


def bench_fake(opts: Options) -> tuple[list[Series], list[Memory]]:
    """Bare aiosmtpd and pymap-deliver into the zero-work fake, interleaved."""
    sock = opts.workdir / "fake.sock"
    token = opts.workdir / "fake.token"
    write_fake_token(token)
    results: list[Series] = []
    memory: list[Memory] = []
    bare = Child(["_bare", "--port", "0"], log=opts.workdir / "bare.log")
    fake = Child(["_fake", "--path", str(sock)], log=opts.workdir / "fake.log")
    try:
        bare_port = int(bare.ready.split()[1])
        deliver = Deliver(sock, token, log=opts.workdir / "deliver-fake.log",
                          extra=["--log-level", opts.log_level])
        try:
            for rcpts in opts.recipients:
                anchor = Series("aiosmtpd bare LMTP, no-op handler", rcpts)
                subject = Series("pymap-deliver -> zero-work fake", rcpts)
                measure(
                    opts, rcpts,
                    anchor, lmtp_load(bare_port, opts, rcpts, f"bare@{DOMAIN}",
                                      counted=lambda: int(bare.stats()["deliveries"]),
                                      server_cpu=lambda: float(bare.stats()["cpu"])),
                    subject, lmtp_load(deliver.port, opts, rcpts, f"fake@{DOMAIN}",
                                       counted=lambda: int(fake.stats()["Append"]),
                                       server_cpu=lambda: proc_cpu(deliver.pid)))
                if subject.samples and anchor.samples:
                    subject.note = (f"{subject.rate / anchor.rate:.2f} of bare "
                                    "(target >= 0.70)")
                results += [anchor, subject]
        finally:
            deliver.stop()
        if opts.big_size:
            memory.append(bench_big("zero-work fake", sock, token, opts,
                                    stored=lambda: int(fake.stats()["last"])))
    finally:
        fake.close()
        bare.close()
    return results, memory


async def _set_users(socket_path: Path, token: Path, users: Sequence[str]) -> None:
    from pymap_admin import AdminClient, ConnectionSettings

    async with AdminClient(ConnectionSettings(path=socket_path, token_file=token)) as client:
        await asyncio.gather(*(client.set_user(user, password="pw") for user in users))


def raw_load(socket_path: Path, token: Path, opts: Options, users: Sequence[str],
             concurrency: int, pymap_pid: Callable[[], int]) -> Load:
    """The raw Append anchor, in a process of its own: ``load(messages)``
    makes messages x len(users) Appends, ``concurrency`` in flight."""
    def load(messages: int, subject: str) -> Sample:
        count = messages * len(users)
        cpu0 = proc_cpu(pymap_pid())
        # About what pymap-deliver sends: smtp-source's message plus our
        # three trace headers.
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.servers", "_append",
             "--path", str(socket_path), "--token-file", str(token),
             "--concurrency", str(concurrency), "--count", str(count),
             "--size", str(opts.size + 600), "--users", ",".join(users)],
            capture_output=True, timeout=load_timeout(opts) * 4, cwd=REPO)
        cpu = proc_cpu(pymap_pid()) - cpu0
        if done.returncode != 0:
            raise RuntimeError("append load failed: "
                               + done.stderr.decode(errors="replace")[-2000:])
        result = json.loads(done.stdout.decode().strip().splitlines()[-1])
        if result["failed"]:
            raise RuntimeError(f"append load had failures: {result['failed']}")
        return Sample(count, float(result["elapsed"]), int(result["ok"]), cpu)
    return load


def bench_real(opts: Options) -> tuple[list[Series], list[Memory]]:
    """pymap-deliver into a real pymap, interleaved with raw Append loads at
    the same concurrency into users of their own (so both start from
    mailboxes of the same size)."""
    from devstack.localpymap import PymapServer, pymap_executable

    results: list[Series] = []
    memory: list[Memory] = []
    if pymap_executable() is None:
        print("real pymap: not installed (make pymap-venv), skipped", flush=True)
        return results, memory
    pymap = PymapServer(workdir=opts.workdir / "pymap")
    pymap.start()
    try:
        tag = uuid.uuid4().hex[:8]
        plan = {rcpts: (recipients_of(f"lmtp{rcpts}-{tag}@{DOMAIN}", rcpts),
                        recipients_of(f"raw{rcpts}-{tag}@{DOMAIN}", rcpts))
                for rcpts in opts.recipients}
        big_user = f"big-{tag}@{DOMAIN}"
        every = [u for lmtp_users, raw_users in plan.values() for u in lmtp_users + raw_users]
        asyncio.run(_set_users(pymap.socket_path, pymap.token_path, [*every, big_user]))

        def pymap_pid() -> int:
            assert pymap.process is not None
            return pymap.process.pid

        deliver = Deliver(pymap.socket_path, pymap.token_path,
                          log=opts.workdir / "deliver-pymap.log",
                          extra=["--log-level", opts.log_level])
        try:
            for rcpts in opts.recipients:
                lmtp_users, raw_users = plan[rcpts]
                concurrency = opts.sessions * rcpts
                anchor = Series(f"raw Append, {concurrency} in flight -> pymap", rcpts)
                subject = Series("pymap-deliver -> pymap", rcpts)
                measure(
                    opts, rcpts,
                    anchor, raw_load(pymap.socket_path, pymap.token_path, opts, raw_users,
                                     concurrency, pymap_pid),
                    subject, lmtp_load(deliver.port, opts, rcpts, lmtp_users[0],
                                       counted=deliver.delivered,
                                       server_cpu=lambda: proc_cpu(pymap_pid()),
                                       agent_cpu=lambda: proc_cpu(deliver.pid)))
                # What landed, read back over IMAP: every measured delivery,
                # and for the anchor everything it appended (pilot included).
                stored = sum(imap_count(pymap.imap_port, u, "measured") for u in lmtp_users)
                subject.note = f"IMAP: {stored} stored" + (
                    "" if stored == subject.deliveries else " MISMATCH")
                raw_stored = sum(imap_count(pymap.imap_port, u) for u in raw_users)
                raw_sent = anchor.deliveries + opts.pilot * rcpts
                anchor.note = f"IMAP: {raw_stored} stored" + (
                    "" if raw_stored == raw_sent else f" of {raw_sent} MISMATCH")
                if subject.samples and anchor.samples:
                    subject.note = (f"{subject.rate / anchor.rate:.2f} of raw Append "
                                    f"(target >= 0.90); {subject.note}")
                results += [anchor, subject]
        finally:
            deliver.stop()
        if opts.big_size and opts.big_real:
            memory.append(bench_big("real pymap", pymap.socket_path, pymap.token_path, opts,
                                    to=big_user,
                                    stored=lambda: imap_size(pymap.imap_port, big_user)))
    finally:
        pymap.stop()
    return results, memory


# --- output --------------------------------------------------------------------

def mib(value: int) -> str:
    return f"{value / 2**20:.1f}"


def print_table(opts: Options, results: Sequence[Series], memory: Sequence[Memory]) -> None:
    print()
    print(f"LMTP load: smtp-source -L, {opts.sessions} sessions, {opts.size}-byte messages, "
          f"{os.cpu_count()} CPUs; deliveries = recipient-deliveries; median of "
          f"{opts.rounds} interleaved rounds")
    header = (f"{'':<38} {'rcpt':>4} {'msgs/run':>8} {'deliv':>6} {'counted':>7} "
              f"{'deliv/s':>8} {'(min-max)':>11} {'srv cpu':>8} {'agent':>6}  ratio")
    print(header)
    print(f"{'':<38} {'':>4} {'':>8} {'':>6} {'':>7} {'':>8} {'':>11} {'us/deliv':>8} "
          f"{'us/d':>6}")
    print("-" * (len(header) + 40))
    for rcpts in opts.recipients:
        for series in results:
            if series.recipients != rcpts:
                continue
            if series.failure:
                print(f"{series.label:<38} {rcpts:>4}  FAILED: {series.failure}")
                continue
            agent = series.cpu_us(agent=True)
            print(f"{series.label:<38} {rcpts:>4} {series.messages:>8} {series.deliveries:>6} "
                  f"{series.counted:>7} {series.rate:>8.1f} {series.spread:>11} "
                  f"{series.cpu_us():>8.0f} {f'{agent:.0f}' if agent else '-':>6}  "
                  f"{series.note}")
    print("srv cpu: CPU of the server process per delivery (bare aiosmtpd; pymap-deliver "
          "for the fake rows;\n         pymap for the real rows). agent: pymap-deliver's "
          "own CPU per delivery into real pymap.")
    if memory:
        print()
        print(f"One {opts.big_size}-byte message, one recipient, through a fresh pymap-deliver "
              "(baseline = its RSS after one small delivery)")
        header = (f"{'into':<16} {'baseline MiB':>12} {'VmHWM MiB':>10} {'sampled MiB':>11} "
                  f"{'sec':>6} {'stored bytes':>12}  (peak - baseline) / size")
        print(header)
        print("-" * (len(header) + 4))
        for m in memory:
            print(f"{m.target:<16} {mib(m.baseline):>12} {mib(m.peak):>10} "
                  f"{mib(m.sampled_peak):>11} {m.seconds:>6.1f} {m.stored:>12}  "
                  f"{m.ratio:.2f}x (target <= 3x); reply: {m.reply}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="short runs (about a second each) and a 10 MB message")
    parser.add_argument("--seconds", type=float, default=None,
                        help="target duration of each measured run (default: 4; 1 with "
                             "--quick)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="measured runs of each load, interleaved with the anchor's "
                             "(default: 3; 1 with --quick)")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096, help="message length (smtp-source -l)")
    parser.add_argument("--recipients", default="1,5", help="recipients per message, e.g. 1,5")
    parser.add_argument("--big-size", type=int, default=None,
                        help=f"the big message in bytes, 0 to skip (default: {BIG_SIZE})")
    parser.add_argument("--no-real", action="store_true", help="skip the real pymap")
    parser.add_argument("--no-big-real", action="store_true",
                        help="send the big message to the fake only")
    parser.add_argument("--log-level", default="INFO",
                        help="pymap-deliver's --log-level (default: INFO, one line per "
                             "recipient, as deployed)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(SMTP_SOURCE).exists():
        print(f"{SMTP_SOURCE} not found (Debian package postfix)", file=sys.stderr)
        return 1
    big = args.big_size if args.big_size is not None else (
        10_000_000 if args.quick else BIG_SIZE)
    workdir = Path(tempfile.mkdtemp(prefix="lmtp-bench-"))
    opts = Options(
        sessions=args.sessions, size=args.size,
        seconds=args.seconds if args.seconds is not None else (1.0 if args.quick else 4.0),
        rounds=args.rounds if args.rounds is not None else (1 if args.quick else 3),
        pilot=args.sessions * 5,
        recipients=tuple(int(r) for r in args.recipients.split(",")),
        big_size=big, real=not args.no_real, big_real=not args.no_big_real,
        workdir=workdir, log_level=args.log_level)
    try:
        print("bare aiosmtpd and pymap-deliver into the zero-work fake:", flush=True)
        results, memory = bench_fake(opts)
        if opts.real:
            print("real pymap 0.36.7 (dict backend):", flush=True)
            real, big_real = bench_real(opts)
            results += real
            memory += big_real
        print_table(opts, results, memory)
    finally:
        if args.keep:
            print(f"\nlogs in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    # Slow is a result; a load that could not run is an error.
    return 1 if any(series.failure for series in results) else 0


if __name__ == "__main__":
    sys.exit(main())
