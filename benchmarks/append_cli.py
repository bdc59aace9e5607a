"""Wall time and CPU per delivery of ``pymap-admin append``: ours against the published 0.12.1.

Both run in the same process tree, against the same real pymap server, with
the same message, alternately (so a noisy neighbour hurts both alike), after
one warm-up delivery each to the user (ours mints the user's login token
then and keeps it in its token cache, as it would after its first delivery
to a user in production). The CPU is the children's user+sys time from
os.wait4: what an MTA pays per message, start-up included; the wall time is
from start to exit. Targets (issue 9): ours at most 0.5x the published one's
wall time, and at most 2/3 of its CPU.

    .venv/bin/python -m benchmarks.append_cli [-n RUNS]
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devstack.localpymap import REPO, PymapServer, cleanup, pymap_executable

EDITABLE = Path(sys.executable).parent / "pymap-admin"
MESSAGE = (b"From: sender@example.com\r\nTo: demouser\r\nSubject: benchmark\r\n"
           b"Message-Id: <benchmark@example.com>\r\n\r\n" + b"line of text\r\n" * 100)


def one(command: list[str], env: dict[str, str], data: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one delivery."""
    started = time.perf_counter()
    with data.open("rb") as stdin:
        proc = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not first.startswith(b"2.0.0"):
        raise RuntimeError(f"{command[0]} failed ({proc.returncode}): {first!r}")
    return wall, usage.ru_utime + usage.ru_stime


def install_ours(folder: Path) -> Path:
    """``pymap-admin`` of a regular install of this checkout into a fresh
    environment under ``folder``: a wheel built without build isolation
    (with the running environment's build tools), installed with the
    dependency versions of the running environment, byte-compiled as pip
    does."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def run(*argv: str | Path) -> str:
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                              env=env, check=True).stdout

    wheels = folder / "wheels"
    # As ``python -m build`` does: the wheel from the sdist, so that nothing
    # stale in the checkout's build/ gets in. Without isolation where this
    # environment's build tools will do (quicker, offline); else isolated
    # (a fresh venv's bundled setuptools is older than the project needs).
    build: list[str | Path] = [sys.executable, "-m", "build", "--outdir", wheels, REPO]
    try:
        run(*build, "--no-isolation")
    except subprocess.CalledProcessError:
        shutil.rmtree(wheels, ignore_errors=True)
        run(*build)
    (wheel,) = wheels.glob("*.whl")
    constraints = folder / "constraints.txt"
    constraints.write_text(run(sys.executable, "-m", "pip", "freeze", "--exclude-editable"))
    venv = folder / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--constraint", constraints,
        wheel)
    return venv / "bin" / "pymap-admin"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=20, help="deliveries each (default 20)")
    parser.add_argument("--admin-token-too", action="store_true",
                        help="also ours with login tokens switched off (the 0.3 s path)")
    parser.add_argument("--editable", action="store_true",
                        help="run ours from this (editable) development environment instead "
                             "of a regular install of a wheel (the way before 2026-11-26)")
    args = parser.parse_args()
    program = pymap_executable()
    if program is None:
        print("the pymap server is not installed (make pymap-venv)", file=sys.stderr)
        return 1
    published = program.parent / "pymap-admin"
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if args.editable:
            # A regular install compiles the bytecode; an editable one under
            # PYTHONDONTWRITEBYTECODE would recompile our modules on every run.
            compileall.compile_dir(str(REPO / "pymap_admin"), quiet=1)
            ours_program = EDITABLE
            installed = "editable install in the development environment"
        else:
            ours_program = install_ours(work / "ours")
            installed = "regular install of a wheel of this checkout, private environment"
        server = PymapServer(workdir=work / "pymap")
        server.start()
        try:
            data = work / "message.eml"
            data.write_bytes(MESSAGE)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PYMAP_ADMIN")}
            env["HOME"] = str(work)  # no config or token of the user's own
            env["XDG_CONFIG_HOME"] = str(work / "config")
            env["XDG_CACHE_HOME"] = str(work / "cache")  # ours keeps login tokens here
            connection = ["--path", str(server.socket_path), "--token-file",
                          str(server.token_path)]
            ours = [str(ours_program), *connection, "append", "demouser"]
            commands = {"published": ([str(published), *connection, "append", "demouser"], env),
                        "ours": (ours, env)}
            if args.admin_token_too:
                commands["ours, admin token"] = (ours, {**env, "PYMAP_ADMIN_LOGIN_TOKENS": "no"})
            # Warm the page cache and the server; ours mints demouser's token.
            for command, command_env in commands.values():
                one(command, command_env, data)
            walls = dict.fromkeys(commands, 0.0)
            cpus = dict.fromkeys(commands, 0.0)
            for _ in range(args.runs):
                for name, (command, command_env) in commands.items():
                    wall, cpu = one(command, command_env, data)
                    walls[name] += wall
                    cpus[name] += cpu
            cached = sorted(p.name for p in (work / "cache" / "pymap" / "login-tokens").iterdir()
                            if not p.name.endswith(".lock"))
        finally:
            cleanup(server)
    print(f"pymap-admin append into pymap 0.36.7 (dict), {args.runs} runs each, alternating "
          f"({os.cpu_count()} CPUs, shared machine, load {os.getloadavg()[0]:.2f})")
    print("    published: pymap-admin 0.12.1, regular install in pymap's environment")
    print(f"         ours: {installed}")
    for name in commands:
        print(f"{name:>17}: {walls[name] / args.runs * 1000:6.1f} ms wall, "
              f"{cpus[name] / args.runs * 1000:6.1f} ms CPU (user+sys) per delivery")
    print(f"    wall: {walls['ours'] / walls['published']:.3f} ours/published (target <= 0.5)")
    print(f"     CPU: {cpus['ours'] / cpus['published']:.3f} ours/published (target <= 0.667)")
    print(f"    login tokens in ours' cache: {len(cached)} (one user delivered to)")
    return 0

if __name__ == "__main__":
    sys.exit(main())
