"""Soak: pymap-deliver under mixed load for a long time, with pymap restarts.

A real pymap (maildir, so that mail survives its restarts) and the real
``pymap-deliver`` program. Concurrent LMTP clients run a mix of
transactions for ``--minutes``:

* deliveries to one to three known users (some sessions reused for several
  transactions), now and then with an unknown user among them;
* unknown users only;
* resets: the client vanishes with a TCP reset after RCPT, in the middle of
  the data, or right after the final dot (before the replies);
* oversize messages, declared with SIZE= and undeclared;

and pymap is restarted every ``--restart-every`` minutes.

At the end, every mailbox is read back over IMAP. Reported: transactions and
recipients accepted (250), stored, lost (accepted but not stored), duplicated
(stored more often than accepted), deferred yet stored (would duplicate on
the MTA's retry: at-least-once delivery); peak RSS and the RSS over time,
open file descriptors and LMTP sessions left once the load has stopped.

Goal (the Reliability issue): 0 lost, 0 sessions left, RSS flat after the
first minute.

Run: ``flock /work/bench.lock .venv/bin/python -m benchmarks.soak --minutes 30``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devstack.localpymap import PymapServer, free_port, make_maildir_server, pymap_executable
from pymap_admin import AdminClient, ConnectionSettings

REPO = Path(__file__).resolve().parent.parent
USERS = [f"soak{n}" for n in range(8)]
PASSWORD = "pw"
MAX_SIZE = 256 * 1024
REPLY_TIMEOUT = 120.0


@dataclass
class Tally:
    transactions: Counter[str] = field(default_factory=Counter)
    #: (tag, user) -> number of 250s for that user in that transaction
    accepted: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: (tag, user) pairs answered 4xx after the data
    deferred: set[tuple[str, str]] = field(default_factory=set)
    #: tags whose fate the client never learned (reset after the dot)
    unknown_fate: set[str] = field(default_factory=set)
    replies: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Session:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        session = cls(reader, writer)
        greeting = await session.reply()
        if not greeting.startswith("220"):
            raise ConnectionError(f"greeting {greeting!r}")
        await session.send(b"LHLO soak.example\r\n")
        lhlo = await session.reply()
        if not lhlo.startswith("250"):
            raise ConnectionError(f"LHLO {lhlo!r}")
        return session

    async def reply(self) -> str:
        while True:
            line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), REPLY_TIMEOUT)
            if line[3:4] != b"-":
                return line.decode("utf-8", "replace").rstrip()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: str) -> str:
        await self.send(line.encode() + b"\r\n")
        return await self.reply()

    def reset(self) -> None:
        sock = self.writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.command("QUIT"), 10)
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def message(tag: str, size: int) -> bytes:
    head = (f"From: <load@example.com>\r\nSubject: soak {tag}\r\n"
            f"Message-Id: <{tag}@soak.example>\r\n\r\n").encode()
    line = b"soak soak soak soak soak soak soak soak soak soak soak soak soak\r\n"
    return head + line * max(1, size // len(line))


async def transaction(session: Session, tally: Tally, rng: random.Random) -> bool:
    """One transaction of a random kind; False when the session is gone."""
    kind = rng.choices(["deliver", "unknown", "reset-rcpt", "reset-data", "reset-dot",
                        "oversize-declared", "oversize"], [60, 8, 5, 5, 5, 4, 4])[0]
    tally.transactions[kind] += 1
    tag = uuid.uuid4().hex
    if kind == "unknown":
        users = [f"nobody-{rng.randrange(10**6)}"]
    else:
        users = rng.sample(USERS, rng.randint(1, 3))
        if kind == "deliver" and rng.random() < 0.2:
            users.append(f"nobody-{rng.randrange(10**6)}")
    size = rng.randint(500, 20_000)
    if kind.startswith("oversize"):
        size = MAX_SIZE + rng.randint(1, 100_000)
    data = message(tag, size)
    mail = "MAIL FROM:<load@example.com>" + (
        f" SIZE={len(data)}" if kind == "oversize-declared" else "")
    reply = await session.command(mail)
    tally.replies["MAIL " + reply[:3]] += 1
    if not reply.startswith("250"):
        await session.command("RSET")
        return not reply.startswith("421")
    accepted: list[str] = []
    for user in users:
        reply = await session.command(f"RCPT TO:<{user}>")
        tally.replies["RCPT " + reply[:3]] += 1
        if reply.startswith("421"):
            return False
        if reply.startswith("250"):
            accepted.append(user)
    if kind == "reset-rcpt":
        session.reset()
        return False
    if not accepted:
        await session.command("RSET")
        return True
    reply = await session.command("DATA")
    if not reply.startswith("354"):
        tally.replies["DATA " + reply[:3]] += 1
        return not reply.startswith("421")
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if kind == "reset-data":
        await session.send(stuffed[:len(stuffed) // 2])
        session.reset()
        return False
    await session.send(stuffed + b".\r\n")
    if kind == "reset-dot":
        tally.unknown_fate.add(tag)
        session.reset()
        return False
    for user in accepted:
        reply = await session.reply()
        tally.replies["after-dot " + reply[:3]] += 1
        if reply.startswith("250"):
            tally.accepted[(tag, user)] += 1
        elif reply.startswith("4"):
            tally.deferred.add((tag, user))
    return True


async def client_loop(port: int, tally: Tally, deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        try:
            session = await Session.open(port)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            tally.errors[f"connect {type(exc).__name__}"] += 1
            await asyncio.sleep(0.5)
            continue
        alive = True
        try:
            for _ in range(rng.randint(1, 5)):
                if time.monotonic() >= deadline or not alive:
                    break
                alive = await transaction(session, tally, rng)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            tally.errors[type(exc).__name__] += 1
            alive = False
        if alive:
            await session.close()
        else:
            session.writer.transport.abort()


def proc_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def established(port: int) -> int:
    """TCP connections to the LMTP port still established (server side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    count += 1
    return count


def stored_tags(server: PymapServer, user: str) -> Counter[str]:
    """Subject tags of every message of ``user``, over IMAP."""
    conn = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=120)
    try:
        conn.login(user, PASSWORD)
        _, count = conn.select("INBOX", readonly=True)
        tags: Counter[str] = Counter()
        if not count or count[0] in (None, b"0"):
            return tags
        status, data = conn.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        if status != "OK":
            raise RuntimeError(f"FETCH failed for {user}: {data!r}")
        for part in data:
            if isinstance(part, tuple):
                text = part[1].decode("utf-8", "replace")
                if "soak " in text:
                    tags[text.split("soak ", 1)[1].split()[0]] += 1
        return tags
    finally:
        with contextlib.suppress(Exception):
            conn.logout()


