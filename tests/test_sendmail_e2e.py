"""End to end: a real sendmail whose local mailer is contrib/sendmail/pymap.mc
(`pymap-admin append`), into a real pymap, checked over IMAP.

sendmail cannot be installed beside postfix (the packages conflict), so
Debian's sendmail-bin and sendmail-cf are unpacked into a private root by
tools/fetch_sendmail.sh (`make sendmail-root`; .ci/run does it). Each test
builds its own sendmail.cf with m4 from the real pymap.mc (only its CHOOSE
values replaced) and runs the sendmail binary once per step: no daemon, a
private queue, aliases and host name, and no DNS.
"""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.localpymap import REPO, PymapServer, TLSFiles, free_port

from ._require import require, require_tool
from .conftest import create_user, require_pymap, write_admin_config

pytestmark = pytest.mark.sendmail

SENDMAIL_ROOT = Path(os.environ.get("PYMAP_SENDMAIL_ROOT", REPO / ".cache" / "sendmail-root"))
SENDMAIL = SENDMAIL_ROOT / "usr" / "libexec" / "sendmail" / "sendmail"
M4 = SENDMAIL_ROOT / "usr" / "bin" / "m4"
CF_M4 = SENDMAIL_ROOT / "usr" / "share" / "sendmail" / "cf" / "m4" / "cf.m4"
# Shared libraries postfix's machine lacks (libwrap0, liblockfile1).
LIBDIR = SENDMAIL_ROOT / "usr" / "lib" / "x86_64-linux-gnu"
CONTRIB_MC = REPO / "contrib" / "sendmail" / "pymap.mc"
HOSTNAME = "mail.pymap.test"
# The account append runs as (pymap.mc's confDEF_USER_ID): an unprivileged
# one, as in contrib/postfix's pipe test.
MAILER_USER = "nobody"
SENDER = "sender@remote.test"
PASSWORD = "pw"


def require_sendmail() -> None:
    require(SENDMAIL.exists() and (SENDMAIL_ROOT / ".complete").exists(),
            f"sendmail is not unpacked in {SENDMAIL_ROOT} (make sendmail-root)")
    # sendmail switches to the mailer's account, and the test gives it a host
    # name and /etc/hosts of its own in namespaces: both need root.
    require(os.geteuid() == 0, "the sendmail tests run as root")
    require_tool("unshare")
    require_tool("mount")
    require_tool("hostname")
    probe = subprocess.run(["unshare", "--uts", "--mount", "true"], capture_output=True,
                           timeout=30)
    require(probe.returncode == 0, "no namespaces for sendmail's host name and /etc/hosts "
            f"(unshare --uts --mount): {probe.stderr.decode(errors='replace').strip()}")


def render_mc(install: Path, config: Path, mailer_user: str) -> str:
    """contrib/sendmail/pymap.mc with its CHOOSE values replaced by the test's.

    Every example value must be present: an mc that drifts from what the
    test renders fails it instead of being silently untested.
    """
    group = pwd.getpwnam(mailer_user).pw_gid
    text = CONTRIB_MC.read_text()
    for example, actual in {
        "/opt/pymap-deliver/bin/pymap-admin": str(install / "bin" / "pymap-admin"),
        "/etc/pymap/pymap-admin.conf": str(config),
        "pymap-deliver:pymap-deliver": f"{mailer_user}:{group}",
    }.items():
        if example not in text:
            raise AssertionError(f"pymap.mc no longer contains {example!r}")
        text = text.replace(example, actual)
    return text


