"""The installed pymap-admin console script against a real pymap 0.36.7, as a user
or an MTA runs it: every command, and every failure a real server can produce."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.localpymap import DEMO_USER, PymapServer, TLSFiles

SCRIPT = Path(sys.executable).parent / "pymap-admin"


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str

    @property
    def first_line(self) -> str:
        return self.stdout.splitlines()[0] if self.stdout else ""


def run(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> Run:
    proc = subprocess.run([str(SCRIPT), *args], input=stdin, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=60, check=False)
    result = Run(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    assert "Traceback" not in result.stderr or "--debug" in args, result.stderr
    return result


def via(server: PymapServer) -> list[str]:
    return ["--path", str(server.socket_path), "--token-file", str(server.token_path)]


def message(subject: str = "hello") -> bytes:
    tag = uuid.uuid4().hex
    return (f"From: sender@example.com\r\nTo: {DEMO_USER}\r\nSubject: {subject}\r\n"
            f"Message-Id: <{tag}@test>\r\n\r\nbody {tag}\r\n").encode()


def uid_of(result: Run) -> int:
    found = re.search(r"^uid: (\d+)$", result.stderr, re.M)
    assert found, result.stderr
    return int(found.group(1))


# --- System -------------------------------------------------------------------


def test_ping_and_check(pymap: PymapServer) -> None:
    ping = run(*via(pymap), "ping")
    assert ping.status == 0
    assert 'pymap_version: "0.36.7"' in ping.stdout.splitlines()
    assert any(line.startswith('pymap_admin_version: "0.12.') for line in ping.stdout.split("\n"))
    assert run("--json", *via(pymap), "ping").stdout.count('"pymap_version": "0.36.7"') == 1
    for service in ([], ["pymap.backend"]):
        check = run(*via(pymap), "check", *service)
        assert (check.status, check.stdout.strip()) == (0, "status: SERVING")
    unknown = run(*via(pymap), "check", "no.such.service")
    assert unknown.status == 1 and "unknown service" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1


def test_environment_instead_of_options(pymap: PymapServer) -> None:
    env = {"PYMAP_ADMIN_SOCKET": str(pymap.socket_path),
           "PYMAP_ADMIN_TOKEN_FILE": str(pymap.token_path)}
    assert run("get-user", DEMO_USER, env=env).status == 0
    env = {"PYMAP_ADMIN_SOCKET": str(pymap.socket_path), "PYMAP_ADMIN_TOKEN": pymap.token()}
    assert 'user: "demouser"' in run("get-user", DEMO_USER, env=env).stdout


def test_tls_over_tcp(tls_pymap: PymapServer, tls_files: TLSFiles) -> None:
    args = ["--host", "127.0.0.1", "--port", str(tls_pymap.admin_port),
            "--token-file", str(tls_pymap.token_path)]
    assert run(*args, "--cafile", str(tls_files.ca), "get-user", DEMO_USER).status == 0
    untrusted = run(*args, "ping")
    assert untrusted.status == 1 and "TLS" in untrusted.stderr


def test_save_args_creates_private_config(pymap: PymapServer) -> None:
    config_home = Path(os.environ["XDG_CONFIG_HOME"])
    assert not config_home.exists()  # a fresh account: no ~/.config yet
    saved = run(*via(pymap), "save-args")
    path = config_home / "pymap" / "pymap-admin.conf"
    assert saved.status == 0 and saved.stdout.strip() == f"Config file written: {path}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert f"path = {pymap.socket_path}" in path.read_text()
    # Later commands need no options.
    assert run("get-user", DEMO_USER).status == 0


def test_save_args_makes_every_path_absolute(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Two cluster members' sockets given relative to the current directory.
    monkeypatch.chdir(tmp_path)
    saved = run("--path", "a.sock", "--path", "sub/b.sock", "--token-file", "token",
                "--cafile", "~/ca.pem", "save-args")
    assert saved.status == 0, saved.stderr
    text = (Path(os.environ["XDG_CONFIG_HOME"]) / "pymap" / "pymap-admin.conf").read_text()
    assert f"path = {tmp_path / 'a.sock'},{tmp_path / 'sub' / 'b.sock'}\n" in text, text
    assert f"token_file = {tmp_path / 'token'}\n" in text, text
    assert f"cafile = {Path.home() / 'ca.pem'}\n" in text, text


def test_login_failures(pymap: PymapServer) -> None:
    wrong = run(*via(pymap), "login", "--password", "wrong", DEMO_USER)
    assert wrong.status == 1 and "InvalidAuth" in wrong.stderr and not wrong.stdout
    token = run(*via(pymap), "login", "-t", DEMO_USER)
    assert token.status == 0 and token.stdout.count("bearer_token: ") == 1


# --- Users ----------------------------------------------------------------------


def test_user_lifecycle_and_its_own_token(pymap: PymapServer, tmp_path: Path) -> None:
    user = f"cli-{uuid.uuid4().hex[:8]}"
    first, second = tmp_path / "pw1", tmp_path / "pw2"
    first.write_text("first secret\n")
    second.write_text("second secret\n")
    created = run(*via(pymap), "set-user", "--password-file", str(first), "--role", "r1",
                  "--param", "k=v", user)
    assert created.status == 0 and f'user: "{user}"' in created.stdout
    again = run(*via(pymap), "set-user", "--no-overwrite", "--no-password", user)
    assert again.status == 1 and "CannotReplaceUser" in again.stderr
    before = run(*via(pymap), "get-user", "--show-password-hash", user).stdout

    changed = run(*via(pymap), "change-password", "--password-file", str(second), user)
    assert changed.status == 0
    assert "password:" not in changed.stdout and "password:" not in created.stdout
    hidden = run(*via(pymap), "get-user", user).stdout
    assert "password:" not in hidden and 'roles: "r1"' in hidden
    assert not hidden.endswith("\n\n")  # no trailing blank line
    after = run(*via(pymap), "get-user", "--show-password-hash", user).stdout
    assert 'roles: "r1"' in after and 'key: "k"' in after and 'value: "v"' in after
    hashes = [re.search(r'password: "(.*)"', text) for text in (before, after)]
    assert hashes[0] and hashes[1] and hashes[0].group(1) != hashes[1].group(1)

    old = run(*via(pymap), "login", "--password-file", str(first), user)
    assert old.status == 1
    login = run("--path", str(pymap.socket_path), "login", "--password-file", str(second),
                "-s", user)
    assert login.status == 0 and 'bearer_token: "' in login.stdout
    saved = Path(os.environ["XDG_CONFIG_HOME"]) / "pymap" / "pymap-admin.token"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert saved.read_text().strip() in login.stdout

    # The saved token is found by later commands, and is good for this user only.
    mine = run("--path", str(pymap.socket_path), "get-user", user)
    assert mine.status == 0 and f'user: "{user}"' in mine.stdout
    other = run("--path", str(pymap.socket_path), "get-user", DEMO_USER)
    assert other.status == 1 and len(other.stderr.strip().splitlines()) == 1

    assert run(*via(pymap), "delete-user", user).status == 0
    gone = run(*via(pymap), "get-user", user)
    assert gone.status == 1 and "UserNotFound" in gone.stderr


def test_debug_shows_the_traceback(pymap: PymapServer) -> None:
    result = run(*via(pymap), "--debug", "get-user", "nobody-at-all")
    assert result.status == 1 and "Traceback" in result.stderr
    # Wire-level detail, but never the token: hpack would log header values.
    assert "DEBUG" in result.stderr
    assert "auth-token" not in result.stderr
    assert pymap.token() not in result.stderr


# --- append: every outcome a real server can produce --------------------------------


def test_append_delivers_and_strips_the_mbox_from_line(pymap: PymapServer) -> None:
    body = message()
    result = run(*via(pymap), "append", "--from", "sender@example.com", "--to", DEMO_USER,
                 "--flagged", DEMO_USER,
                 stdin=b"From sender@example.com Thu Jan  1 00:00:00 2024\n" + body)
    assert (result.status, result.first_line) == (0, "2.0.0 Message delivered")
    assert pymap.fetch_uid(uid_of(result)) == body


def test_append_data_file_and_mailbox(pymap: PymapServer, tmp_path: Path) -> None:
    body = message()
    (tmp_path / "m.eml").write_bytes(body)
    result = run(*via(pymap), "append", "--data", str(tmp_path / "m.eml"), "--mailbox", "Sent",
                 "--from", "MAILER-DAEMON", "--timestamp", "1700000000", DEMO_USER)
    assert (result.status, result.first_line) == (0, "2.0.0 Message delivered")
    assert pymap.fetch_uid(uid_of(result), mailbox="Sent") == body


@pytest.mark.parametrize(("subject", "args", "user", "line", "status"), [
    ("discard this", [], DEMO_USER, "2.0.0 Message delivered (discarded by Sieve)", 0),
    ("hello", [], "nobody-here", "5.1.1 User unknown", 67),
    ("reject this", [], DEMO_USER, "5.7.1 message rejected", 77),
    ("hello", ["--mailbox", "No Such Box"], DEMO_USER, "4.2.0 Mailbox not found", 75),
    ("hello", ["--mailbox", "Trash"], DEMO_USER, "4.2.0 Mailbox is read-only", 75),
])
def test_append_outcomes(pymap: PymapServer, subject: str, args: list[str], user: str,
                         line: str, status: int) -> None:
    result = run(*via(pymap), "append", *args, user, stdin=message(subject))
    assert (result.first_line, result.status) == (line, status), result.stderr
    if status:
        assert len(result.stderr.strip().splitlines()) == 1


def test_append_json(pymap: PymapServer) -> None:
    import json

    result = run(*via(pymap), "--json", "append", "nobody-here", stdin=message())
    data = json.loads(result.stdout)
    assert result.status == 67 == data["exit_status"]
    assert data["status"] == "5.1.1 User unknown" and data["error"]["key"] == "UserNotFound"


def test_append_too_big_is_not_sent(pymap: PymapServer) -> None:
    result = run(*via(pymap), "append", "--max-size", "10", "nobody-here", stdin=message())
    assert (result.first_line, result.status) == ("5.3.4 Message too big", 65)


def test_append_bad_token(pymap: PymapServer, tmp_path: Path) -> None:
    from pymacaroons import Macaroon

    forged = Macaroon(location="", identifier="", key="not the server's key")
    forged.add_first_party_caveat("role = admin")
    (tmp_path / "token").write_text(forged.serialize())
    result = run("--path", str(pymap.socket_path), "--token-file", str(tmp_path / "token"),
                 "append", DEMO_USER, stdin=message())
    assert result.first_line.startswith("4.3.5 ") and result.status == 75


def test_append_server_down_and_socket_missing(fresh_pymap: PymapServer, tmp_path: Path
                                               ) -> None:
    missing = run("--path", str(tmp_path / "no.sock"), "--token-file",
                  str(fresh_pymap.token_path), "append", DEMO_USER, stdin=message())
    assert missing.first_line.startswith("4.4.1 ") and missing.status == 75
    fresh_pymap.stop()
    down = run(*via(fresh_pymap), "append", DEMO_USER, stdin=message())
    assert down.first_line.startswith("4.4.1 ") and down.status == 75
    # And so does every other command: one line, status 1.
    ping = run(*via(fresh_pymap), "ping")
    assert ping.status == 1 and len(ping.stderr.strip().splitlines()) == 1


def test_append_warnings_come_after_the_status_line(pymap: PymapServer, tmp_path: Path
                                                    ) -> None:
    """pipe(8) reads stdout and stderr as one stream and takes the status
    from its start: a library warning (here: no token cache can be made,
    even by root, under a regular file) comes after the status line."""
    (tmp_path / "file").write_text("")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "file" / "cache")}
    proc = subprocess.run([str(SCRIPT), *via(pymap), "append", DEMO_USER], input=message(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          timeout=60, check=False)
    lines = proc.stdout.decode().splitlines()
    assert (proc.returncode, lines[0]) == (0, "2.0.0 Message delivered"), lines
    assert any("login tokens unavailable" in line for line in lines[1:]), lines


def test_append_command_line_mistakes_defer(pymap: PymapServer, tmp_path: Path) -> None:
    typo = run(*via(pymap), "append", "--form", "a@b", DEMO_USER, stdin=message())
    assert typo.status == 75 and typo.first_line.startswith("4.3.5 ")
    no_file = run(*via(pymap), "append", "--data", str(tmp_path / "none"), DEMO_USER)
    assert no_file.status == 75 and no_file.first_line.startswith("4.3.5 ")
    no_token = run("--path", str(pymap.socket_path), "append", DEMO_USER, stdin=message())
    assert no_token.status == 75 and no_token.first_line.startswith("4.3.5 ")


# --- token show / attenuate -------------------------------------------------------


def test_token_attenuate_for_one_user_and_a_day(pymap: PymapServer, tmp_path: Path) -> None:
    narrowed = tmp_path / "deliver.token"
    made = run("--token-file", str(pymap.token_path), "token", "attenuate", "--user",
               DEMO_USER, "--lifetime", "1d", "-o", str(narrowed))
    assert made.status == 0 and stat.S_IMODE(narrowed.stat().st_mode) == 0o600
    assert narrowed.read_text().strip() not in made.stdout  # the secret is not printed
    shown = run("--token-file", str(narrowed), "token", "show")
    assert shown.status == 0
    assert 'kind: "admin"' in shown.stdout and 'authzid: "demouser"' in shown.stdout
    assert "expires: " in shown.stdout and "expired: false" in shown.stdout
    stdin_shown = run("--json", "token", "show", "--stdin", stdin=narrowed.read_bytes())
    assert '"authzid": "demouser"' in stdin_shown.stdout

    args = ["--path", str(pymap.socket_path), "--token-file", str(narrowed)]
    ok = run(*args, "append", DEMO_USER, stdin=message())
    assert (ok.status, ok.first_line) == (0, "2.0.0 Message delivered")
    refused = run(*args, "append", "someone-else", stdin=message())
    assert refused.status == 75 and refused.first_line.startswith("4.3.5 ")

    garbage = run("token", "show", "--stdin", stdin=b"not a token")
    assert garbage.status == 1 and "not a pymap token" in garbage.stderr
