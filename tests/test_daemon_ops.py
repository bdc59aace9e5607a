"""pymap-deliver run as an operator runs it, against a real pymap: SIGHUP
with a changed config file during a DATA transfer, metrics scraped while
delivering, logfmt lines (journald flavour) that a parser reads back."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from devstack.localpymap import DEMO_USER, PymapServer, free_port
from pymap_deliver.logfmt import parse

from .lmtp_client import LMTPClient, dot_stuff
from .test_daemon_process import Notifications

DELIVER = str(Path(sys.executable).parent / "pymap-deliver")


class Daemon:
    def __init__(self, process: asyncio.subprocess.Process, log: Path, port: int,
                 notifications: Notifications) -> None:
        self.process = process
        self.log_path = log
        self.port = port
        self.notifications = notifications

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[dict[str, str]]:
        return [parse(line) for line in self.log.splitlines()]

    async def wait_for_line(self, pattern: str, count: int = 1) -> str:
        for _ in range(600):
            text = self.log
            if len(re.findall(pattern, text)) >= count:
                return text
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the log:\n{self.log}")

    async def client(self) -> LMTPClient:
        client = await LMTPClient.tcp("127.0.0.1", self.port)
        assert (await client.start()).code == 250
        return client


@asynccontextmanager
async def daemon(pymap: PymapServer | None, tmp_path: Path, *argv: str,
                 env: dict[str, str] | None = None) -> AsyncIterator[Daemon]:
    """pymap-deliver on a free port, connected to ``pymap`` (None: as its
    config file says), with ``env`` added to its environment."""
    port = free_port()
    if pymap is not None:
        argv = ("--path", str(pymap.socket_path), "--token-file", str(pymap.token_path), *argv)
    notifications = Notifications(tmp_path)
    log = tmp_path / "deliver.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            DELIVER, "--listen", f"127.0.0.1:{port}", "--allow-root", *argv,
            stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {}), "NOTIFY_SOCKET": str(notifications.path)})
    try:
        await asyncio.to_thread(notifications.wait_for, "READY=1")
        yield Daemon(process, log, port, notifications)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0, log.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        notifications.sock.close()


def message(tag: str) -> bytes:
    return (f"From: s@example.com\r\nSubject: {tag}\r\nMessage-ID: <{tag}@example.com>\r\n"
            f"\r\n" + "a line of the body\r\n" * 200).encode()


async def test_hup_applies_a_changed_config_without_dropping_a_session_in_data(
        pymap: PymapServer, tmp_path: Path) -> None:
    conf = tmp_path / "pymap-deliver.conf"
    conf.write_text("[lmtp]\nhostname = before.test\nmax_recipients = 5\n"
                    "[pymap]\ntimeout = 30\n")
    tag = uuid.uuid4().hex
    async with daemon(pymap, tmp_path, "--config", str(conf)) as agent:
        old = await agent.client()
        assert old.greeting is not None and "before.test" in old.greeting.text
        assert (await old.command("MAIL FROM:<s@example.com>")).code == 250
        assert (await old.command(f"RCPT TO:<{DEMO_USER}>")).code == 250
        assert (await old.command("DATA")).code == 354
        data = dot_stuff(message(tag))
        await old.send(data[:len(data) // 2])

        # Mid-DATA: a new config file, and SIGHUP.
        conf.write_text("[lmtp]\nhostname = after.test\nmax_recipients = 1\n"
                        "[pymap]\ntimeout = 20\n")
        agent.process.send_signal(signal.SIGHUP)
        text = await agent.wait_for_line(
            r"msg=reloaded .*changed=hostname,max_recipients,timeout")
        # A new pymap connection setting: a new client for calls from now on.
        assert 'msg="pymap connection replaced"' in text, text
        assert "not applied" not in text, text
        new = await agent.client()
        assert new.greeting is not None and "after.test" in new.greeting.text
        assert (await new.command("MAIL FROM:<s@example.com>")).code == 250
        assert (await new.command(f"RCPT TO:<{DEMO_USER}>")).code == 250
        assert (await new.command(f"RCPT TO:<{DEMO_USER}>")).code == 452  # now 1 at most

        # The session in DATA was kept, with its own settings.
        await old.send(data[len(data) // 2:] + b".\r\n")
        reply = await old.read_reply()
        assert reply.code == 250, reply
        await old.quit()

        # An invalid file: said why, in one line naming the line; old config kept.
        conf.write_text("[lmtp]\nhostname = broken.test\nmax_sise = 1\n")
        agent.process.send_signal(signal.SIGHUP)
        text = await agent.wait_for_line(r"msg=\"reload failed")
        assert "line 3: unknown key 'max_sise' in [lmtp]" in text
        third = await agent.client()
        assert third.greeting is not None and "after.test" in third.greeting.text
        await third.quit()
        await new.close()
    stored = [m for m in await asyncio.to_thread(pymap.fetch_all) if tag.encode() in m]
    assert len(stored) == 1


async def deliver(agent: Daemon, tag: str) -> None:
    client = await agent.client()
    rcpt, data = await client.transaction("s@example.com", [DEMO_USER], message(tag))
    assert [reply.code for reply in rcpt + data] == [250, 250], (rcpt, data)
    await client.quit()


async def test_hup_with_another_pymap_delivers_there_from_then_on(
        pymap: PymapServer, fresh_pymap: PymapServer, tmp_path: Path) -> None:
    def connect_to(server: PymapServer) -> None:
        conf.write_text(f"[pymap]\npath = {server.socket_path}\n"
                        f"token_file = {server.token_path}\ntimeout = 5\n")

    conf = tmp_path / "pymap-deliver.conf"
    connect_to(pymap)
    before, after = uuid.uuid4().hex, uuid.uuid4().hex
    async with daemon(None, tmp_path, "--config", str(conf)) as agent:
        await deliver(agent, before)
        connect_to(fresh_pymap)
        agent.process.send_signal(signal.SIGHUP)
        text = await agent.wait_for_line(r"msg=reloaded .*changed=path,token_file")
        assert re.search(r'msg="pymap connection replaced" pymap=\S*'
                         + re.escape(str(fresh_pymap.socket_path)), text), text
        await deliver(agent, after)
        # The new pymap was probed and said so, as at start-up.
        await agent.wait_for_line(r"msg=\"pymap reachable\"", count=2)

    def tags(server: PymapServer) -> set[str]:
        return {tag for tag in (before, after) for m in server.fetch_all() if tag.encode() in m}

    assert await asyncio.to_thread(tags, pymap) == {before}
    assert await asyncio.to_thread(tags, fresh_pymap) == {after}


#: A stand-in for DNS in the daemon's process (loaded by site from
#: PYTHONPATH): the addresses of pymap.test are the words of a file the test
#: rewrites; none is a failed lookup.
_RESOLVER = """
import os
import socket

