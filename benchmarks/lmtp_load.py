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

    .venv/bin/python benchmarks/lmtp_load.py            # full run, a few minutes
    .venv/bin/python benchmarks/lmtp_load.py --quick    # about a minute

The same file also implements the child processes (``_bare``, ``_fake``,
``_append``), started by the parent with ``sys.executable``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import json
import os
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SMTP_SOURCE = "/usr/sbin/smtp-source"
SENDER = "load@example.com"
HOSTNAME = "bench.example"
DOMAIN = "example.com"
BIG_SIZE = 50_000_000


# --------------------------------------------------------------------------
# Child processes. Each answers "stats" lines on stdin with one JSON line on
# stdout, and exits when stdin closes.
# --------------------------------------------------------------------------

async def _control(stats: Callable[[], dict[str, Any]], ready: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(ready, flush=True)
    while line := await reader.readline():
        if line.strip() == b"stats":
            print(json.dumps(stats()), flush=True)


def _cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


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
                            "cpu": _cpu_seconds()}, f"READY {bound}")
    server.close()


class _ZeroWorkAdmin:
    """Builds the admin service lazily so the parent never imports grpclib."""

    @staticmethod
    def make() -> tuple[Any, Callable[[], dict[str, Any]]]:
        from grpclib.server import Stream

        from pymap_admin.grpc import admin_pb2 as pb
        from pymap_admin.grpc.admin_grpc import MailboxBase, SystemBase, UserBase

        counts = {"Append": 0, "GetUser": 0, "bytes": 0, "last": 0}

        def ok(text: str = "OK completed.") -> pb.Result:
            return pb.Result(code=pb.SUCCESS, response=text.encode())

        class Admin(SystemBase, MailboxBase, UserBase):
            """Answers SUCCESS at once and keeps nothing but counters."""

            def __mapping__(self) -> dict[str, Any]:
                return {**SystemBase.__mapping__(self), **MailboxBase.__mapping__(self),
                        **UserBase.__mapping__(self)}

            async def Ping(self, stream: Stream[pb.PingRequest, pb.PingResponse]) -> None:
                await stream.recv_message()
                await stream.send_message(pb.PingResponse(
                    result=ok(), pymap_version="0.36.7", pymap_admin_version="0.12.1"))

            async def Login(self, stream: Stream[pb.LoginRequest, pb.LoginResponse]) -> None:
                await stream.recv_message()
                await stream.send_message(pb.LoginResponse(result=ok(), bearer_token="x"))

            async def Append(self, stream: Stream[pb.AppendRequest, pb.AppendResponse]) -> None:
                request = await stream.recv_message()
                assert request is not None
                counts["Append"] += 1
                counts["bytes"] += len(request.data)
                counts["last"] = len(request.data)
                await stream.send_message(pb.AppendResponse(
                    result=ok("Append OK completed."), mailbox="INBOX", validity=1,
                    uid=counts["Append"]))

            async def _user(self, stream: Stream[Any, pb.UserResponse]) -> None:
                request = await stream.recv_message()
                assert request is not None
                await stream.send_message(pb.UserResponse(result=ok(), user=request.user,
                                                          entity_tag=1))

            async def GetUser(self, stream: Stream[pb.GetUserRequest, pb.UserResponse]) -> None:
                counts["GetUser"] += 1
                await self._user(stream)

            async def SetUser(self, stream: Stream[pb.SetUserRequest, pb.UserResponse]) -> None:
                await self._user(stream)

            async def DeleteUser(self, stream: Stream[pb.DeleteUserRequest, pb.UserResponse]
                                 ) -> None:
                await self._user(stream)

        return Admin(), lambda: {**counts, "cpu": _cpu_seconds()}


async def _serve_fake(path: str) -> None:
    from grpclib.server import Server

    admin, stats = _ZeroWorkAdmin.make()
    server = Server([admin])
    await server.start(path=path)
    await _control(stats, "READY")
    server.close()
    await server.wait_closed()


async def _append_load(path: str, token_file: str, users: Sequence[str], concurrency: int,
                       count: int, size: int) -> None:
    """``count`` Appends, ``concurrency`` in flight, users round-robin; one
    JSON line with the elapsed time and the outcomes."""
    from pymap_admin import AdminClient, ConnectionSettings

    data = make_message(size, to=users[0], subject="raw append")
    settings = ConnectionSettings(path=Path(path), token_file=Path(token_file))
    started = 0
    ok = 0
    failed: dict[str, int] = {}

    async with AdminClient(settings) as client:
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

        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    print(json.dumps({"elapsed": elapsed, "ok": ok, "failed": failed, "cpu": cpu}), flush=True)


