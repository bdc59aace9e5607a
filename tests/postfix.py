"""A private postfix instance for end-to-end tests.

Its own main.cf/master.cf, queue and data directories in a folder of its own,
SMTP on a free loopback port, a log file instead of syslog: it never touches
the machine's own postfix. The transport configuration comes from the files
in contrib/postfix/, rendered with the test's paths (:func:`render`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devstack.localpymap import REPO, free_port

CONTRIB = REPO / "contrib" / "postfix"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
DEBIAN_MASTER_CF = Path("/etc/postfix/master.cf")
# Debian's sample pipe services for programs that are not installed here.
_UNUSED_SERVICES = {"maildrop", "uucp", "ifmail", "bsmtp", "scalemail-backend", "mailman"}


def postfix_available() -> bool:
    return os.path.exists(POSTFIX) and DEBIAN_MASTER_CF.exists() and os.geteuid() == 0


def stop_deliver(process: subprocess.Popen[bytes]) -> int:
    """Stops a pymap-deliver process as systemd does (SIGTERM, killed after
    30 s): its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def render(name: str, replacements: Mapping[str, str]) -> str:
    """A contrib file with its example values replaced by the test's.

    Every example value must be present: a contrib file that drifts from
    what the tests render fails them instead of being silently untested.
    """
    text = (CONTRIB / name).read_text()
    for example, actual in replacements.items():
        if example not in text:
            raise AssertionError(f"{name} no longer contains {example!r}")
        text = text.replace(example, actual)
    return text


def _debian_master_cf(smtp_port: int) -> str:
    lines: list[str] = []
    skipping = False
    for line in DEBIAN_MASTER_CF.read_text().splitlines():
        if line.startswith((" ", "\t")):
            if not skipping:
                lines.append(line)
            continue
        skipping = False
        fields = line.split()
        if not fields or line.startswith("#"):
            lines.append(line)
            continue
        if fields[0] in _UNUSED_SERVICES:
            skipping = True
            continue
        if len(fields) >= 8:
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{smtp_port}"
            fields[4] = "n"  # no chroot: the instance's files live elsewhere
            line = "\t".join(fields)
        lines.append(line)
    return "\n".join(lines) + "\n"


@dataclass
class PostfixInstance:
    main_cf_extra: str
    master_cf_extra: str = ""
    smtp_port: int = field(default_factory=free_port)
    #: Clients trusted to relay and not subject to recipient verification;
    #: a test of the restrictions puts the test client outside.
    mynetworks: str = "127.0.0.0/8"
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pymap-postfix-")))

    def __post_init__(self) -> None:
        # postfix's daemons run as the postfix user and must reach the
        # configuration: the folder is world-traversable, unlike pytest's.
        self.root.chmod(0o755)
        self.config = self.root / "etc"
        self.queue = self.root / "queue"
        self.data = self.root / "data"
        self.maillog = self.root / "maillog"
        for folder in (self.config, self.queue, self.data):
            folder.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")

    @property
    def private(self) -> Path:
        return self.queue / "private"

    def main_cf(self) -> str:
        return f"""\
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.pymap.test
mydomain = pymap.test
myorigin = $myhostname
mydestination = $myhostname, localhost
mynetworks = {self.mynetworks}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtpd_banner = $myhostname ESMTP
maillog_file = {self.maillog}
maillog_file_prefixes = {self.root}
alias_maps =
alias_database =
biff = no
smtputf8_enable = no
# Deferred mail comes back quickly in tests; `postfix flush` forces it.
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 4s
# Keep delivery attempts bounded: a dead transport must defer, not hang.
lmtp_connect_timeout = 5s
delay_warning_time = 0
bounce_queue_lifetime = 1d
maximal_queue_lifetime = 1d
{self.main_cf_extra}
"""

    def write_config(self) -> None:
        (self.config / "main.cf").write_text(self.main_cf())
        (self.config / "master.cf").write_text(
            _debian_master_cf(self.smtp_port) + "\n" + self.master_cf_extra + "\n")

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([POSTFIX, "-c", str(self.config), *args],
                              capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"postfix {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout}{done.stderr}\n{self.log()[-3000:]}")
        return done

    def start(self) -> None:
        self.write_config()
        self.postfix("set-permissions", "upgrade-configuration")
        self.postfix("check")
        self.postfix("start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "daemon started" in self.log():
                return
            time.sleep(0.1)
        raise AssertionError("postfix did not start:\n" + self.log())

    def check_output(self) -> str:
        """What `postfix check` says about the configuration (empty when clean)."""
        done = self.postfix("check")
        return (done.stdout + done.stderr).strip()

    def stop(self) -> None:
        self.postfix("stop", check=False)

    def flush(self) -> None:
        self.postfix("flush")

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def queue_ids(self) -> list[str]:
        done = subprocess.run([POSTQUEUE, "-c", str(self.config), "-j"],
                              capture_output=True, text=True, timeout=60)
        return re.findall(r'"queue_id": "([0-9A-Za-z]+)"', done.stdout)

    def wait_for(self, predicate: str | re.Pattern[str], count: int = 1,
                 timeout: float = 60.0) -> list[str]:
        """Wait until ``predicate`` matches ``count`` log lines; return them."""
        pattern = re.compile(predicate) if isinstance(predicate, str) else predicate
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log().splitlines() if pattern.search(line)]
            if len(lines) >= count:
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(lines)}/{count} log lines match {pattern.pattern}:"
                                     f"\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
