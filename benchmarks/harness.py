"""The parts the LMTP benchmarks share: the server processes they start
(a :mod:`benchmarks.servers` child, the ``pymap-deliver`` command), the
``smtp-source`` load, samples and series measured against an anchor in the
same run, the test message and the IMAP read-back.

Nothing here asserts a time: a figure is a ratio to its anchor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from devstack.localpymap import REPO, PymapServer, free_port

SMTP_SOURCE = "/usr/sbin/smtp-source"
SENDER = "load@example.com"
HOSTNAME = "bench.example"
DOMAIN = "example.com"
#: A recipient answered 250 in pymap-deliver's log line (plain and logfmt's
#: quoted form).
DELIVERED = re.compile(r' status="?250 ')


def make_message(size: int, *, to: str, subject: str) -> bytes:
    """A plain message of about ``size`` bytes of body in 78-byte lines,
    with the header smtp-source would send (CRLF line ends)."""
    head = (f"From: <{SENDER}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Message-Id: <{uuid.uuid4().hex}@{HOSTNAME}>\r\n"
            "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n").encode()
    line = b"La de da de da " * 5 + b"\r\n"  # 77 bytes
    body = line * (size // len(line)) + b"x" * (size % len(line))
    return head + body + (b"" if body.endswith(b"\r\n") else b"\r\n")



def cpu_seconds() -> float:
    """user+system CPU seconds of this process."""
    usage = os.times()
    return usage.user + usage.system


def proc_cpu(pid: int) -> float:
    """user+system CPU seconds of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