def make_message(size: int, *, to: str, subject: str) -> bytes:
    """A plain message of about ``size`` bytes of body in 78-byte lines,
    with the header smtp-source would send (CRLF line ends)."""
    head = (f"From: <{SENDER}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Message-Id: <{uuid.uuid4().hex}@{HOSTNAME}>\r\n"
            "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n").encode()
    line = b"La de da de da " * 5 + b"\r\n"  # 77 bytes
    body = line * (size // len(line)) + b"x" * (size % len(line))
    return head + body + (b"" if body.endswith(b"\r\n") else b"\r\n")


# --------------------------------------------------------------------------
# The parent: processes, measurements, the table.
# --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


class Child:
    """A child of this script speaking the stats protocol."""

    def __init__(self, args: Sequence[str], *, log: Path) -> None:
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=REPO)
        self.ready = self._readline()
        if not self.ready.startswith("READY"):
            self.close()
            raise RuntimeError(f"{args[0]} did not start: {self.ready!r}, see {log}")

    @property
    def pid(self) -> int:
        return self.process.pid

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
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


class Deliver:
    """pymap-deliver, from its console script, logging at INFO to a file
    (one line per recipient, as deployed)."""

    def __init__(self, socket_path: Path, token_file: Path, *, log: Path,
                 extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.log = log
        program = Path(sys.executable).parent / "pymap-deliver"
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [str(program), "--listen", f"127.0.0.1:{self.port}", "--path", str(socket_path),
             "--token-file", str(token_file), "--hostname", HOSTNAME, *extra],
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

    @property
    def pid(self) -> int:
        return self.process.pid

    def delivered(self) -> int:
        """Recipients answered 250, from the per-recipient log lines."""
        return self.log.read_text(errors="replace").count(" status=250 ")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
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


# --- the LMTP servers -----------------------------------------------------------

def write_fake_token(path: Path) -> None:
    """A real macaroon, so the client does the same token work as with pymap."""
    from pymacaroons import Macaroon

    macaroon = Macaroon(location="", identifier="bench", key=uuid.uuid4().hex)
    macaroon.add_first_party_caveat("type = admin")
    path.write_text(macaroon.serialize() + "\n")


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
            [sys.executable, str(Path(__file__).resolve()), "_append",
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


# --- one big message ---------------------------------------------------------

@dataclass
class Memory:
    target: str
    size: int
    baseline: int
    peak: int
    sampled_peak: int
    seconds: float
    reply: str
    stored: int

    @property
    def ratio(self) -> float:
        return (self.peak - self.baseline) / self.size


@contextlib.contextmanager
def sampling(pid: int, interval: float = 0.005) -> Iterator[list[int]]:
    """Samples VmRSS in a thread, a cross-check of VmHWM."""
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


def lmtp_send(port: int, to: str, data: bytes, timeout: float = 600) -> str:
    with smtplib.LMTP("127.0.0.1", port, local_hostname=HOSTNAME, timeout=timeout) as lmtp:
        lmtp.ehlo_or_helo_if_needed()
        code, text = lmtp.mail(SENDER, [f"SIZE={len(data)}"])
        if code != 250:
            return f"{code} {text.decode()}"
        code, text = lmtp.rcpt(to)
        if code != 250:
            return f"{code} {text.decode()}"
        code, text = lmtp.data(data)
        return f"{code} {text.decode()}"


def bench_big(target: str, socket_path: Path, token: Path, opts: Options, *,
              stored: Callable[[], int], to: str = f"big@{DOMAIN}") -> Memory:
    """A fresh pymap-deliver; a small message to load everything a delivery
    needs; its RSS then is the baseline; then one big message."""
    deliver = Deliver(socket_path, token, log=opts.workdir / f"deliver-big-{target[:4]}.log",
                      extra=["--log-level", opts.log_level])
    try:
        small = make_message(opts.size, to=to, subject="warm-up")
        reply = lmtp_send(deliver.port, to, small)
        if not reply.startswith("250"):
            raise RuntimeError(f"warm-up delivery failed: {reply}")
        time.sleep(0.5)
        baseline = proc_status(deliver.pid, "VmRSS")
        # Resets VmHWM to the current RSS (Linux >= 4.0).
        Path(f"/proc/{deliver.pid}/clear_refs").write_text("5")
        data = make_message(opts.big_size, to=to, subject="big")
        with sampling(deliver.pid) as sampled:
            started = time.perf_counter()
            reply = lmtp_send(deliver.port, to, data)
            seconds = time.perf_counter() - started
        peak = proc_status(deliver.pid, "VmHWM")
    finally:
        deliver.stop()
    memory = Memory(target, len(data), baseline, peak, sampled[0], seconds, reply, stored())
    print(f"  50 MB into {target}: {reply}; peak {memory.ratio:.2f}x above baseline "
          f"in {seconds:.1f}s", flush=True)
    return memory


# --- output --------------------------------------------------------------------

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
    sub = parser.add_subparsers(dest="child")
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "_bare":
        asyncio.run(_serve_bare(args.port))
        return 0
    if args.child == "_fake":
        asyncio.run(_serve_fake(args.path))
        return 0
    if args.child == "_append":
        asyncio.run(_append_load(args.path, args.token_file, args.users.split(","),
                                 args.concurrency, args.count, args.size))
        return 0
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
