"""The package as an operator gets it: the sdist and wheel built once, installed
into fresh environments (alone, with the newest dependencies; and beside
pymap 0.36.7, on its pinned protobuf), both console scripts run from there,
``install-contrib`` into a temporary root, the units checked by
``systemd-analyze``, and (acceptance) a delivery through postfix configured
from the installed snippets into the pymap of that shared environment.

A full Debian root (debootstrap) per CI run would cost minutes; the root here
is a temporary folder, and postfix a private instance (tests/postfix.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.localpymap import DEMO_USER, REPO, PymapServer

from ._require import require, require_tool
from .conftest import create_user
from .postfix import PostfixInstance, postfix_available
from .test_readme import readme_block

pytestmark = pytest.mark.packaging

PYMAP_SPEC = "pymap[admin,macaroon,sieve]==0.36.7"
SECURITY_LIMIT = 3.0


def _run(argv: list[str | Path], *, timeout: float = 600, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def _check(argv: list[str | Path], **kwargs: Any) -> str:
    done = _run(argv, **kwargs)
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return str(done.stdout)


@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path
    log: str


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """``python -m build``, once per session."""
    out = tmp_path_factory.mktemp("dist")
    # The byte-compiling notice comes from the environment, not the project.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = _run([sys.executable, "-m", "build", "--outdir", out, REPO], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return Dist(wheel, sdist, done.stdout + done.stderr)


def _venv(folder: Path) -> Path:
    """A fresh virtual environment on the system's python3, in a folder
    every user can enter (postfix's pipe user runs programs from it)."""
    python = shutil.which("python3", path="/usr/bin:/usr/local/bin") or sys.executable
    folder.parent.mkdir(parents=True, exist_ok=True)
    _check([python, "-m", "venv", folder])
    for part in [folder, *folder.parents]:
        if part == Path(tempfile.gettempdir()):
            break
        part.chmod(part.stat().st_mode | 0o755)
    return folder / "bin"


@pytest.fixture(scope="session")
def wheel_bin(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel alone in a fresh environment: the newest dependencies."""
    root = Path(tempfile.mkdtemp(prefix="pymap-wheel-"))
    try:
        bin_dir = _venv(root / "venv")
        _check([bin_dir / "pip", "install", "--quiet", dist.wheel])
        yield bin_dir
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Installed:
    """A temporary root with the README's install commands run into it."""

    root: Path
    bin_dir: Path
    install_log: str


@pytest.fixture(scope="session")
def installed(dist: Dist) -> Iterator[Installed]:
    """The README's commands, as written but for the root, into one folder:
    pymap 0.36.7 and the wheel in ONE environment, then install-contrib."""
    root = Path(tempfile.mkdtemp(prefix="pymap-root-"))
    root.chmod(0o755)
    commands = [line for line in readme_block("## Install").splitlines() if line.strip()]
    assert len(commands) == 3, commands
    log = []
    try:
        for command in commands:
            argv = shlex.split(command.replace("/opt/pymap-deliver", f"{root}/opt/pymap-deliver"))
            if argv[:2] == [f"{root}/opt/pymap-deliver/bin/pip", "install"]:
                assert argv[-1] == "pymap-deliver", command
                argv[-1] = str(dist.wheel)
                argv.insert(2, "--quiet")
            if argv[-1] == "install-contrib":
                argv += ["--root", str(root)]
            if argv[0] == "python3":
                _venv(Path(argv[-1]))
                continue
            log.append(_check(list(argv)))
        yield Installed(root, root / "opt" / "pymap-deliver" / "bin", "".join(log))
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- the build ----------------------------------------------------------------

def test_build_has_no_warnings(dist: Dist) -> None:
    # pip's own notices about this machine's package sources are not the build's.
    noise = re.compile(r"Location '.*' is ignored")
    warnings = [line for line in dist.log.splitlines()
                if re.search(r"warn|deprecat", line, re.I) and not noise.search(line)]
    assert warnings == []


def test_twine_check(dist: Dist) -> None:
    _check([sys.executable, "-m", "twine", "check", "--strict", dist.wheel, dist.sdist])


def test_wheel_metadata_and_contents(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = set(wheel.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = wheel.read(metadata_name).decode()
        man = wheel.read("pymap_deliver/share/man/pymap-deliver.8").decode()
    assert "License-Expression: MIT" in metadata
    assert "License-File: LICENSE" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "Classifier: Topic :: Communications :: Email :: Mail Transport Agents" in metadata
    assert "Project-URL: " in metadata
    for shipped in ("pymap_deliver/share/contrib/systemd/pymap-deliver.service",
                    "pymap_deliver/share/contrib/systemd/pymap.service",
                    "pymap_deliver/share/contrib/postfix/main.cf.lmtp-unix",
                    "pymap_deliver/share/man/pymap-admin.1",
                    "pymap_deliver/share/completion/bash/pymap-deliver",
                    "pymap_admin/py.typed", "pymap_admin/grpc/admin_pb2.pyi"):
        assert shipped in names
    # The harness stays out of the product.
    assert not [n for n in names if n.startswith(("tests/", "devstack/", "benchmarks/"))]
    assert man.startswith('.TH PYMAP\\-DELIVER "8"')
    with tarfile.open(dist.sdist) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert {"LICENSE", "setup.py", "contrib/systemd/pymap.service", "proto/admin.proto",
            "tests/test_packaging.py"} <= members


# --- the installed commands ---------------------------------------------------

def test_console_scripts_from_the_wheel(wheel_bin: Path, pymap: PymapServer) -> None:
    """Both scripts of a plain wheel install run; pymap-admin talks to pymap."""
    out = _check([wheel_bin / "pymap-admin", "--path", pymap.socket_path, "ping"])
    assert "0.36.7" in out
    deliver_help = _check([wheel_bin / "pymap-deliver", "--help"])
    assert "--systemd" in deliver_help
    assert "--root" in _check([wheel_bin / "pymap-deliver", "install-contrib", "--help"])
    freeze = _check([wheel_bin / "pip", "freeze"])
    # The newest protobuf a fresh environment gets is a 5.x or later.
    (protobuf,) = re.findall(r"^protobuf==(\d+)\.", freeze, re.M)
    assert int(protobuf) >= 5


def test_one_environment_with_pymap(installed: Installed) -> None:
    """pymap 0.36.7 and pymap-deliver share one environment without moving
    pymap's pins: protobuf stays 4.25.x; our pymap-admin (a superset) is the
    script; pymap's own library still imports."""
    bin_dir = installed.bin_dir
    _check([bin_dir / "pip", "check"])
    freeze = _check([bin_dir / "pip", "freeze"])
    assert re.search(r"^protobuf==4\.25\.", freeze, re.M), freeze
    assert re.search(r"^pymap==0\.36\.7$", freeze, re.M)
    assert re.search(r"^pymap-admin==0\.12\.1$", freeze, re.M)
    # Ours, with its additions (token, --json), and the published commands.
    help_text = _check([bin_dir / "pymap-admin", "--help"])
    for command in ("token", "append", "login", "save-args", "change-password"):
        assert command in help_text
    _check([bin_dir / "python", "-W", "error", "-c",
            "import pymapadmin.grpc.admin_pb2, pymap.admin"])
    _check([bin_dir / "python", "-W", "error", "-c", "import pymap_admin.grpc.admin_pb2"])


def test_install_contrib_puts_everything_in_place(installed: Installed) -> None:
    root, bin_dir = installed.root, installed.bin_dir
    unit = root / "etc/systemd/system/pymap-deliver.service"
    for path in (unit, root / "etc/systemd/system/pymap-deliver.socket",
                 root / "etc/systemd/system/pymap.service",
                 root / "usr/local/share/man/man8/pymap-deliver.8",
                 root / "usr/local/share/man/man1/pymap-admin.1",
                 root / "usr/local/share/bash-completion/completions/pymap-admin",
                 root / "usr/local/share/zsh/site-functions/_pymap-deliver",
                 root / "usr/local/share/doc/pymap-deliver/README.md",
                 root / "usr/local/share/doc/pymap-deliver/postfix/main.cf.lmtp-unix",
                 root / "usr/local/share/doc/pymap-deliver/systemd/pymap-admin-token.conf"):
        assert path.is_file(), path
    # The units name the environment the programs were installed into.
    assert f"ExecStart={bin_dir}/pymap-deliver --systemd" in unit.read_text()
    assert f"ExecStart={bin_dir}/pymap " in (root / "etc/systemd/system/pymap.service"
                                             ).read_text()
    # The man page and --help come from the same parser.
    roff = (root / "usr/local/share/man/man8/pymap-deliver.8").read_text()
    options = set(re.findall(r"(--[a-z][a-z-]+)",
                             _check([bin_dir / "pymap-deliver", "--help"])))
    assert len(options) > 10
    assert options - {"--help"} <= set(re.findall(r"(--[a-z][a-z-]+)", roff.replace("\\-", "-")))
    # and it is a page man can show
    shown = _check(["man", "-l", root / "usr/local/share/man/man8/pymap-deliver.8"],
                   env={**os.environ, "MANWIDTH": "100"})
    assert "LMTP delivery agent storing mail into pymap" in shown


def test_install_contrib_never_overwrites_an_edited_file(installed: Installed,
                                                         tmp_path: Path) -> None:
    root = tmp_path / "root"
    command: list[str | Path] = [installed.bin_dir / "pymap-deliver", "install-contrib",
                                 "--root", root]
    first = _check(command)
    assert "KEPT" not in first
    assert "unchanged" in _check(command)
    unit = root / "etc/systemd/system/pymap-deliver.service"
    original = unit.read_text()
    edited = original.replace("--local-part-only", "")
    unit.write_text(edited)
    again = _check(command)
    assert re.search(r"KEPT +\S+pymap-deliver\.service \(changed here", again), again
    assert "1 file(s) kept" in again
    assert unit.read_text() == edited
    assert (unit.parent / "pymap-deliver.service.new").read_text() == original
    # A file still as installed is updated (as after an upgrade) ...
    page = root / "usr/local/share/man/man8/pymap-deliver.8"
    manifest_path = root / "var/lib/pymap-deliver/installed-files"
    manifest = json.loads(manifest_path.read_text())
    page.write_text("an older version\n")
    manifest["/usr/local/share/man/man8/pymap-deliver.8"] = hashlib.sha256(
        b"an older version\n").hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    assert re.search(r"update +\S+pymap-deliver\.8", _check(command))
    assert page.read_text().startswith(".TH")
    # ... and --force replaces an edited one, keeping the operator's copy.
    forced = _check([*command, "--force"])
    assert "replace" in forced
    assert unit.read_text() == original
    assert (unit.parent / "pymap-deliver.service.old").read_text() == edited


# --- systemd ------------------------------------------------------------------

def _analyze() -> str:
    return require_tool("systemd-analyze", "/usr/bin/systemd-analyze")


def test_units_verify(installed: Installed, tmp_path: Path) -> None:
    analyze = _analyze()
    # With the pipe token drop-in enabled, as an operator would.
    units = tmp_path / "system"
    shutil.copytree(installed.root / "etc/systemd/system", units)
    (units / "pymap.service.d").mkdir()
    shutil.copy(installed.root / "usr/local/share/doc/pymap-deliver/systemd/"
                "pymap-admin-token.conf", units / "pymap.service.d")
    # verify checks that ExecStart= exists and that man: documentation is there.
    done = _run([analyze, "verify", "--man=yes", units / "pymap.service",
                 units / "pymap-deliver.service", units / "pymap-deliver.socket"],
                env={**os.environ, "MANPATH": str(installed.root / "usr/local/share/man")},
                cwd=units)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""


def security_exposure(analyze: str, unit: Path) -> float:
    done = _run([analyze, "security", "--offline=true", "--no-pager", unit], cwd=unit.parent)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match is not None, done.stdout + done.stderr
    return float(match.group(1))


def test_pymap_deliver_unit_security_exposure(installed: Installed) -> None:
    analyze = _analyze()
    units = installed.root / "etc/systemd/system"
    exposure = security_exposure(analyze, units / "pymap-deliver.service")
    print(f"systemd-analyze security: pymap-deliver.service {exposure}")
    assert exposure <= SECURITY_LIMIT
    # pymap itself runs sandboxed too (it needs a low port and its mail).
    assert security_exposure(analyze, units / "pymap.service") <= SECURITY_LIMIT


# --- acceptance: postfix configured from the installed files ------------------

def test_acceptance_delivery_through_postfix(installed: Installed, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """postfix with the installed main.cf.lmtp-unix appended (postfix check
    clean), pymap from the shared environment, pymap-deliver started with the
    installed unit's ExecStart: a message goes swaks -> postfix -> LMTP ->
    pymap, read back over IMAP."""
    require(postfix_available(), "Debian's postfix is not installed (or not running as root)")
    swaks = require_tool("swaks")
    root, bin_dir = installed.root, installed.bin_dir
    monkeypatch.setenv("PYMAP_SERVER_VENV", str(bin_dir.parent))
    workdir = Path(tempfile.mkdtemp(prefix="pymap-accept-"))
    workdir.chmod(0o755)
    server = PymapServer(workdir=workdir / "pymap")
    snippet = (root / "usr/local/share/doc/pymap-deliver/postfix/main.cf.lmtp-unix").read_text()
    postfix = PostfixInstance(snippet + "\ndefault_transport = error:no mail leaves the test\n")
    agent: subprocess.Popen[bytes] | None = None
    log = workdir / "pymap-deliver.log"
    try:
        server.start()
        assert str(server.command()[0]).startswith(str(bin_dir))
        asyncio.run(create_user(server, "alice"))
        # The installed unit's command line; the sockets systemd would pass
        # are made by pymap-deliver itself here (no running systemd).
        unit = (root / "etc/systemd/system/pymap-deliver.service").read_text()
        match = re.search(r"^ExecStart=((?:.*\\\n)*.*)$", unit, re.M)
        assert match is not None
        argv = shlex.split(match.group(1).replace("\\\n", " "))
        socket_path = postfix.private / "pymap-deliver"
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        argv[argv.index("--systemd"):argv.index("--systemd") + 1] = [
            "--unix", str(socket_path), "--unix-owner", "postfix", "--unix-mode", "0600"]
        argv = [a.replace("/run/pymap/tmp", str(server.tmpdir)) for a in argv]
        if "--allow-root" in _check([argv[0], "--help"]):
            argv.append("--allow-root")  # the unit runs it as pymap's user
        with log.open("wb") as out:
            agent = subprocess.Popen(argv, stdout=out, stderr=out)
        postfix.start()
        assert postfix.check_output() == ""
        for _ in range(300):
            if socket_path.exists() or agent.poll() is not None:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert socket_path.exists(), log.read_text()
        tag = uuid.uuid4().hex
        _check([swaks, "--server", "127.0.0.1", "--port", str(postfix.smtp_port),
                "--from", "sender@mx.pymap.test", "--to", f"alice@localhost,{DEMO_USER}@localhost",
                "--header", f"Subject: {tag}", "--helo", "client.pymap.test"])
        postfix.wait_for(r"status=sent .*250 2\.0\.0", 2)
        for user, password in (("alice", "pw"), (DEMO_USER, "demopass")):
            stored = [m for m in server.fetch_all(user=user, password=password)
                      if tag.encode() in m]
            assert len(stored) == 1
    finally:
        postfix.cleanup()
        if agent is not None:
            agent.terminate()
            agent.wait(30)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --- the container image --------------------------------------------------------

def _deliver_and_read_back(lmtp_port: int, imap_port: int) -> None:
    import imaplib
    import smtplib

    tag = uuid.uuid4().hex
    with smtplib.LMTP("127.0.0.1", lmtp_port) as lmtp:
        lmtp.ehlo("mx.example.com")
        lmtp.mail("sender@example.com")
        lmtp.rcpt(f"{DEMO_USER}@example.com")
        code, text = lmtp.data(f"Subject: {tag}\r\n\r\nhello\r\n".encode())
    assert code == 250, text
    imap = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
    try:
        imap.login(DEMO_USER, "demopass")
        imap.select("INBOX", readonly=True)
        _, found = imap.search(None, "SUBJECT", tag)
        assert len(found[0].split()) == 1
    finally:
        imap.logout()


def _wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None,
                   timeout: float = 60) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process is None or process.poll() is None, "exited early"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_container_command_in_the_shared_environment(installed: Installed) -> None:
    """The image's command (contrib/docker/pymap-with-deliver), run as an
    unprivileged user with the shared environment's programs, as the image
    runs it: pymap and pymap-deliver start, a message goes in and comes back."""
    from devstack.localpymap import free_port

    setpriv = require_tool("setpriv")
    # Outside pytest's root-only folder: the user "nobody" must get in.
    tmp_path = Path(tempfile.mkdtemp(prefix="pymap-container-"))
    tmp_path.chmod(0o755)
    tmpdir = tmp_path / "run"
    tmpdir.mkdir()
    shutil.chown(tmpdir, "nobody")
    command = tmp_path / "pymap-with-deliver"
    shutil.copy(REPO / "contrib" / "docker" / "pymap-with-deliver", command)
    ports = {name: free_port() for name in ("IMAP_PORT", "SIEVE_PORT", "ADMIN_PORT",
                                            "LMTP_PORT")}
    env = {"PATH": f"{installed.bin_dir}:/usr/bin:/bin", "TMPDIR": str(tmpdir),
           **{name: str(port) for name, port in ports.items()}}
    log = tmp_path / "container.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             str(command)],
            env=env, stdout=out, stderr=out)
    try:
        _wait_for_port(ports["LMTP_PORT"], process)
        _wait_for_port(ports["IMAP_PORT"], process)
        _deliver_and_read_back(ports["LMTP_PORT"], ports["IMAP_PORT"])
    except AssertionError:
        raise AssertionError(log.read_text()) from None
    finally:
        process.terminate()
        status = process.wait(60)
        text = log.read_text()
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert status == 0, text


def _container_engine() -> str | None:
    for engine in ("docker", "podman"):
        path = shutil.which(engine)
        if path and _run([path, "info"], timeout=60).returncode == 0:
            return path
    return None


def test_container_image_builds_and_delivers(tmp_path: Path) -> None:
    """Only where a container engine runs (not required in CI)."""
    engine = _container_engine()
    if engine is None:
        pytest.skip("no container engine running here (docker/podman info fails)")
    from devstack.localpymap import free_port

    tag = f"pymap-deliver-test:{uuid.uuid4().hex[:8]}"
    _check([engine, "build", "-t", tag, REPO], timeout=1200)
    lmtp_port, imap_port = free_port(), free_port()
    name = f"pymap-deliver-{uuid.uuid4().hex[:8]}"
    _check([engine, "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{lmtp_port}:2424",
            "-p", f"127.0.0.1:{imap_port}:1143", tag])
    try:
        _wait_for_port(lmtp_port)
        _wait_for_port(imap_port)
        _deliver_and_read_back(lmtp_port, imap_port)
    finally:
        _run([engine, "stop", name], timeout=120)
        _run([engine, "rmi", tag], timeout=120)


def test_build_requires_the_runtime_dependencies() -> None:
    """setup.py imports the package to generate the man pages, so the build
    needs its dependencies with the same ranges: change both together."""
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert set(pyproject["project"]["dependencies"]) <= set(
        pyproject["build-system"]["requires"])


def test_token_drop_in_copies_this_runs_token(tmp_path: Path) -> None:
    """The drop-in's ExecStartPost command, run with the test's paths: it
    waits for the token pymap writes after start, then installs it for the
    pipe user, mode 0600."""
    import pwd
    import threading

    require(os.geteuid() == 0, "installs a file for another user: needs root")
    text = (REPO / "contrib/systemd/pymap-admin-token.conf").read_text()
    match = re.search(r"^ExecStartPost=-\+/bin/sh -c '(.*)'$", text, re.M)
    assert match is not None, "the drop-in runs privileged (+) and may fail (-)"
    token, copy = tmp_path / "run/pymap/tmp/pymap/pymap-admin.token", tmp_path / "deliver.token"
    script = (match.group(1)
              .replace("/run/pymap/tmp/pymap/pymap-admin.token", str(token))
              .replace("/etc/pymap/deliver.token", str(copy))
              .replace("-o pymap-deliver", "-o nobody"))

    def pymap_starts() -> None:
        token.parent.mkdir(parents=True)
        token.write_text("this-run")

    threading.Timer(0.5, pymap_starts).start()
    _check(["/bin/sh", "-c", script], timeout=60)
    assert copy.read_text() == "this-run"
    assert copy.stat().st_mode & 0o777 == 0o600
    assert pwd.getpwuid(copy.stat().st_uid).pw_name == "nobody"


def test_pymap_unit_removes_stale_maildir_locks_before_start(tmp_path: Path) -> None:
    # The unit's own ExecStartPre, run on a maildir a killed pymap left.
    unit = (REPO / "contrib/systemd/pymap.service").read_text()
    (line,) = [line for line in unit.splitlines() if line.startswith("ExecStartPre=")]
    mail = tmp_path / "mail"
    locks = [mail / "alice/dovecot-uidlist.lock", mail / "alice/.Sent/dovecot-uidlist.lock",
             mail / "pymap-etc-passwd.lock"]
    kept = [mail / "alice/dovecot-uidlist", mail / "alice/cur/1.host:2,S",
            mail / "alice/.lock-notes/not-a-lock"]
    for path in locks + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    argv: list[str | Path] = [arg.replace("/var/lib/pymap/mail", str(mail))
                              for arg in shlex.split(line.removeprefix("ExecStartPre="))]
    _check(argv)
    assert [path for path in locks if path.exists()] == []
    assert [path for path in kept if not path.exists()] == []


def test_install_contrib_exit_statuses(tmp_path: Path) -> None:
    from io import StringIO

    from pymap_admin.outcomes import ExitStatus
    from pymap_deliver.main import main

    out, err = StringIO(), StringIO()
    assert main(["install-contrib", "--no-such-option"], stdout=out, stderr=err) \
        == ExitStatus.USAGE
    # A root that cannot hold folders: said in one line, EX_CANTCREAT.
    root = tmp_path / "a-file"
    root.write_text("")
    assert main(["install-contrib", "--root", str(root)], stdout=out, stderr=err) \
        == ExitStatus.CANTCREAT
    assert err.getvalue().splitlines()[-1].startswith("pymap-deliver install-contrib: ")
    assert "Traceback" not in err.getvalue()