@contextlib.contextmanager
def sampling_rss(pid: int, interval: float = 0.005) -> Iterator[list[int]]:
    """Samples VmRSS in a thread (a cross-check of VmHWM); the peak is the
    list's one item once the block ends."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                peak[0] = max(peak[0], proc_status(pid, "VmRSS"))
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def work_directory(prefix: str, *, keep: bool = False) -> Iterator[Path]:
    """A private temporary folder for a run's sockets, logs and login-token
    cache (``$XDG_CACHE_HOME``, so no run writes to the caller's home):
    removed afterwards, or named (``--keep``) for reading the logs."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    cache_home = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(workdir / "cache")
    try:
        yield workdir
    finally:
        if cache_home is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = cache_home
        if keep:
            print(f"\nlogs in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def exit_status(results: Iterable[Series]) -> int:
    """Slow is a result; a load that could not run is an error."""
    return 1 if any(series.failure for series in results) else 0


class _Process:
    """A process this benchmark started."""

    process: subprocess.Popen[bytes]
    _log: BinaryIO

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait(self, timeout: float) -> None:
        """Waits for the process to end (killed after ``timeout``), then
        closes its log."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


class Child(_Process):
    """A server of :mod:`benchmarks.servers` in its own process, speaking the
    stats protocol (``args``: its subcommand and options)."""

    def __init__(self, args: Sequence[str], *, log: Path) -> None:
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.servers", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=REPO)
        self.ready = self._readline()
        if not self.ready.startswith("READY"):
            self.close()
            raise RuntimeError(f"{args[0]} did not start: {self.ready!r}, see {log}")

    def _readline(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().decode().strip()

    def stats(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(b"stats\n")
        self.process.stdin.flush()
        result: dict[str, Any] = json.loads(self._readline())
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        self._wait(10)


class Deliver(_Process):
    """pymap-deliver, from its console script, logging at INFO to a file
    (one line per recipient, as deployed), in front of one admin socket or
    several (a cluster's members)."""

    def __init__(self, paths: Path | Sequence[Path], token_file: Path, *, log: Path,
                 extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.log = log
        program = Path(sys.executable).parent / "pymap-deliver"
        sockets = [paths] if isinstance(paths, Path) else list(paths)
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [str(program), "--listen", f"127.0.0.1:{self.port}",
             *(arg for path in sockets for arg in ("--path", str(path))),
             "--token-file", str(token_file), "--hostname", HOSTNAME,
             # A benchmark machine may run it as root; the daemon refuses
             # that unless told.
             *(["--allow-root"] if os.geteuid() == 0 else []), *extra],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, cwd=REPO)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pymap-deliver exited with {self.process.returncode}, "
                                   f"see {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
                    if conn.recv(100).startswith(b"220"):
                        conn.sendall(b"QUIT\r\n")
                        conn.recv(100)
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pymap-deliver did not start, see {log}")

    def delivered(self) -> int:
        """Recipients answered 250, from the per-recipient log lines."""
        return len(DELIVERED.findall(self.log.read_text(errors="replace")))

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self._wait(30)
        return self.process.returncode


@dataclass
class Sample:
    """One measured load."""

    deliveries: int
    seconds: float
    counted: int
    #: CPU seconds of the server under test (for the pymap rows: of pymap).
    server_cpu: float
    #: CPU seconds of pymap-deliver, when it is in the path.
    agent_cpu: float = 0.0
    #: CPU seconds by process name, where a run follows several.
    processes: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds


@dataclass
class Series:
    """The same load repeated ``--rounds`` times, interleaved with its anchor."""

    label: str
    recipients: int
    messages: int = 0
    samples: list[Sample] = field(default_factory=list)
    failure: str | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return statistics.median(s.rate for s in self.samples) if self.samples else 0.0

    @property
    def spread(self) -> str:
        if len(self.samples) < 2:
            return ""
        rates = [s.rate for s in self.samples]
        return f"{min(rates):.0f}-{max(rates):.0f}"

    @property
    def deliveries(self) -> int:
        return sum(s.deliveries for s in self.samples)

    @property
    def counted(self) -> int:
        return sum(s.counted for s in self.samples)

    def cpu_us(self, agent: bool = False) -> float:
        cpu = sum(s.agent_cpu if agent else s.server_cpu for s in self.samples)
        return cpu / self.deliveries * 1e6 if self.deliveries else 0.0

    def process_cpu_us(self, name: str) -> float:
        cpu = sum(s.processes.get(name, 0.0) for s in self.samples)
        return cpu / self.deliveries * 1e6 if self.deliveries else 0.0


@dataclass
class Options:
    sessions: int
    size: int
    seconds: float
    rounds: int
    pilot: int
    recipients: tuple[int, ...]
    big_size: int
    real: bool
    big_real: bool
    workdir: Path
    log_level: str


def load_parser(doc: str | None, *, quick_seconds: float,
                quick_help: str) -> argparse.ArgumentParser:
    """The options of an ``smtp-source`` load benchmark (see
    :func:`load_options`); the caller adds its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--seconds", type=float, default=None,
                        help="target duration of each measured run (default: 4; "
                             f"{quick_seconds:g} with --quick)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="measured runs of each load, interleaved with the anchor's "
                             "(default: 3; 1 with --quick)")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096, help="message length (smtp-source -l)")
    parser.add_argument("--recipients", default="1,5", help="recipients per message, e.g. 1,5")
    parser.add_argument("--log-level", default="INFO",
                        help="pymap-deliver's --log-level (default: INFO, one line per "
                             "recipient, as deployed)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return parser


def load_options(args: argparse.Namespace, workdir: Path, *, quick_seconds: float,
                 big_size: int = 0, real: bool = True, big_real: bool = False) -> Options:
    """:class:`Options` from :func:`load_parser`'s arguments."""
    return Options(
        sessions=args.sessions, size=args.size,
        seconds=args.seconds if args.seconds is not None else (
            quick_seconds if args.quick else 4.0),
        rounds=args.rounds if args.rounds is not None else (1 if args.quick else 3),
        pilot=args.sessions * 5,
        recipients=tuple(int(r) for r in args.recipients.split(",")),
        big_size=big_size, real=real, big_real=big_real, workdir=workdir,
        log_level=args.log_level)


def smtp_source_installed() -> bool:
    if Path(SMTP_SOURCE).exists():
        return True
    print(f"{SMTP_SOURCE} not found (Debian package postfix)", file=sys.stderr)
    return False


def smtp_source(port: int, *, sessions: int, messages: int, recipients: int, size: int,
                to: str, subject: str, timeout: float) -> float:
    """One smtp-source load; its wall time. Fails loudly on a non-zero exit
    (smtp-source exits on any reply it did not expect)."""
    command = [SMTP_SOURCE, "-L", "-s", str(sessions), "-m", str(messages), "-r",
               str(recipients), "-l", str(size), "-M", HOSTNAME, "-f", SENDER, "-t", to,
               "-S", subject, f"127.0.0.1:{port}"]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"smtp-source made no progress for {timeout:.0f}s "
                           "(sessions stuck waiting for replies)") from None
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({done.returncode}): "
                           f"{(done.stdout + done.stderr).decode(errors='replace')[-2000:]}")
    return elapsed


def load_timeout(opts: Options) -> float:
    # A stall, not a slow run: runs are sized to opts.seconds.
    return max(120.0, 30 * opts.seconds)


def recipients_of(to: str, count: int) -> list[str]:
    # smtp-source -r N sends to N<to>, ..., 2<to>, <to>.
    return [to] + [f"{n}{to}" for n in range(2, count + 1)]


Load = Callable[[int, str], Sample]


def lmtp_load(port: int, opts: Options, recipients: int, to: str, *,
              counted: Callable[[], int], server_cpu: Callable[[], float],
              agent_cpu: Callable[[], float] = lambda: 0.0) -> Load:
    """``load(messages, subject)``: one smtp-source run against ``port``,
    with the server-side count and CPU around it."""
    def load(messages: int, subject: str) -> Sample:
        before, cpu0, agent0 = counted(), server_cpu(), agent_cpu()
        seconds = smtp_source(port, sessions=opts.sessions, messages=messages,
                              recipients=recipients, size=opts.size, to=to, subject=subject,
                              timeout=load_timeout(opts))
        return Sample(messages * recipients, seconds, counted() - before,
                      server_cpu() - cpu0, agent_cpu() - agent0)
    return load


def raw_load(socket_path: Path, token: Path, opts: Options, users: Sequence[str],
             concurrency: int, pymap_pid: Callable[[], int], *, cache: Path | None = None,
             counters: dict[str, int] | None = None) -> Load:
    """The raw Append anchor (``benchmarks.servers _append``), in a process
    of its own: ``load(messages)`` makes messages x len(users) Appends,
    ``concurrency`` in flight, and counts pymap's CPU around it. With
    ``cache``, every measured call has its login token already;
    ``counters`` adds up the calls made with a login token (``fast``),
    with the admin token (``admin``) and the untimed warm-up Appends
    (``warm``)."""
    def load(messages: int, subject: str) -> Sample:
        count = messages * len(users)
        cpu0 = proc_cpu(pymap_pid())
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.servers", "_append",
             "--path", str(socket_path), "--token-file", str(token),
             *(["--cache", str(cache)] if cache is not None else []),
             "--concurrency", str(concurrency), "--count", str(count),
             # About what pymap-deliver stores: smtp-source's message plus
             # its trace headers.
             "--size", str(opts.size + 600), "--users", ",".join(users)],
            capture_output=True, timeout=load_timeout(opts) * 4, cwd=REPO)
        cpu = proc_cpu(pymap_pid()) - cpu0
        if done.returncode != 0:
            raise RuntimeError("raw Append load failed: "
                               + done.stderr.decode(errors="replace")[-2000:])
        result = json.loads(done.stdout.decode().strip().splitlines()[-1])
        if result["failed"]:
            raise RuntimeError(f"raw Append load had failures: {result['failed']}")
        if counters is not None:
            for key in ("fast", "admin", "warm"):
                counters[key] = counters.get(key, 0) + int(result[key])
        return Sample(count, float(result["elapsed"]), int(result["ok"]), cpu)
    return load


