"""pymap-deliver into a real pymap on the login-token fast path, against its anchor.

For each backend (dict, maildir) and each recipient count (1, 5), one run
measures, interleaved round by round:

* the anchor: raw concurrent ``Append`` calls, ``sessions x recipients`` in
  flight on one connection, each with a login token minted for its user
  (the client library without LMTP; its fast-path counters are printed to
  show every measured call used a login token);
* pymap-deliver as deployed (login tokens by default, INFO log line per
  recipient) under postfix's ``smtp-source -L``, ``sessions`` sessions.

Targets (issue 9): dict r=1 >= 0.75x the anchor, maildir r=1 >= 0.85x;
r=5 reported. Deliveries are counted on the server side (pymap-deliver's
log lines and IMAP read-back). The pymap server, pymap-deliver and the load
generators are separate processes on the same machine; nothing asserts a
time. Afterwards, what maildir's token store (``pymap-tokens``) holds.

    .venv/bin/python -m benchmarks.fast_path [--quick] [--backends dict,maildir]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.lmtp_load import (  # noqa: E402
    DOMAIN,
    SENDER,
    SMTP_SOURCE,
    Deliver,
    Load,
    Options,
    Sample,
    Series,
    imap_count,
    lmtp_load,
    load_timeout,
    make_message,
    measure,
    proc_cpu,
    recipients_of,
)


async def _raw_append(path: str, token_file: str, cache: str, users: Sequence[str],
                      concurrency: int, count: int, size: int) -> None:
    """Warm-up (one Append per user: its login token minted, or found in
    ``cache``), then ``count`` Appends round-robin over ``users``,
    ``concurrency`` in flight; one JSON line with the time and counters."""
    from pymap_admin import AdminClient, ConnectionSettings

    data = make_message(size, to=users[0], subject="raw append")
    settings = ConnectionSettings(path=Path(path), token_file=Path(token_file),
                                  login_tokens=True, token_cache=cache)
    failed: dict[str, int] = {}
    async with AdminClient(settings) as client:
        stats = client.fast_path
        assert stats is not None
        for user in users:
            await client.append(user, data, sender=SENDER, recipient=user)
        deadline = time.monotonic() + 30
        while stats.mints + stats.cache_hits < len(users) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        before = (stats.fast_calls, stats.admin_calls)
        started = ok = 0

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
        elapsed = time.perf_counter() - t0
        fast = stats.fast_calls - before[0]
        admin = stats.admin_calls - before[1]
    print(json.dumps({"elapsed": elapsed, "ok": ok, "failed": failed, "fast": fast,
                      "admin": admin}), flush=True)


def raw_load(socket_path: Path, token: Path, opts: Options, users: Sequence[str],
             concurrency: int, pymap_pid: int, counters: dict[str, int]) -> Load:
    def load(messages: int, subject: str) -> Sample:
        count = messages * len(users)
        cpu0 = proc_cpu(pymap_pid)
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "_raw",
             "--path", str(socket_path), "--token-file", str(token),
             "--cache", str(opts.workdir / "raw-cache"),
             "--concurrency", str(concurrency), "--count", str(count),
             # About what pymap-deliver stores: the message plus trace headers.
             "--size", str(opts.size + 600), "--users", ",".join(users)],
            capture_output=True, timeout=load_timeout(opts) * 4, cwd=REPO)
        cpu = proc_cpu(pymap_pid) - cpu0
        if done.returncode != 0:
            raise RuntimeError("raw Append load failed: "
                               + done.stderr.decode(errors="replace")[-2000:])
        result = json.loads(done.stdout.decode().strip().splitlines()[-1])
        if result["failed"]:
            raise RuntimeError(f"raw Append load had failures: {result['failed']}")
        counters["fast"] += int(result["fast"])
        counters["admin"] += int(result["admin"])
        return Sample(count, float(result["elapsed"]), int(result["ok"]), cpu)
    return load


async def _set_users(socket_path: Path, token: Path, users: Sequence[str]) -> None:
    from pymap_admin import AdminClient, ConnectionSettings

    settings = ConnectionSettings(path=socket_path, token_file=token)
    async with AdminClient(settings, login_tokens=False) as client:
        await asyncio.gather(*(client.set_user(user, password="pw") for user in users))


def token_records(maildir: Path) -> int:
    path = maildir / "pymap-tokens"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


TARGETS = {("dict", 1): 0.75, ("maildir", 1): 0.85}
#: A recipient answered 250 in pymap-deliver's log (logfmt or plain).
_DELIVERED = re.compile(r' status="?250 ')


def delivered(deliver: Deliver) -> int:
    return len(_DELIVERED.findall(deliver.log.read_text(errors="replace")))
#: pymap-deliver refuses to keep root privileges unless told (benchmarks run
#: as whoever runs them).
ROOT = ["--allow-root"] if os.geteuid() == 0 else []


def bench_backend(backend: str, opts: Options) -> list[Series]:
    from devstack.localpymap import PymapServer, make_maildir_server

    workdir = opts.workdir / backend
    pymap = (PymapServer(workdir=workdir / "pymap") if backend == "dict"
             else make_maildir_server(workdir / "pymap"))
    pymap.start()
    results: list[Series] = []
    try:
        assert pymap.process is not None
        pid = pymap.process.pid
        tag = uuid.uuid4().hex[:8]
        plan = {r: (recipients_of(f"lmtp{r}-{tag}@{DOMAIN}", r),
                    recipients_of(f"raw{r}-{tag}@{DOMAIN}", r)) for r in opts.recipients}
        asyncio.run(_set_users(pymap.socket_path, pymap.token_path,
                               [u for a, b in plan.values() for u in a + b]))
        deliver = Deliver(pymap.socket_path, pymap.token_path,
                          log=workdir / "deliver.log",
                          extra=["--log-level", opts.log_level, *ROOT])
        try:
            for rcpts in opts.recipients:
                lmtp_users, raw_users = plan[rcpts]
                concurrency = opts.sessions * rcpts
                counters = {"fast": 0, "admin": 0}
                anchor = Series(f"{backend}: raw Append, login tokens, {concurrency} in flight",
                                rcpts)
                subject = Series(f"{backend}: pymap-deliver, {opts.sessions} sessions", rcpts)
                measure(opts, rcpts,
                        anchor, raw_load(pymap.socket_path, pymap.token_path, opts, raw_users,
                                         concurrency, pid, counters),
                        subject, lmtp_load(deliver.port, opts, rcpts, lmtp_users[0],
                                           counted=lambda: delivered(deliver),
                                           server_cpu=lambda: proc_cpu(pid),
                                           agent_cpu=lambda: proc_cpu(deliver.pid)))
                stored = sum(imap_count(pymap.imap_port, u, "measured") for u in lmtp_users)
                anchor.note = (f"calls with a login token: {counters['fast']}, with the "
                               f"admin token: {counters['admin']}")
                subject.note = f"IMAP: {stored} stored" + (
                    "" if stored == subject.deliveries else " MISMATCH")
                if subject.samples and anchor.samples:
                    ratio = subject.rate / anchor.rate
                    target = TARGETS.get((backend, rcpts))
                    subject.note = (f"{ratio:.2f}x raw" + (f" (target >= {target})"
                                                           if target else "")
                                    + f"; {subject.note}")
                results += [anchor, subject]
        finally:
            deliver.stop()
        if backend == "maildir":
            print(f"  maildir token store after the run: "
                  f"{token_records(Path(pymap.backend[1]))} records "
                  f"({sum(len(a) + len(b) for a, b in plan.values())} users delivered to)",
                  flush=True)
    finally:
        pymap.stop()
    return results


def print_table(opts: Options, results: Sequence[Series]) -> None:
    print()
    print(f"smtp-source -L, {opts.sessions} sessions, {opts.size}-byte messages, "
          f"{os.cpu_count()} CPUs (shared machine); median of {opts.rounds} interleaved rounds")
    header = (f"{'':<52} {'rcpt':>4} {'msgs/run':>8} {'deliv/s':>8} {'(min-max)':>11} "
              f"{'pymap cpu':>9} {'agent':>6}")
    print(header)
    print(f"{'':<52} {'':>4} {'':>8} {'':>8} {'':>11} {'us/deliv':>9} {'us/d':>6}")
    print("-" * (len(header) + 30))
    for series in results:
        if series.failure:
            print(f"{series.label:<52} {series.recipients:>4}  FAILED: {series.failure}")
            continue
        agent = series.cpu_us(agent=True)
        print(f"{series.label:<52} {series.recipients:>4} {series.messages:>8} "
              f"{series.rate:>8.1f} {series.spread:>11} {series.cpu_us():>9.0f} "
              f"{f'{agent:.0f}' if agent else '-':>6}  {series.note}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one short round each")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--recipients", default="1,5")
    parser.add_argument("--backends", default="dict,maildir")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    sub = parser.add_subparsers(dest="child")
    raw = sub.add_parser("_raw")
    raw.add_argument("--path", required=True)
    raw.add_argument("--token-file", required=True)
    raw.add_argument("--cache", required=True)
    raw.add_argument("--users", required=True)
    raw.add_argument("--concurrency", type=int, required=True)
    raw.add_argument("--count", type=int, required=True)
    raw.add_argument("--size", type=int, required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "_raw":
        asyncio.run(_raw_append(args.path, args.token_file, args.cache, args.users.split(","),
                                args.concurrency, args.count, args.size))
        return 0
    if not Path(SMTP_SOURCE).exists():
        print(f"{SMTP_SOURCE} not found (Debian package postfix)", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="fast-path-bench-"))
    # pymap-deliver keeps its login tokens here, not in the caller's home.
    os.environ["XDG_CACHE_HOME"] = str(workdir / "cache")
    opts = Options(
        sessions=args.sessions, size=args.size,
        seconds=args.seconds if args.seconds is not None else (1.5 if args.quick else 4.0),
        rounds=args.rounds if args.rounds is not None else (1 if args.quick else 3),
        pilot=args.sessions * 5, recipients=tuple(int(r) for r in args.recipients.split(",")),
        big_size=0, real=True, big_real=False, workdir=workdir, log_level=args.log_level)
    results: list[Series] = []
    try:
        for backend in args.backends.split(","):
            print(f"real pymap 0.36.7, {backend}:", flush=True)
            results += bench_backend(backend, opts)
        print_table(opts, results)
    finally:
        if args.keep:
            print(f"\nlogs in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(series.failure for series in results) else 0


if __name__ == "__main__":
    sys.exit(main())