_resolve = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    if host != "pymap.test":
        return _resolve(host, *args, **kwargs)
    with open(os.environ["TEST_PYMAP_ADDRESSES"]) as addresses:
        found = addresses.read().split()
    if not found:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return [info for address in found for info in _resolve(address, *args, **kwargs)]


socket.getaddrinfo = getaddrinfo
"""


async def test_a_names_addresses_are_looked_up_again_and_followed(tmp_path: Path) -> None:
    """``all_addresses`` with a name that moves from one pymap (127.0.0.1)
    to another (127.0.0.2, same port; TLS checks the name on both): after
    the next lookup, mail goes to the new one; a lookup that fails keeps the
    members. Both pymaps, the daemon and IMAP are real; the name's addresses
    come from a stand-in resolver in the daemon's process."""
    from devstack.localpymap import cleanup

    from .conftest import certificate_for, require_pymap

    require_pymap()
    files = certificate_for(tmp_path, "pymap.test")
    port = free_port()
    first, second = (PymapServer(workdir=tmp_path / f"pymap{n}", tls=files,
                                 admin_host=f"127.0.0.{n}", admin_port=port) for n in (1, 2))
    resolver = tmp_path / "resolver"
    resolver.mkdir()
    (resolver / "sitecustomize.py").write_text(_RESOLVER)
    addresses = tmp_path / "addresses"
    addresses.write_text("127.0.0.1\n")
    token = tmp_path / "admin.token"
    conf = tmp_path / "pymap-deliver.conf"
    conf.write_text(f"[pymap]\nhost = pymap.test\nport = {port}\nall_addresses = yes\n"
                    f"cafile = {files.ca}\ntoken_file = {token}\ntoken_cache = none\n"
                    "timeout = 10\nresolve_interval = 1\n")
    env = {"PYTHONPATH": str(resolver), "TEST_PYMAP_ADDRESSES": str(addresses)}
    tags = [uuid.uuid4().hex for _ in range(3)]
    try:
        first.start()
        second.start()
        token.write_text(first.token())
        async with daemon(None, tmp_path, "--config", str(conf), env=env) as agent:
            await deliver(agent, tags[0])
            # The name moves (and the admin token with it).
            token.write_text(second.token())
            addresses.write_text("127.0.0.2\n")
            text = await agent.wait_for_line(r'msg="pymap addresses changed"')
            assert re.search(rf"before=\S*127\.0\.0\.1:{port}.*after=\S*127\.0\.0\.2:{port}",
                             text), text
            await deliver(agent, tags[1])
            # DNS fails: the members stay, said once.
            addresses.write_text("")
            await agent.wait_for_line(r'msg="pymap name not resolved: keeping its last')
            await deliver(agent, tags[2])
            addresses.write_text("127.0.0.2\n")
            text = await agent.wait_for_line(r'msg="pymap name resolved again"')
            assert text.count("pymap name not resolved") == 1
            assert text.count("pymap addresses changed") == 1

        def stored(server: PymapServer) -> list[str]:
            mail = server.fetch_all()
            return [tag for tag in tags if any(tag.encode() in m for m in mail)]

        assert await asyncio.to_thread(stored, first) == tags[:1]
        assert await asyncio.to_thread(stored, second) == tags[1:]
    finally:
        cleanup(first)
        cleanup(second)


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_and_healthz_scraped_while_delivering(pymap: PymapServer,
                                                            tmp_path: Path) -> None:
    metrics_port = free_port()
    async with daemon(pymap, tmp_path, "--metrics", f"127.0.0.1:{metrics_port}") as agent:
        assert await asyncio.to_thread(scrape, metrics_port, "/healthz") == (
            200, "serving, pymap reachable\n")
        before = samples((await asyncio.to_thread(scrape, metrics_port))[1])
        assert before[("pymap_deliver_pymap_reachable", ())] == 1

        sizes: list[int] = []

        async def deliver(n: int) -> None:
            client = await agent.client()
            data = message(f"m{n}-{uuid.uuid4().hex}")
            sizes.append(len(data))
            rcpt, replies = await client.transaction(
                "s@example.com", [DEMO_USER, "nobody@nowhere.test"], data)
            assert [r.code for r in rcpt] == [250, 550]
            assert [r.code for r in replies] == [250]
            await client.quit()

        scrapes: list[str] = []

        async def keep_scraping(done: asyncio.Event) -> None:
            while not done.is_set():
                scrapes.append((await asyncio.to_thread(scrape, metrics_port))[1])

        done = asyncio.Event()
        scraper = asyncio.create_task(keep_scraping(done))
        await asyncio.gather(*(deliver(n) for n in range(6)))
        done.set()
        await scraper
        assert scrapes, "no scrape completed while delivering"
        after = samples((await asyncio.to_thread(scrape, metrics_port))[1])
    assert after[("pymap_deliver_deliveries_total", (("status", "2xx"),))] == 6
    assert after[("pymap_deliver_rcpt_lookups_total", (("result", "miss"),))] == 6
    assert after[("pymap_deliver_rcpt_lookups_total", (("result", "hit"),))] == 6
    assert after[("pymap_deliver_delivery_seconds_count", ())] == 6
    assert after[("pymap_deliver_delivery_seconds_bucket", (("le", "+Inf"),))] == 6
    assert after[("pymap_deliver_received_bytes_total", ())] == sum(sizes)
    assert after[("pymap_deliver_sessions_total", ())] >= 6
    assert after[("pymap_deliver_sessions_open", ())] >= 0
    assert after[("pymap_deliver_calls_in_flight", ())] == 0
    assert after[("pymap_deliver_token_reads_total", ())] >= 1
    assert after[("pymap_deliver_token_mints_total", ())] >= 1
    assert ("pymap_deliver_sessions_refused_total", ()) in after