async def set_users(socket_path: Path, token: Path, users: Sequence[str]) -> None:
    """The benchmark users, each with the password ``pw`` (IMAP read-back)."""
    from pymap_admin import AdminClient, ConnectionSettings

    settings = ConnectionSettings(path=socket_path, token_file=token)
    async with AdminClient(settings, login_tokens=False) as client:
        await asyncio.gather(*(client.set_user(user, password="pw") for user in users))


def measure(opts: Options, recipients: int, anchor: Series, anchor_load: Load,
            subject: Series, subject_load: Load, *, size_from_subject: bool = False) -> None:
    """Pilots (warm-up and sizing), then ``opts.rounds`` rounds of anchor
    then subject with the same number of messages. A failure is recorded in
    the series, and ends the measurement."""
    current = anchor
    try:
        pilot_anchor = anchor_load(opts.pilot, "pilot")
        current = subject
        pilot_subject = subject_load(opts.pilot, "pilot")
        rate = (pilot_subject if size_from_subject else pilot_anchor).rate
        messages = max(opts.sessions * 2, int(rate * opts.seconds / recipients))
        anchor.messages = subject.messages = messages
        for _ in range(opts.rounds):
            current = anchor
            anchor.samples.append(anchor_load(messages, "measured"))
            current = subject
            subject.samples.append(subject_load(messages, "measured"))
    except Exception as exc:
        current.failure = str(exc)
    for series in (anchor, subject):
        report(series)


