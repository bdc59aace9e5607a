"""pymap-deliver against a real pymap 0.36.7: replies per recipient, what lands
in the mailbox (read back over IMAP, byte for byte), and failures."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from devstack.localpymap import DEMO_USER, PymapServer, free_port
from pymap_admin import AdminClient
from pymap_deliver.delivery import DeliveryOptions, PymapBackend
from pymap_deliver.protocol import LMTPOptions
from pymap_deliver.recipients import RecipientRules
from pymap_deliver.server import DeliveryServer, ServerConfig, TcpEndpoint

from ._require import require_tool
from .conftest import create_user, socket_settings
from .lmtp_client import LMTPClient, tcp_port

HOST = "lmtp.test"


def unique(subject: str = "hello") -> tuple[str, bytes]:
    tag = uuid.uuid4().hex
    data = (f"From: s@example.com\r\nSubject: {subject}\r\nMessage-Id: <{tag}@t>\r\n\r\n"
            f"body {tag}\r\n.leading dot\r\n").encode()
    return tag, data


@asynccontextmanager
async def deliver_agent(server: PymapServer, **options: object
                        ) -> AsyncIterator[tuple[DeliveryServer, PymapBackend]]:
    async with AdminClient(socket_settings(server, timeout=10.0)) as client:
        backend = PymapBackend(client, DeliveryOptions(hostname=HOST, **options))  # type: ignore[arg-type]
        config = ServerConfig(tcp=[TcpEndpoint(port=0)], lmtp=LMTPOptions(hostname=HOST))
        agent = DeliveryServer(backend, config)
        async with agent:
            yield agent, backend


@asynccontextmanager
async def session(agent: DeliveryServer) -> AsyncIterator[LMTPClient]:
    client = await LMTPClient.tcp("127.0.0.1", tcp_port(agent))
    try:
        assert (await client.start()).code == 250
        yield client
    finally:
        await client.close()


def find(messages: list[bytes], tag: str) -> list[bytes]:
    return [m for m in messages if tag.encode() in m]


def split_trace(stored: bytes) -> tuple[dict[str, str], bytes]:
    """The three prepended headers and the rest."""
    lines = stored.split(b"\r\n")
    assert lines[0].startswith(b"Return-Path: ")
    assert lines[1].startswith(b"Delivered-To: ")
    assert lines[2].startswith(b"Received: ")
    end = 3
    while lines[end].startswith((b"\t", b" ")):
        end += 1
    headers = {"Return-Path": lines[0][13:].decode(), "Delivered-To": lines[1][14:].decode(),
               "Received": b" ".join(lines[2:end]).decode()}
    return headers, b"\r\n".join(lines[end:])


async def test_multi_recipient_each_gets_its_own_copy(pymap: PymapServer) -> None:
    other = f"o{uuid.uuid4().hex[:6]}@example.com"
    await create_user(pymap, other)
    tag, data = unique()
    async with deliver_agent(pymap) as (agent, _), session(agent) as lmtp:
        rcpt, replies = await lmtp.transaction(
            "sender@example.org", [DEMO_USER, "nobody@nowhere.test", other.upper(), DEMO_USER],
            data)
    assert [r.code for r in rcpt] == [250, 550, 550, 250]
    assert rcpt[1].lines[0].startswith("5.1.1")
    # Only the local part keeps its case: OTHER@EXAMPLE.COM is another user.
    # The reply names the message's id (session.serial), as Received: does.
    ids = [re.fullmatch(r"250 2\.0\.0 Message delivered ([0-9a-f]+\.\d+)", str(r))
           for r in replies]
    assert all(ids), replies
    inbox = find(pymap.fetch_all(), tag)
    assert len(inbox) == 2  # a duplicate RCPT is its own delivery
    for stored in inbox:
        headers, rest = split_trace(stored)
        assert headers["Return-Path"] == "<sender@example.org>"
        assert headers["Delivered-To"] == DEMO_USER
        assert "with LMTP id" in headers["Received"]
        assert f"for <{DEMO_USER}>" in headers["Received"]
        assert rest == data  # the message itself, byte for byte (dot-unstuffed)


async def test_delivered_to_is_right_per_recipient(pymap: PymapServer) -> None:
    users = [f"m{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(3)]
    for user in users:
        await create_user(pymap, user)
    tag, data = unique()
    async with deliver_agent(pymap) as (agent, _), session(agent) as lmtp:
        _, replies = await lmtp.transaction("", users, data)
    assert [r.code for r in replies] == [250, 250, 250]
    for user in users:
        (stored,) = find(pymap.fetch_all(user=user, password="pw"), tag)
        headers, rest = split_trace(stored)
        assert headers["Delivered-To"] == user
        assert headers["Return-Path"] == "<>"
        assert rest == data


async def test_sieve_outcomes_and_mailboxes(pymap: PymapServer) -> None:
    rules = RecipientRules(delimiter="+", detail_mailbox=True)
    reject_tag, reject = unique("reject this")
    discard_tag, discard = unique("discard this")
    sent_tag, to_sent = unique("to sent")
    fallback_tag, fallback = unique("to a folder that does not exist")
    async with deliver_agent(pymap, rules=rules) as (agent, _), session(agent) as lmtp:
        _, rejected = await lmtp.transaction("a@example.com", [DEMO_USER], reject)
        _, discarded = await lmtp.transaction("a@example.com", [DEMO_USER], discard)
        _, sent = await lmtp.transaction("a@example.com", [f"{DEMO_USER}+Sent"], to_sent)
        _, fell_back = await lmtp.transaction("a@example.com", [f"{DEMO_USER}+NoSuch"],
                                              fallback)
    assert str(rejected[0]) == "550 5.7.1 message rejected"
    assert discarded[0].code == 250
    assert sent[0].code == 250
    assert fell_back[0].code == 250
    inbox = pymap.fetch_all()
    assert not find(inbox, reject_tag)
    assert not find(inbox, discard_tag)
    assert len(find(inbox, fallback_tag)) == 1
    assert len(find(pymap.fetch_all("Sent"), sent_tag)) == 1


async def test_unchecked_recipients_fail_after_data(pymap: PymapServer) -> None:
    tag, data = unique()
    async with deliver_agent(pymap, check_recipients=False) as (agent, _), \
            session(agent) as lmtp:
        rcpt, replies = await lmtp.transaction("a@b.c", ["ghost@example.com", DEMO_USER], data)
    assert [r.code for r in rcpt] == [250, 250]
    assert str(replies[0]) == "550 5.1.1 User unknown"
    assert replies[1].code == 250
    assert len(find(pymap.fetch_all(), tag)) == 1


async def test_server_down_gives_4xx_at_rcpt_and_at_data(fresh_pymap: PymapServer) -> None:
    _, data = unique()
    async with deliver_agent(fresh_pymap) as (agent, _):
        await asyncio.to_thread(fresh_pymap.stop)
        async with session(agent) as lmtp:
            rcpt, _ = await lmtp.transaction("a@b.c", [DEMO_USER], data)
            assert str(rcpt[0]) == "451 4.4.1 Mail store unreachable"
    async with deliver_agent(fresh_pymap, check_recipients=False) as (agent, _), \
            session(agent) as lmtp:
        _, replies = await lmtp.transaction("a@b.c", [DEMO_USER, DEMO_USER], data)
        assert [str(r) for r in replies] == ["451 4.4.1 Mail store unreachable"] * 2


async def test_restart_of_pymap_is_survived(maildir_pymap: PymapServer) -> None:
    await create_user(maildir_pymap, "dana", "pw")
    before_tag, before = unique("before")
    after_tag, after = unique("after")
    async with deliver_agent(maildir_pymap) as (agent, _):
        async with session(agent) as lmtp:
            _, replies = await lmtp.transaction("a@b.c", ["dana"], before)
            assert replies[0].code == 250
        await asyncio.to_thread(maildir_pymap.restart)
        async with session(agent) as lmtp:
            _, replies = await lmtp.transaction("a@b.c", ["dana"], after)
            assert replies[0].code == 250
    stored = maildir_pymap.fetch_all(user="dana", password="pw")
    assert len(find(stored, before_tag)) == 1
    assert len(find(stored, after_tag)) == 1


async def test_stopping_pymap_mid_delivery_loses_nothing(maildir_pymap: PymapServer) -> None:
    """Every recipient gets a 250 or a 4xx; every 250 is in the mailbox after
    pymap is back; nothing is 5xx."""
    await create_user(maildir_pymap, "erin", "pw")

    async def one_session(n: int) -> list[tuple[str, int]]:
        results: list[tuple[str, int]] = []
        client = await LMTPClient.tcp("127.0.0.1", port)
        try:
            await client.start()
            for i in range(4):
                tag, data = unique(f"fault {n}-{i}")
                _, replies = await client.transaction("a@b.c", ["erin", "erin"], data)
                results.extend((tag, r.code) for r in replies)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await client.close()
        return results

    async with deliver_agent(maildir_pymap, check_recipients=False) as (agent, _):
        port = tcp_port(agent)
        sessions = [asyncio.create_task(one_session(n)) for n in range(8)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(maildir_pymap.kill)
        results = [r for task in sessions for r in await task]
    await asyncio.to_thread(maildir_pymap.start)
    codes = [code for _, code in results]
    assert codes, "no delivery was attempted"
    assert all(code == 250 or 400 <= code < 500 for code in codes), codes
    assert 250 in codes
    stored = maildir_pymap.fetch_all(user="erin", password="pw")
    for tag, code in results:
        if code == 250:
            assert find(stored, tag), f"acknowledged message {tag} is missing"


def test_pymap_deliver_command_serves_and_stops_on_sigterm(pymap: PymapServer,
                                                           tmp_path: Path) -> None:
    swaks = require_tool("swaks")
    port = free_port()
    log = tmp_path / "deliver.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "pymap-deliver"), "--listen", f"127.0.0.1:{port}",
             "--unix", str(tmp_path / "lmtp.sock"), "--hostname", HOST,
             "--path", str(pymap.socket_path), "--token-file", str(pymap.token_path),
             "--allow-root"],
            stdout=out, stderr=out, env={**os.environ})
    try:
        for _ in range(200):
            if (tmp_path / "lmtp.sock").exists():
                break
            if process.poll() is not None:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        tag = uuid.uuid4().hex
        for how in (["--server", "127.0.0.1", "--port", str(port)],
                    ["--socket", str(tmp_path / "lmtp.sock")]):
            done = subprocess.run(
                [swaks, "--protocol", "LMTP", *how, "--from", "s@example.com",
                 "--to", f"{DEMO_USER},nobody@example.com", "--header", f"Subject: {tag}",
                 "--helo", "client.test"],
                capture_output=True, text=True, timeout=60)
            assert "250 2.0.0 Message delivered" in done.stdout, done.stdout
            assert "550 5.1.1 User unknown" in done.stdout
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert re.search(rf"msg=delivered id=(\w+\.\d+) from=<s@example.com> msgid=\S+ "
                     rf"size=\d+ rcpt=<{DEMO_USER}> user={DEMO_USER} mailbox=INBOX uid=\d+ "
                     r'status="250 2\.0\.0 Message delivered \1" ms=\d+', text), text
    assert len(find(pymap.fetch_all(), tag)) == 2
    assert not (tmp_path / "lmtp.sock").exists()


def test_pymap_deliver_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "pymap-deliver"), "--listen", "127.0.0.1:0",
         "--path", str(tmp_path / "none.sock")],
        capture_output=True, text=True, timeout=60, env={**os.environ})
    assert done.returncode == 78
    assert "no admin token" in done.stderr
    assert "Traceback" not in done.stderr


async def test_smtp_source_many_sessions_into_real_pymap(pymap: PymapServer) -> None:
    smtp_source = require_tool("smtp-source", "/usr/sbin/smtp-source")
    tag = uuid.uuid4().hex
    base = f"r{tag[:8]}@example.com"
    # With -r 2, smtp-source numbers the extra recipients: 2<to>, then <to>.
    users = [base, f"2{base}"]
    for user in users:
        await create_user(pymap, user)
    async with deliver_agent(pymap) as (agent, _):
        process = await asyncio.create_subprocess_exec(
            smtp_source, "-L", "-s", "10", "-m", "40", "-r", "2", "-l", "2048",
            "-f", "load@example.com", "-t", base, "-S", tag,
            f"127.0.0.1:{tcp_port(agent)}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    for user in users:
        assert len(find(pymap.fetch_all(user=user, password="pw"), tag)) == 40