async def create_users(server: PymapServer) -> None:
    settings = ConnectionSettings(path=server.socket_path, token_file=server.token_path)
    async with AdminClient(settings) as client:
        for user in USERS:
            await client.set_user(user, password=PASSWORD)


async def run_load(port: int, clients: int, seconds: float, server: PymapServer,
                   restart_every: float, pid: int, rss: list[tuple[float, int]],
                   tally: Tally) -> int:
    started = time.monotonic()
    deadline = started + seconds
    tasks = [asyncio.create_task(client_loop(port, tally, deadline, seed))
             for seed in range(clients)]
    restarts = 0
    next_restart = started + restart_every
    next_sample = started
    while not all(task.done() for task in tasks):
        now = time.monotonic()
        if now >= next_sample:
            rss.append((now - started, proc_kb(pid, "VmRSS")))
            next_sample += 10
        if now >= next_restart and now < deadline:
            await asyncio.to_thread(server.restart)
            restarts += 1
            next_restart += restart_every
            print(f"  {now - started:6.0f}s pymap restarted ({restarts}); "
                  f"{sum(tally.accepted.values())} recipients accepted so far; "
                  f"pymap-deliver RSS {rss[-1][1] / 1024:.1f} MiB", flush=True)
        await asyncio.sleep(1)
    return restarts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="soak pymap-deliver under mixed load")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--restart-every", type=float, default=5.0, metavar="MINUTES")
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if pymap_executable() is None:
        print("pymap is not installed (make pymap-venv)", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    server = make_maildir_server(workdir / "pymap")
    server.start()
    deliver: subprocess.Popen[bytes] | None = None
    try:
        asyncio.run(create_users(server))
        port = free_port()
        log = (workdir / "deliver.log").open("wb")
        deliver = subprocess.Popen(
            [str(Path(sys.executable).parent / "pymap-deliver"), "--listen",
             f"127.0.0.1:{port}", "--hostname", "soak.example", "--allow-root",
             "--path", str(server.socket_path), "--token-file", str(server.token_path),
             "--max-size", str(MAX_SIZE), "--idle-timeout", "60", "--log-level", "WARNING"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=REPO)
        for _ in range(200):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            time.sleep(0.05)
        print(f"soak: {args.minutes} min, {args.clients} clients, pymap restart every "
              f"{args.restart_every} min (machine shared)", flush=True)
        rss: list[tuple[float, int]] = []
        tally = Tally()
        restarts = asyncio.run(run_load(port, args.clients, args.minutes * 60, server,
                                        args.restart_every * 60, deliver.pid, rss, tally))
        time.sleep(2)  # sessions the clients reset are noticed by now
        sessions_left = established(port)
        fds = len(list(Path(f"/proc/{deliver.pid}/fd").iterdir()))
        peak = proc_kb(deliver.pid, "VmHWM")
        deliver.send_signal(signal.SIGTERM)
        exit_status = deliver.wait(60)
        stored: dict[str, Counter[str]] = {user: stored_tags(server, user) for user in USERS}
    finally:
        if deliver is not None and deliver.poll() is None:
            deliver.kill()
        server.stop()
    accepted = sum(tally.accepted.values())
    lost = sum(1 for (tag, user), n in tally.accepted.items() if stored[user][tag] < n)
    stored_ok = sum(min(stored[user][tag], n) for (tag, user), n in tally.accepted.items())
    duplicated = sum(1 for (tag, user), n in tally.accepted.items() if stored[user][tag] > n)
    deferred_stored = sum(1 for tag, user in tally.deferred if stored[user][tag])
    unknown_stored = sum(1 for user in USERS for tag in stored[user]
                         if tag in tally.unknown_fate)
    first_minute = [kb for t, kb in rss if t >= 60] or [kb for _, kb in rss]
    print("\nresults")
    print(f"  transactions          {sum(tally.transactions.values())} "
          f"{dict(tally.transactions)}")
    print(f"  recipients accepted   {accepted}")
    print(f"  stored                {stored_ok}")
    print(f"  lost                  {lost}")
    print(f"  duplicated            {duplicated}")
    print(f"  deferred (4xx)        {len(tally.deferred)}, of which stored anyway: "
          f"{deferred_stored} (would duplicate on retry)")
    print(f"  reset after the dot   {len(tally.unknown_fate)} transactions, "
          f"{unknown_stored} copies stored")
    print(f"  replies               {dict(sorted(tally.replies.items()))}")
    print(f"  client-side errors    {dict(tally.errors)}")
    print(f"  pymap restarts        {restarts}")
    print(f"  peak RSS              {peak / 1024:.1f} MiB")
    print(f"  RSS after 1 min       {first_minute[0] / 1024:.1f} MiB, max after 1 min "
          f"{max(first_minute) / 1024:.1f} MiB, at the end {rss[-1][1] / 1024:.1f} MiB")
    print(f"  open fds at the end   {fds}")
    print(f"  sessions left open    {sessions_left}")
    print(f"  exit status on SIGTERM {exit_status}")
    if args.keep:
        print(f"  work directory        {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if lost or sessions_left or exit_status else 0


if __name__ == "__main__":
    sys.exit(main())