@dataclass
class Sendmail:
    """A sendmail.cf of the test's own, and the sendmail binary run with it."""

    workdir: Path
    pymap: PymapServer
    tls: TLSFiles

    @property
    def cf(self) -> Path:
        return self.workdir / "sendmail.cf"

    @property
    def queue(self) -> Path:
        return self.workdir / "queue"

    @property
    def config(self) -> Path:
        return self.workdir / "etc" / "pymap-admin.conf"

    def setup(self, install: Path) -> None:
        etc = self.workdir / "etc"
        etc.mkdir(mode=0o755)
        self.queue.mkdir(mode=0o700)
        shutil.copyfile(self.tls.ca, etc / "ca.pem")
        (etc / "ca.pem").chmod(0o644)
        # What contrib/systemd/pymap-admin-token.conf does after each pymap
        # start: the token where only the mailer's account reads it.
        token = etc / "deliver.token"
        shutil.copyfile(self.pymap.token_path, token)
        shutil.chown(token, MAILER_USER)
        token.chmod(0o600)
        self.point_at(self.pymap.admin_port)
        # postmaster and MAILER-DAEMON, as every aliases file has them: the
        # local mailer resolves them after aliasing, like any user.
        (self.workdir / "aliases").write_text("MAILER-DAEMON: postmaster\npostmaster: root\n")
        # sendmail's own host lookups: /etc/hosts only, never DNS.
        (self.workdir / "service.switch").write_text("hosts files\naliases files\n")
        (self.workdir / "hosts").write_text(f"127.0.0.1 {HOSTNAME} localhost\n")
        (self.workdir / "nsswitch.conf").write_text(
            "passwd: files\ngroup: files\nhosts: files\n")
        mc = self.workdir / "test.mc"
        w = self.workdir
        mc.write_text(
            "divert(0)dnl\n"
            "OSTYPE(`linux')dnl\n"
            # $j: sendmail would otherwise ask the resolver for its name.
            f"define(`confDOMAIN_NAME', `{HOSTNAME}')dnl\n"
            "define(`confDONT_PROBE_INTERFACES', `True')dnl\n"
            f"define(`QUEUE_DIR', `{w / 'queue'}')dnl\n"
            f"define(`ALIAS_FILE', `{w / 'aliases'}')dnl\n"
            f"define(`STATUS_FILE', `{w / 'statistics'}')dnl\n"
            f"define(`confPID_FILE', `{w / 'sendmail.pid'}')dnl\n"
            f"define(`confSERVICE_SWITCH_FILE', `{w / 'service.switch'}')dnl\n"
            "define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl\n"
            # The folders above are under /tmp (world-writable): sendmail
            # would refuse to build the aliases database there.
            "define(`confDONT_BLAME_SENDMAIL', `MapInUnsafeDirPath')dnl\n"
            # Errors as a daemon would handle them: a bounce by mail, not a
            # message on the terminal of whoever ran sendmail.
            "define(`confERROR_MODE', `m')dnl\n"
            "FEATURE(`nocanonify')dnl\n"
            + render_mc(install, self.config, MAILER_USER)
            + "MAILER(`local')dnl\n"
            "MAILER(`smtp')dnl\n")
        cf = subprocess.run([str(M4), str(CF_M4), str(mc)], capture_output=True, text=True,
                            check=True, timeout=60)
        self.cf.write_text(cf.stdout)
        done = self.run(["-bi"])  # newaliases
        assert done.returncode == 0, done.stdout + done.stderr

    def point_at(self, port: int) -> None:
        """The mailer's pymap-admin.conf, naming the admin port ``port``."""
        etc = self.workdir / "etc"
        write_admin_config(self.config, port=port, cafile=etc / "ca.pem",
                           token_file=etc / "deliver.token", owner=MAILER_USER)

    def run(self, args: Sequence[str], stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
        """sendmail -C our cf ``args``, in namespaces of its own: a fully
        qualified host name (the machine's may be unqualified, and sendmail
        then sleeps a minute and complains) and /etc/hosts and nsswitch.conf
        that know it, so no DNS query is made. The machine keeps its own."""
        script = ('mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/nsswitch.conf '
                  '&& hostname "$3" && shift 3 && exec "$@"')
        command = ["unshare", "--uts", "--mount", "--", "sh", "-c", script, "sh",
                   str(self.workdir / "hosts"), str(self.workdir / "nsswitch.conf"), HOSTNAME,
                   str(SENDMAIL), "-C", str(self.cf), *args]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_LIBRARY_PATH": str(LIBDIR)}
        done = subprocess.run(command, input=stdin, capture_output=True, env=env, timeout=120,
                              cwd=self.workdir)
        return subprocess.CompletedProcess(done.args, done.returncode,
                                           done.stdout.decode(errors="replace"),
                                           done.stderr.decode(errors="replace"))

    def send(self, sender: str, recipient: str, subject: str) -> subprocess.CompletedProcess[str]:
        """A message submitted on the command line and delivered before
        sendmail exits (-odi), as a local program hands mail to sendmail."""
        message = (f"From: Someone <{SENDER}>\nTo: {recipient}\nSubject: {subject}\n\n"
                   f"body of {subject}\n").encode()
        return self.run(["-odi", "-oi", "-f", sender, recipient], message)

    def queue_ids(self) -> list[str]:
        return sorted(p.name[2:] for p in self.queue.glob("qf*"))


@pytest.fixture(scope="session")
def sendmail_pymap(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles
                   ) -> Iterator[PymapServer]:
    """A dict pymap whose admin port speaks TLS: the mailer, an unprivileged
    account, reaches pymap over TCP (its UNIX socket is root's alone)."""
    require_sendmail()
    require_pymap()
    server = PymapServer(workdir=tmp_path_factory.mktemp("pymap-sendmail"), tls=tls_files)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sendmail(sendmail_pymap: PymapServer, tls_files: TLSFiles, unprivileged_install: Path
             ) -> Iterator[Sendmail]:
    # World-traversable, unlike pytest's tmp_path: the mailer's account reads
    # its config and token in here.
    workdir = Path(tempfile.mkdtemp(prefix="pymap-sendmail-"))
    workdir.chmod(0o755)
    try:
        instance = Sendmail(workdir, sendmail_pymap, tls_files)
        instance.setup(unprivileged_install)
        yield instance
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def new_user(server: PymapServer, *mailboxes: str, sieve: str | None = None) -> str:
    """A pymap user of this test's own, with ``mailboxes`` and a Sieve script."""
    user = f"u{uuid.uuid4().hex[:12]}"
    asyncio.run(create_user(server, user, PASSWORD))
    conn = server.imap(user, PASSWORD)
    try:
        for mailbox in mailboxes:
            assert conn.create(mailbox)[0] == "OK"
    finally:
        conn.logout()
    if sieve is not None:
        put_sieve(server, user, sieve)
    return user


def put_sieve(server: PymapServer, user: str, script: str) -> None:
    """``script`` as ``user``'s active Sieve script, over ManageSieve (RFC 5804):
    Sieve's envelope test is how a test sees the sender append handed pymap."""
    with socket.create_connection(("127.0.0.1", server.sieve_port), timeout=30) as sock:
        stream = sock.makefile("rwb")

        def answer() -> bytes:
            while True:
                line = stream.readline()
                if not line or line.startswith((b"OK", b"NO", b"BYE")):
                    return line

        def command(line: bytes) -> None:
            stream.write(line + b"\r\n")
            stream.flush()
            result = answer()
            assert result.startswith(b"OK"), (line[:40], result)

        answer()  # the greeting
        auth = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
        command(b'AUTHENTICATE "PLAIN" "' + auth + b'"')
        data = script.encode()
        command(b'PUTSCRIPT "test" {%d+}\r\n' % len(data) + data)
        command(b'SETACTIVE "test"')


def stored(server: PymapServer, user: str, tag: str, mailbox: str = "INBOX") -> list[bytes]:
    return [m for m in server.fetch_all(mailbox, user=user, password=PASSWORD)
            if tag.encode() in m]


# --- (a) a known user ---------------------------------------------------------

def test_a_message_is_stored_once_with_return_path_and_envelope_sender(
        sendmail: Sendmail) -> None:
    server = sendmail.pymap
    # Sieve sees the envelope sender append was given (--from $g): anything
    # but the submitted one is filed away from INBOX.
    user = new_user(server, "WrongSender", sieve=(
        'require ["envelope", "fileinto"];\n'
        f'if not envelope :is "from" "{SENDER}" {{ fileinto "WrongSender"; }}\n'))
    tag = uuid.uuid4().hex
    done = sendmail.send(SENDER, user, tag)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sendmail.queue_ids() == []
    (message,) = stored(server, user, tag)
    # F=P: Return-Path: first, with the envelope sender, then sendmail's
    # Received:. No "From " line reached pymap; F=n is why sendmail sends
    # none, though append would strip one anyway (the check cannot tell).
    assert message.startswith(b"Return-Path: <" + SENDER.encode() + b">\r\nReceived: "), \
        message[:200]
    assert not re.search(rb"(^|\n)From ", message)
    assert stored(server, user, tag, "WrongSender") == []
    # One hop: sendmail's trace header, none of append's own.
    assert message.count(b"\r\nReceived: ") == 1
    assert f"for {user};".encode() in message


# --- (b) the null sender -----------------------------------------------------

def test_the_null_sender_arrives_as_null(sendmail: Sendmail) -> None:
    server = sendmail.pymap
    user = new_user(server, "Null", "NotNull", sieve=(
        'require ["envelope", "fileinto"];\n'
        'if envelope :is "from" "" { fileinto "Null"; } else { fileinto "NotNull"; }\n'))
    tag = uuid.uuid4().hex
    done = sendmail.send("<>", user, tag)
    assert done.returncode == 0, done.stdout + done.stderr
    (message,) = stored(server, user, tag, "Null")
    assert stored(server, user, tag, "NotNull") == []
    # sendmail's local mailer names the null sender $n (MAILER-DAEMON), in
    # $g and so in the Return-Path: it writes; append turns that name back
    # into the null sender, which is what Sieve saw above.
    assert message.startswith(b"Return-Path: <MAILER-DAEMON>\r\n"), message[:200]


# --- (c) an unknown user -----------------------------------------------------

def test_an_unknown_user_bounces_to_the_sender(sendmail: Sendmail) -> None:
    server = sendmail.pymap
    sender = new_user(server)
    unknown = f"nosuch{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex
    # The sender is a local pymap user: the bounce comes back into pymap
    # through the same mailer.
    done = sendmail.send(f"{sender}@{HOSTNAME}", unknown, tag)
    # -odi: sendmail's exit status is the mailer's, 67 (EX_NOUSER) ...
    assert done.returncode == 67, done.stdout + done.stderr
    # ... the recipient bounced, not queued for a retry ...
    assert sendmail.queue_ids() == []
    # ... and the bounce went to the sender.
    (bounce,) = stored(server, sender, tag)
    text = bounce.decode(errors="replace")
    head = text.split("\r\n\r\n")[0]
    assert head.startswith("Return-Path: <MAILER-DAEMON>\r\n"), head
    assert re.search(r"^Subject: Returned mail: see transcript for details\r$", head, re.M)
    assert f"Final-Recipient: RFC822; {unknown}@{HOSTNAME}\r\n" in text
    assert "Status: 5.1.1\r\n" in text
    assert "Diagnostic-Code: X-Unix; 67\r\n" in text
    # The mailer's output is the transcript: append's first line, and its
    # reason on standard error.
    transcript = text.split("----- Transcript of session follows -----")[1]
    assert transcript.startswith("\r\n5.1.1 User unknown\r\n"), transcript[:300]
    assert "UserNotFound" in transcript
    assert f"550 5.1.1 {unknown}... User unknown" in transcript
    # The returned message is the one sent, and it is all the sender got.
    assert f"Subject: {tag}\r\n" in text
    assert text.count(f"body of {tag}") == 1


# --- (d) pymap unreachable ---------------------------------------------------

def test_a_temporary_failure_is_queued_and_delivered_once_by_a_queue_run(
        sendmail: Sendmail) -> None:
    server = sendmail.pymap
    user = new_user(server)
    tag = uuid.uuid4().hex
    # Nothing listens there: append exits 75 (EX_TEMPFAIL).
    sendmail.point_at(free_port())
    done = sendmail.send(SENDER, user, tag)
    assert done.returncode == 0, done.stdout + done.stderr
    (queue_id,) = sendmail.queue_ids()
    listing = sendmail.run(["-bp"])
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert queue_id in listing.stdout
    assert "Deferred: local mailer" in listing.stdout, listing.stdout
    # The reason in full, as the queue file keeps it: 75 is a deferral.
    qf = (sendmail.queue / f"qf{queue_id}").read_text(errors="replace")
    assert re.search(r"^MDeferred: local mailer \(.*/pymap-admin\) exited with EX_TEMPFAIL$",
                     qf, re.M), qf
    assert re.search(rf"^\s+{user}$", listing.stdout, re.M), listing.stdout
    assert stored(server, user, tag) == []
    # A second queue run while pymap is still unreachable keeps it queued.
    again = sendmail.run(["-q"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert sendmail.queue_ids() == [queue_id]
    assert stored(server, user, tag) == []

    sendmail.point_at(server.admin_port)
    run = sendmail.run(["-q", "-v"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{user}... Sent" in run.stdout, run.stdout
    assert sendmail.queue_ids() == []
    (message,) = stored(server, user, tag)
    assert message.startswith(b"Return-Path: <" + SENDER.encode() + b">\r\n")
    # Another queue run finds nothing to send again.
    assert sendmail.run(["-q"]).returncode == 0
    assert len(stored(server, user, tag)) == 1


# --- (e) +detail -------------------------------------------------------------

def test_a_plus_detail_is_delivered_to_the_user(sendmail: Sendmail) -> None:
    server = sendmail.pymap
    user = new_user(server)
    tag = uuid.uuid4().hex
    # sendmail's parse ruleset puts the detail in $h and the user in $u:
    # append gets the bare pymap user.
    done = sendmail.send(SENDER, f"{user}+lists", tag)
    assert done.returncode == 0, done.stdout + done.stderr
    (message,) = stored(server, user, tag)
    assert f"for {user}+lists;".encode() in message
