"""CPU per delivery of ``pymap-admin append``: ours against the published 0.12.1.

Both run in the same process tree, against the same real pymap server, with
the same message, alternately (so a noisy neighbour hurts both alike). The
CPU is the children's user+sys time from os.wait4: what an MTA pays per
message, start-up included. Target: ours at most 2/3 of the published one.

    .venv/bin/python benchmarks/append_cli.py [-n RUNS]
"""

from __future__ import annotations

import argparse
import compileall
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from devstack.localpymap import REPO, PymapServer, cleanup, pymap_executable

OURS = Path(sys.executable).parent / "pymap-admin"
MESSAGE = (b"From: sender@example.com\r\nTo: demouser\r\nSubject: benchmark\r\n"
           b"Message-Id: <benchmark@example.com>\r\n\r\n" + b"line of text\r\n" * 100)


def one(command: list[str], env: dict[str, str], data: Path) -> float:
    with data.open("rb") as stdin:
        proc = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not first.startswith(b"2.0.0"):
        raise RuntimeError(f"{command[0]} failed ({proc.returncode}): {first!r}")
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=20, help="deliveries each (default 20)")
    args = parser.parse_args()
    program = pymap_executable()
    if program is None:
        print("the pymap server is not installed (make pymap-venv)", file=sys.stderr)
        return 1
    published = program.parent / "pymap-admin"
    # A regular install compiles the bytecode; an editable one under
    # PYTHONDONTWRITEBYTECODE would recompile our modules on every run.
    compileall.compile_dir(str(REPO / "pymap_admin"), quiet=1)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        server = PymapServer(workdir=work / "pymap")
        server.start()
        try:
            data = work / "message.eml"
            data.write_bytes(MESSAGE)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PYMAP_ADMIN")}
            env["HOME"] = str(work)  # no config or token of the user's own
            env["XDG_CONFIG_HOME"] = str(work / "config")
            connection = ["--path", str(server.socket_path), "--token-file",
                          str(server.token_path)]
            commands = {"published": [str(published), *connection, "append", "demouser"],
                        "ours": [str(OURS), *connection, "append", "demouser"]}
            for command in commands.values():  # warm the page cache and the server
                one(command, env, data)
            totals = dict.fromkeys(commands, 0.0)
            for _ in range(args.runs):
                for name, command in commands.items():
                    totals[name] += one(command, env, data)
        finally:
            cleanup(server)
    per = {name: total / args.runs for name, total in totals.items()}
    for name, seconds in per.items():
        print(f"{name:>9}: {seconds * 1000:6.1f} ms CPU (user+sys) per delivery")
    ratio = per["ours"] / per["published"]
    print(f"    ratio: {ratio:.3f} ours/published (target <= 0.667) over {args.runs} runs each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