async def test_healthz_says_unreachable_when_pymap_is_not_there(tmp_path: Path) -> None:
    metrics_port = free_port()
    absent = PymapServer(workdir=tmp_path / "never-started")
    token = tmp_path / "token"
    token.write_text("not-a-real-token\n")
    async with daemon(absent, tmp_path, "--metrics", f"127.0.0.1:{metrics_port}",
                      "--token-file", str(token)) as agent:
        status, text = await asyncio.to_thread(scrape, metrics_port, "/healthz")
        assert (status, text) == (503, "serving, pymap unreachable\n")
        assert samples((await asyncio.to_thread(scrape, metrics_port))[1])[
            ("pymap_deliver_pymap_reachable", ())] == 0
        assert "msg=\"pymap unreachable" in agent.log


async def test_journald_lines_carry_priorities_and_parse_as_logfmt(
        pymap: PymapServer, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    async with daemon(pymap, tmp_path, "--log-target", "journald") as agent:
        client = await agent.client()
        rcpt, replies = await client.transaction(
            "s@example.com", [DEMO_USER, "nobody@nowhere.test"], message(tag))
        await client.quit()
        agent.process.send_signal(signal.SIGUSR1)
        await agent.wait_for_line(r"msg=status ")
        await agent.wait_for_line(r"msg=\"session closed\"|msg=closed")
    lines = agent.log.splitlines()
    assert lines and all(re.match(r"<[0-7]>level=\w+ ", line) for line in lines), lines
    priorities = {parse(line[3:])["level"]: line[1] for line in lines}
    assert priorities["info"] == "6"
    delivered = [parse(line[3:]) for line in lines if "msg=delivered" in line]
    assert len(delivered) == 1
    entry = delivered[0]
    queue_id = entry["id"]
    assert replies[0].lines[0] == f"2.0.0 Message delivered {queue_id}"
    assert entry["session"] == queue_id.split(".")[0]
    assert entry["from"] == "<s@example.com>" and entry["rcpt"] == f"<{DEMO_USER}>"
    assert entry["msgid"] == f"<{tag}@example.com>"
    assert entry["size"] == str(len(message(tag)))
    assert entry["status"] == f"250 2.0.0 Message delivered {queue_id}"
    assert entry["mailbox"] == "INBOX" and entry["uid"].isdigit() and entry["ms"].isdigit()
    # Every line of the session names it, the RCPT refusal included.
    session_lines = [parse(line[3:]) for line in lines if f"session={entry['session']}" in line]
    refusal = [p for p in session_lines if p.get("rcpt") == "<nobody@nowhere.test>"]
    assert refusal and refusal[0].get("from") == "<s@example.com>", session_lines
    assert rcpt[1].code == 550
    status = next(parse(line[3:]) for line in lines if "msg=status" in line)
    assert status["pymap_reachable"] == "yes" and status["delivered"] == "1"
    stored = [m for m in await asyncio.to_thread(pymap.fetch_all) if tag.encode() in m]
    assert f" id {queue_id}\r\n".encode() in stored[0]


def test_syslog_target_writes_to_the_log_socket(tmp_path: Path) -> None:
    import logging
    import socket

    from pymap_deliver.logfmt import configure, event

    address = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(str(address))
        sink.settimeout(10)
        root = logging.getLogger()
        saved = root.handlers[:], root.level
        try:
            configure(logging.INFO, target="syslog", syslog_address=str(address))
            logging.getLogger("pymap_deliver.test").warning(
                event("disk full", path="/var/mail x"))
            datagram = sink.recv(4096).decode()
        finally:
            for handler in root.handlers[:]:
                root.removeHandler(handler)
                handler.close()
            for handler in saved[0]:
                root.addHandler(handler)
            root.setLevel(saved[1])
    # <facility mail (2) * 8 + warning (4)> = <20>, the tag, then logfmt.
    assert re.fullmatch(r'<20>pymap-deliver\[\d+\]: level=warning logger=pymap_deliver.test '
                        r'msg="disk full" path="/var/mail x"\x00?', datagram), datagram


@pytest.mark.parametrize(("value", "quoted"), [
    ("plain", "plain"), ("two words", '"two words"'), ('say "hi"', r'"say \"hi\""'),
    ("a=b", '"a=b"'), ("", '""'), ("line\nbreak", r'"line\nbreak"'), ("tab\there", r'"tab\there"'),
    ("bell\x07", r'"bell\x07"'), ("back\\slash", r'"back\\slash"'), ("<a@b>", "<a@b>"),
])
def test_logfmt_quoting_round_trips(value: str, quoted: str) -> None:
    from pymap_deliver.logfmt import quote

    assert quote(value) == quoted
    assert parse(f"k={quoted} next=1") == {"k": value, "next": "1"}



async def test_hup_reopens_the_log_file(tmp_path: Path) -> None:
    absent = PymapServer(workdir=tmp_path / "never-started")
    token = tmp_path / "token"
    token.write_text("not-a-real-token\n")
    log_file = tmp_path / "pymap-deliver.log"
    async with daemon(absent, tmp_path, "--token-file", str(token),
                      "--log-file", str(log_file)) as agent:
        assert "msg=listening" in log_file.read_text()
        log_file.rename(tmp_path / "pymap-deliver.log.1")  # what logrotate does
        agent.process.send_signal(signal.SIGHUP)
        for _ in range(600):
            if log_file.exists() and "msg=reloaded" in log_file.read_text():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no new log file after SIGHUP")
    assert "msg=reloaded" not in (tmp_path / "pymap-deliver.log.1").read_text()
    assert "msg=stopping" in log_file.read_text()