def versus_raw_append(pymap: PymapServer, opts: Options, *, prefix: str, log: Path,
                      targets: Mapping[int, float], cache: Path | None = None) -> list[Series]:
    """For each recipient count: pymap-deliver (``smtp-source``, ``sessions``
    sessions) into ``pymap``, interleaved with raw Append loads at the same
    concurrency (sessions x recipients in flight) into users of their own,
    so both start from mailboxes of the same size; what each stored, read
    back over IMAP; the ratio to the anchor against ``targets`` (by
    recipient count). ``cache``: the raw loads' login-token cache
    (:func:`raw_load`)."""
    assert pymap.process is not None
    pid = pymap.process.pid
    tag = uuid.uuid4().hex[:8]
    plan = {rcpts: (recipients_of(f"lmtp{rcpts}-{tag}@{DOMAIN}", rcpts),
                    recipients_of(f"raw{rcpts}-{tag}@{DOMAIN}", rcpts))
            for rcpts in opts.recipients}
    asyncio.run(set_users(pymap.socket_path, pymap.token_path,
                          [u for lmtp_users, raw_users in plan.values()
                           for u in lmtp_users + raw_users]))
    deliver = Deliver(pymap.socket_path, pymap.token_path, log=log,
                      extra=["--log-level", opts.log_level])
    results: list[Series] = []
    try:
        for rcpts in opts.recipients:
            lmtp_users, raw_users = plan[rcpts]
            concurrency = opts.sessions * rcpts
            counters: dict[str, int] = {}
            anchor = Series(f"{prefix}raw Append, {concurrency} in flight", rcpts)
            subject = Series(f"{prefix}pymap-deliver, {opts.sessions} sessions", rcpts)
            measure(
                opts, rcpts,
                anchor, raw_load(pymap.socket_path, pymap.token_path, opts, raw_users,
                                 concurrency, lambda: pid, cache=cache, counters=counters),
                subject, lmtp_load(deliver.port, opts, rcpts, lmtp_users[0],
                                   counted=deliver.delivered,
                                   server_cpu=lambda: proc_cpu(pid),
                                   agent_cpu=lambda: proc_cpu(deliver.pid)))
            # Every measured delivery; for the anchor everything it
            # appended (pilot and warm-up included).
            stored = sum(imap_count(pymap.imap_port, u, "measured") for u in lmtp_users)
            subject.note = f"IMAP: {stored} stored" + (
                "" if stored == subject.deliveries else " MISMATCH")
            raw_stored = sum(imap_count(pymap.imap_port, u) for u in raw_users)
            raw_sent = anchor.deliveries + opts.pilot * rcpts + counters.get("warm", 0)
            anchor.note = (f"IMAP: {raw_stored} stored"
                           + ("" if raw_stored == raw_sent else f" of {raw_sent} MISMATCH")
                           + f"; calls with a login token: {counters.get('fast', 0)}, "
                           f"with the admin token: {counters.get('admin', 0)}")
            if subject.samples and anchor.samples:
                target = targets.get(rcpts)
                subject.note = (f"{subject.rate / anchor.rate:.2f}x raw Append"
                                + (f" (target >= {target:.2f})" if target else "")
                                + f"; {subject.note}")
            results += [anchor, subject]
    finally:
        deliver.stop()
    return results


