"""The commands the README shows, run as written (with the test's paths)."""

from __future__ import annotations

import os
import pwd
import re
import shlex
import signal
import smtplib
import subprocess
import sys
import time
import uuid
from pathlib import Path

from devstack.localpymap import DEMO_USER, REPO, PymapServer, free_port

from ._require import require

README = REPO / "README.md"


def readme_block(after_heading: str) -> str:
    """The first ```sh block after a heading, continuation lines joined."""
    text = README.read_text()
    start = text.index(f"\n{after_heading}\n")
    match = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert match is not None, f"no sh block after {after_heading}"
    return match.group(1).replace("\\\n", " ")


def substitute(command: str, replacements: dict[str, str]) -> list[str]:
    """argv of ``command`` with each example value replaced; every example
    value must be there, so the README cannot drift from what is tested."""
    argv = shlex.split(command)
    for example, actual in replacements.items():
        assert example in argv, f"the README's command no longer has {example!r}: {argv}"
        argv[argv.index(example)] = actual
    return argv


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_readme_pymap_deliver_command_delivers(pymap: PymapServer, tmp_path: Path) -> None:
    require(os.geteuid() == 0 and _has_user("postfix"),
            "the README's command gives its socket to the postfix user: needs root and postfix")
    socket_path = tmp_path / "private" / "pymap-deliver"
    socket_path.parent.mkdir()
    port = free_port()
    argv = substitute(readme_block("## pymap-deliver"), {
        "pymap-deliver": str(Path(sys.executable).parent / "pymap-deliver"),
        "/var/spool/postfix/private/pymap-deliver": str(socket_path),
        "127.0.0.1:24": f"127.0.0.1:{port}",
        "/run/pymap/tmp/pymap/pymap-admin.sock": str(pymap.socket_path),
        "/run/pymap/tmp/pymap/pymap-admin.token": str(pymap.token_path),
    })
    log = tmp_path / "pymap-deliver.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        status = socket_path.stat()
        assert pwd.getpwuid(status.st_uid).pw_name == "postfix"
        assert status.st_mode & 0o777 == 0o600
        tag = uuid.uuid4().hex
        for host in (str(socket_path), "127.0.0.1"):
            with smtplib.LMTP(host, port if host == "127.0.0.1" else 0) as lmtp:
                lmtp.ehlo("mx.example.com")
                lmtp.mail("sender@example.com")
                # --local-part-only: the domain is not part of the pymap user.
                lmtp.rcpt(f"{DEMO_USER}@example.com")
                code, text = lmtp.data(f"Subject: {tag}\r\n\r\nvia {host}\r\n".encode())
                assert (code, text.split()[0]) == (250, b"2.0.0"), (code, text)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
    stored = [m for m in pymap.fetch_all() if tag.encode() in m]
    assert len(stored) == 2

