"""The parts the LMTP benchmarks share: the server processes they start
(a :mod:`benchmarks.servers` child, the ``pymap-deliver`` command), the
``smtp-source`` load, samples and series measured against an anchor in the
same run, the test message and the IMAP read-back.

Nothing here asserts a time: a figure is a ratio to its anchor.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.localpymap import REPO, free_port

SMTP_SOURCE = "/usr/sbin/smtp-source"
SENDER = "load@example.com"
HOSTNAME = "bench.example"
DOMAIN = "example.com"


def make_message(size: int, *, to: str, subject: str) -> bytes:
    """A plain message of about ``size`` bytes of body in 78-byte lines,
    with the header smtp-source would send (CRLF line ends)."""
    head = (f"From: <{SENDER}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Message-Id: <{uuid.uuid4().hex}@{HOSTNAME}>\r\n"
            "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n").encode()
    line = b"La de da de da " * 5 + b"\r\n"  # 77 bytes
    body = line * (size // len(line)) + b"x" * (size % len(line))
    return head + body + (b"" if body.endswith(b"\r\n") else b"\r\n")



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

    @property
    def pid(self) -> int:
        return self.process.pid

    def delivered(self) -> int:
        """Recipients answered 250, from the per-recipient log lines."""
        text = self.log.read_text(errors="replace")
        # Plain and logfmt (quoted) forms of the per-recipient line.
        return text.count(" status=250 ") + text.count(' status="250 ')

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


