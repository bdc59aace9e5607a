"""End to end: swaks -> a real postfix -> pymap-deliver or pymap-admin append
-> a real pymap, configured from contrib/postfix/, checked over IMAP."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.localpymap import DEMO_USER, PymapServer, TLSFiles, free_port
from pymap_admin import AdminClient

from ._require import require, require_tool
from .conftest import create_user, require_pymap, socket_settings, write_admin_config
from .postfix import PostfixInstance, postfix_available, render, stop_deliver

pytestmark = pytest.mark.postfix

USERS = ("alice", "bob")  # created next to the demo user; password "pw"
SENDER = "sender@mx.pymap.test"


def require_postfix() -> None:
    require(postfix_available(), "Debian's postfix is not installed (or not running as root)")
    require_tool("swaks")


@dataclass
class Agent:
    """A pymap-deliver process (the real command) in front of a pymap."""

    process: subprocess.Popen[bytes]
    tcp_port: int
    unix_path: Path
    log: Path

    def stop(self) -> int:
        return stop_deliver(self.process)


def start_agent(server: PymapServer, postfix: PostfixInstance, workdir: Path, port: int,
                *, local_part_only: bool = True) -> Agent:
    """pymap-deliver on TCP ``port`` and on the UNIX socket of main.cf.lmtp-unix."""
    unix_path = postfix.private / "pymap-deliver"
    unix_path.parent.mkdir(parents=True, exist_ok=True)
    log = workdir / "pymap-deliver.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "pymap-deliver"),
             "--unix", str(unix_path), "--unix-owner", "postfix", "--unix-mode", "0600",
             "--listen", f"127.0.0.1:{port}", "--hostname", "lmtp.test",
             *(["--local-part-only"] if local_part_only else []),
             "--path", str(server.socket_path), "--token-file", str(server.token_path),
             "--timeout", "10", "--allow-root"],
            stdout=out, stderr=out, env={**os.environ})
    deadline = time.monotonic() + 30
    while not unix_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("pymap-deliver did not start:\n" + log.read_text())
        time.sleep(0.05)
    return Agent(process, port, unix_path, log)


def run_swaks(postfix: PostfixInstance, to: str, subject: str, sender: str = SENDER
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(postfix.smtp_port), "--from", sender,
         "--to", to, "--header", f"Subject: {subject}", "--body", f"body of {subject}\n",
         "--helo", "client.pymap.test"],
        capture_output=True, text=True, timeout=60)


def swaks(postfix: PostfixInstance, to: str, subject: str, sender: str = SENDER) -> str:
    done = run_swaks(postfix, to, subject, sender)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def count(server: PymapServer, tag: str, user: str = DEMO_USER, mailbox: str = "INBOX") -> int:
    password = "demopass" if user == DEMO_USER else "pw"
    return sum(1 for m in server.fetch_all(mailbox, user=user, password=password)
               if tag.encode() in m)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # World-traversable, unlike pytest's tmp_path: postfix's daemons and the
    # pipe user must reach what is in here.
    path = Path(tempfile.mkdtemp(prefix="pymap-e2e-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def e2e_pymap(workdir: Path, tls_files: TLSFiles) -> Iterator[PymapServer]:
    require_postfix()
    require_pymap()
    server = PymapServer(workdir=workdir / "pymap", tls=tls_files)
    server.start()
    for user in USERS:
        asyncio.run(create_user(server, user))
    yield server
    server.stop()


def lmtp_postfix(kind: str, agent_port: int | None = None) -> PostfixInstance:
    if kind == "unix":
        # The contrib path is already the one a private instance uses:
        # relative to its own queue directory.
        main_cf = render("main.cf.lmtp-unix", {})
    else:
        assert agent_port is not None
        main_cf = render("main.cf.lmtp-tcp",
                         {"lmtp:inet:127.0.0.1:24": f"lmtp:inet:127.0.0.1:{agent_port}"})
    # Mail to any other domain fails at once instead of waiting for DNS.
    return PostfixInstance(main_cf + "\ndefault_transport = error:no mail leaves the test\n")


# --- pipe(8): pymap-admin append run by postfix as an unprivileged user ------

PIPE_USER = "nobody"


@pytest.fixture(scope="session")
def pipe_install(request: pytest.FixtureRequest) -> Path:
    """pymap-deliver installed where the pipe user can run it (conftest's
    unprivileged_install), once postfix is known to be here."""
    require_postfix()
    install: Path = request.getfixturevalue("unprivileged_install")
    return install


@dataclass
class PipeFiles:
    config: Path
    token: Path

    def install_token(self, server: PymapServer) -> None:
        """What contrib/systemd/pymap-admin-token.conf does after each pymap start."""
        shutil.copyfile(server.token_path, self.token)
        shutil.chown(self.token, PIPE_USER)
        self.token.chmod(0o600)


def pipe_files(server: PymapServer, tls: TLSFiles, workdir: Path) -> PipeFiles:
    folder = workdir / "pipe-etc"
    folder.mkdir(mode=0o755)
    ca = folder / "ca.pem"
    shutil.copyfile(tls.ca, ca)
    ca.chmod(0o644)
    files = PipeFiles(config=folder / "pymap-admin.conf", token=folder / "deliver.token")
    write_admin_config(files.config, port=server.admin_port, cafile=ca,
                       token_file=files.token, owner=PIPE_USER)
    files.install_token(server)
    return files


def pipe_postfix(install: Path, files: PipeFiles) -> PostfixInstance:
    master_cf = render("master.cf.pipe", {
        "user=pymap-deliver": f"user={PIPE_USER}",
        "/opt/pymap-deliver/bin/pymap-admin": str(install / "bin" / "pymap-admin"),
        "/etc/pymap/pymap-admin.conf": str(files.config),
    })
    main_cf = render("main.cf.pipe", {})
    return PostfixInstance(main_cf + "\ndefault_transport = error:no mail leaves the test\n",
                           master_cf_extra=master_cf)


@dataclass
class Stack:
    """postfix delivering into pymap through one of the contrib set-ups."""

    postfix: PostfixInstance
    pymap: PymapServer
    #: A maillog line of a successful delivery through this transport.
    sent: str
    #: What the operator's set-up does after pymap (re)starts.
    after_pymap_start: Callable[[], None] = lambda: None


@pytest.fixture(params=["lmtp-unix", "lmtp-tcp", "pipe"])
def stack(request: pytest.FixtureRequest, e2e_pymap: PymapServer, workdir: Path,
          tls_files: TLSFiles) -> Iterator[Stack]:
    kind: str = request.param
    agent: Agent | None = None
    if kind == "pipe":
        install: Path = request.getfixturevalue("pipe_install")
        files = pipe_files(e2e_pymap, tls_files, workdir)
        postfix = pipe_postfix(install, files)
        stack = Stack(postfix, e2e_pymap,
                      sent=r"relay=pymap.*status=sent \(delivered via pymap service",
                      after_pymap_start=lambda: files.install_token(e2e_pymap))
    else:
        port = free_port()
        postfix = lmtp_postfix(kind.removeprefix("lmtp-"), port)
        agent = start_agent(e2e_pymap, postfix, workdir, port)
        stack = Stack(postfix, e2e_pymap, sent=r"status=sent .*250 2\.0\.0 Message delivered")
    try:
        postfix.start()
        assert postfix.check_output() == ""
        yield stack
    finally:
        postfix.cleanup()
        if agent is not None:
            status = agent.stop()
            print(agent.log.read_text())  # shown by pytest when the test failed
            assert status == 0


def test_three_local_recipients_and_an_unknown_one(stack: Stack) -> None:
    postfix, pymap = stack.postfix, stack.pymap
    tag = uuid.uuid4().hex
    swaks(postfix, f"{DEMO_USER}@localhost,alice@localhost,bob@mx.pymap.test,"
                   "nosuchuser@localhost", tag)
    assert len(postfix.wait_for(stack.sent, 3)) == 3
    (bounced,) = postfix.wait_for(r"to=<nosuchuser@localhost>.*status=bounced", 1)
    # LMTP: the reply to RCPT; pipe(8): append's first line of output.
    assert "dsn=5.1.1" in bounced
    assert "User unknown" in bounced
    for user in (DEMO_USER, "alice", "bob"):
        assert count(pymap, tag, user) == 1
    (stored,) = [m for m in pymap.fetch_all(user="bob", password="pw") if tag.encode() in m]
    # The right Delivered-To for each recipient (pymap-deliver's own, or
    # postfix's pipe flags=DR), once, and CRLF line endings as IMAP wants.
    assert stored.startswith(b"Return-Path: <sender@mx.pymap.test>\r\n"
                             b"Delivered-To: bob@mx.pymap.test\r\n")
    assert stored.count(b"Delivered-To:") == 1
    assert stored.count(b"\n") == stored.count(b"\r\n")


def test_sieve_reject_bounces_with_the_reason(stack: Stack) -> None:
    postfix, pymap = stack.postfix, stack.pymap
    # The demo user's Sieve script rejects exactly this subject. The sender
    # is a local user, so the bounce comes back into pymap.
    swaks(postfix, f"{DEMO_USER}@localhost", "reject this", sender="alice@localhost")
    (line,) = postfix.wait_for(rf"to=<{DEMO_USER}@localhost>.*status=bounced", 1)
    assert "dsn=5.7.1" in line
    assert "message rejected" in line
    assert "status=deferred" not in postfix.log()
    postfix.wait_for(r"to=<alice@localhost>.*status=sent", 1)
    bounces = [m for m in pymap.fetch_all(user="alice", password="pw")
               if b"Undelivered Mail Returned to Sender" in m and b"message rejected" in m]
    assert len(bounces) == 1
    # A bounce has the null sender, and is stored with it: pymap-deliver
    # writes it so; pipe(8) does with null_sender= (else <MAILER-DAEMON>).
    assert bounces[0].startswith(b"Return-Path: <>\r\n"), bounces[0][:200]
    assert not [m for m in pymap.fetch_all() if b"Subject: reject this" in m]


def test_nothing_lost_while_pymap_is_down(stack: Stack) -> None:
    postfix, pymap = stack.postfix, stack.pymap
    tag = uuid.uuid4().hex
    pymap.stop()
    for i in range(20):
        swaks(postfix, f"{DEMO_USER}@localhost", f"{tag} {i}")
    deferred = postfix.wait_for(r"status=deferred", 20)
    assert all("dsn=4.4.1" in line for line in deferred), deferred[0]
    assert "status=bounced" not in postfix.log()
    assert len(postfix.queue_ids()) == 20
    pymap.start()  # dict backend: a fresh demo mailbox, and a new admin token
    stack.after_pymap_start()
    postfix.flush()
    postfix.wait_for(stack.sent, 20, timeout=120)
    assert count(pymap, tag) == 20
    assert postfix.queue_ids() == []


def test_mailbox_command_runs_as_the_recipient_with_its_own_token(
        e2e_pymap: PymapServer, tls_files: TLSFiles, workdir: Path, pipe_install: Path) -> None:
    """local(8) runs append as the system user "nobody", with a login token
    good for that pymap user only (what `pymap-admin login -s` saves)."""
    async def login() -> str:
        async with AdminClient(socket_settings(e2e_pymap)) as client:
            await client.set_user(PIPE_USER, password="pw")
            return (await client.login(PIPE_USER, password="pw")).bearer_token

    files = pipe_files(e2e_pymap, tls_files, workdir)
    files.token.write_text(asyncio.run(login()))
    main_cf = render("main.cf.mailbox-command", {
        "/opt/pymap-deliver/bin/pymap-admin":
            f"{pipe_install / 'bin' / 'pymap-admin'} --config {files.config}",
    })
    postfix = PostfixInstance(main_cf + "\nlocal_recipient_maps =\n"
                              "default_transport = error:no mail leaves the test\n")
    try:
        postfix.start()
        assert postfix.check_output() == ""
        tag = uuid.uuid4().hex
        swaks(postfix, f"{PIPE_USER}@localhost", tag)
        swaks(postfix, f"{DEMO_USER}@localhost", f"not for nobody {tag}")
        postfix.wait_for(rf"to=<{PIPE_USER}@localhost>.*status=sent", 1)
        (refused,) = postfix.wait_for(rf"to=<{DEMO_USER}@localhost>.*status=(bounced|deferred)")
    finally:
        postfix.cleanup()
    # The demo user has no system account: local(8) itself refuses it.
    assert "status=bounced" in refused
    (stored,) = [m for m in e2e_pymap.fetch_all(user=PIPE_USER, password="pw")
                 if tag.encode() in m]
    # local(8)'s "From " line is gone; its own headers stay; CRLF.
    assert stored.startswith(b"Return-Path: <sender@mx.pymap.test>\r\n")
    assert b"\r\nDelivered-To: nobody@localhost\r\n" in stored
    assert b"\nFrom " not in stored.split(b"\r\n\r\n", 1)[0]
    assert stored.count(b"\n") == stored.count(b"\r\n")


# --- the choices main.cf.lmtp-unix explains -----------------------------------

VIRTUAL_DOMAIN = "virt.pymap.test"


def _session_ids(server: PymapServer, tag: str, users: Iterable[str]) -> list[str]:
    """The LMTP session named in pymap-deliver's Received: of each user's copy."""
    ids = []
    for user in users:
        (stored,) = [m for m in server.fetch_all(user=user, password="pw") if tag.encode() in m]
        match = re.search(rb"\tby lmtp\.test \(pymap-deliver\)[^\r]* id (\S+)\r\n", stored)
        assert match is not None, stored[:400]
        ids.append(match.group(1).decode())
    return ids


@pytest.mark.parametrize("transport", ["mailbox_transport", "virtual_transport"])
def test_recipients_per_lmtp_session(transport: str, e2e_pymap: PymapServer,
                                     workdir: Path) -> None:
    """local(8) (mailbox_transport) hands pymap-deliver one recipient per
    session; virtual_transport hands it all recipients of a message in one."""
    names = ("alice", "bob", "carol")
    if transport == "mailbox_transport":
        main_cf = render("main.cf.lmtp-unix", {})
        users, addresses = list(names), [f"{name}@localhost" for name in names]
    else:
        main_cf = render("main.cf.lmtp-unix", {
            "\nmailbox_transport = lmtp:unix:private/pymap-deliver":
                "\n#mailbox_transport = lmtp:unix:private/pymap-deliver",
            "#virtual_mailbox_domains = example.com": f"virtual_mailbox_domains = {VIRTUAL_DOMAIN}",
            "#virtual_transport = lmtp:unix:": "virtual_transport = lmtp:unix:",
        })
        users = addresses = [f"{name}@{VIRTUAL_DOMAIN}" for name in names]
    for user in users:
        if user not in USERS:
            asyncio.run(create_user(e2e_pymap, user))
    postfix = PostfixInstance(main_cf + "\ndefault_transport = error:no mail leaves the test\n")
    agent = start_agent(e2e_pymap, postfix, workdir, free_port(),
                        local_part_only=transport == "mailbox_transport")
    try:
        postfix.start()
        assert postfix.check_output() == ""
        tag = uuid.uuid4().hex
        swaks(postfix, ",".join(addresses), tag)
        postfix.wait_for(r"status=sent .*250 2\.0\.0 Message delivered", 3)
    finally:
        postfix.cleanup()
        assert agent.stop() == 0
    sessions = _session_ids(e2e_pymap, tag, users)
    if transport == "mailbox_transport":
        assert len(set(sessions)) == 3, sessions
    else:
        assert len(set(sessions)) == 1, sessions


def test_unknown_recipient_refused_at_smtp_time(e2e_pymap: PymapServer, workdir: Path) -> None:
    """reject_unverified_recipient (main.cf.lmtp-unix): postfix probes
    pymap-deliver's RCPT check and refuses an unknown user in the SMTP
    dialogue; nothing is accepted for it, so nothing is bounced."""
    # The test client is not in mynetworks: it is treated as the internet.
    postfix = PostfixInstance(render("main.cf.lmtp-unix", {})
                              + "\ndefault_transport = error:no mail leaves the test\n",
                              mynetworks="192.0.2.0/24")
    agent = start_agent(e2e_pymap, postfix, workdir, free_port())
    try:
        postfix.start()
        assert postfix.check_output() == ""
        tag = uuid.uuid4().hex
        done = run_swaks(postfix, "nosuchuser@localhost", tag)
        assert done.returncode != 0
        # swaks marks a failure reply "<**"; the 550 comes at RCPT, before DATA.
        refusal = re.search(r"<\*\* +550 5\.1\.1 <nosuchuser@localhost>: Recipient address "
                            r"rejected: .*User unknown", done.stdout)
        assert refusal is not None, done.stdout
        assert "-> DATA" not in done.stdout
        # A known user in the same set-up still gets mail (its probe passes).
        swaks(postfix, "alice@localhost", tag)
        postfix.wait_for(r"to=<alice@localhost>.*status=sent", 1)
        log = postfix.log()
    finally:
        postfix.cleanup()
        assert agent.stop() == 0
    assert re.search(r"reject: RCPT from .*<nosuchuser@localhost>.*undeliverable", log), log
    assert "status=bounced" not in log
    assert "sender non-delivery notification" not in log
    assert count(e2e_pymap, tag, "alice") == 1