def print_table(title: str, opts: Options, results: Iterable[Series], *,
                width: int = 38) -> None:
    """The series measured, by recipient count, with their CPU per
    delivery (``srv cpu``: the server under test; ``agent``: pymap-deliver
    where it is not the server under test) and their notes (ratios)."""
    print()
    print(f"{title}: smtp-source -L, {opts.sessions} sessions, {opts.size}-byte messages, "
          f"{os.cpu_count()} CPUs (machine shared); deliveries = recipient-deliveries; "
          f"median of {opts.rounds} interleaved rounds")
    header = (f"{'':<{width}} {'rcpt':>4} {'msgs/run':>8} {'deliv':>6} {'counted':>7} "
              f"{'deliv/s':>8} {'(min-max)':>11} {'srv cpu':>8} {'agent':>6}  ratio")
    print(header)
    print(f"{'':<{width}} {'':>4} {'':>8} {'':>6} {'':>7} {'':>8} {'':>11} {'us/deliv':>8} "
          f"{'us/d':>6}")
    print("-" * (len(header) + 40))
    for series in sorted(results, key=lambda series: series.recipients):
        if series.failure:
            print(f"{series.label:<{width}} {series.recipients:>4}  FAILED: {series.failure}")
            continue
        agent = series.cpu_us(agent=True)
        print(f"{series.label:<{width}} {series.recipients:>4} {series.messages:>8} "
              f"{series.deliveries:>6} {series.counted:>7} {series.rate:>8.1f} "
              f"{series.spread:>11} {series.cpu_us():>8.0f} "
              f"{f'{agent:.0f}' if agent else '-':>6}  {series.note}")


def report(series: Series) -> None:
    if series.failure:
        print(f"  {series.label:<38} r={series.recipients}  FAILED: {series.failure}",
              flush=True)
        return
    check = "" if series.counted == series.deliveries else \
        f"  COUNT MISMATCH: {series.counted} counted"
    print(f"  {series.label:<38} r={series.recipients}  {len(series.samples)} x "
          f"{series.messages} msgs  {series.rate:8.1f} deliveries/s ({series.spread}){check}",
          flush=True)



def write_fake_token(path: Path) -> None:
    """A real macaroon, so the client does the same token work as with pymap."""
    from pymacaroons import Macaroon

    macaroon = Macaroon(location="", identifier="bench", key=uuid.uuid4().hex)
    macaroon.add_first_party_caveat("type = admin")
    path.write_text(macaroon.serialize() + "\n")


def imap_count(imap_port: int, user: str, subject: str | None = None) -> int:
    conn = imaplib.IMAP4("127.0.0.1", imap_port, timeout=60)
    try:
        conn.login(user, "pw")
        status, data = conn.select("INBOX", readonly=True)
        assert status == "OK"
        if subject is None:
            return int(data[0] or 0)
        status, data = conn.search(None, "SUBJECT", f'"{subject}"')
        return len(data[0].split()) if data and data[0] else 0
    finally:
        with contextlib.suppress(Exception):
            conn.logout()


def imap_size(imap_port: int, user: str) -> int:
    """RFC822.SIZE of the newest message in the user's INBOX."""
    conn = imaplib.IMAP4("127.0.0.1", imap_port, timeout=120)
    try:
        conn.login(user, "pw")
        _, data = conn.select("INBOX", readonly=True)
        _, parts = conn.fetch(str(int(data[0] or 0)), "(RFC822.SIZE)")
        text = parts[0].decode() if isinstance(parts[0], bytes) else str(parts[0])
        return int(text.rsplit("RFC822.SIZE", 1)[1].strip(" )"))
    finally:
        with contextlib.suppress(Exception):
            conn.logout()


