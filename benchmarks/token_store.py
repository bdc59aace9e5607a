"""What pymap's token store holds after deliveries on the login-token fast path.

For the dict and maildir backends: 1,000 deliveries to 50 users through
pymap-deliver (smtp-source -L, 10 sessions, 50 recipients per message), then
5 restarts of pymap-deliver and 5 restarts of pymap (100 deliveries after
each), then 250 deliveries by ``pymap-admin append`` processes (one per
message, as pipe(8) runs it). After each phase:

* maildir: the records in its ``pymap-tokens`` file, read from the file;
* dict: the login tokens minted since pymap's last start, from the
  ``minted a login token`` lines of pymap-deliver's log and of append's
  ``--debug`` output (the dict store lives in pymap's memory; it only grows by
  such mints and is emptied by a restart).

Without a token cache, each message (pipe) or each process start (daemon)
would mint again; the first number to compare against is the deliveries.

    .venv/bin/python -m benchmarks.token_store
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from .fast_path import token_records
from .harness import (
    Deliver,
    imap_count,
    make_message,
    recipients_of,
    set_users,
    smtp_source,
    smtp_source_installed,
    work_directory,
)

USERS = 50
MINTED = "minted a login token"


class Run:
    def __init__(self, backend: str, workdir: Path) -> None:
        from devstack.localpymap import PymapServer, make_maildir_server

        self.backend = backend
        self.workdir = workdir
        self.pymap = (PymapServer(workdir=workdir / "pymap", backend=("dict",))
                      if backend == "dict" else make_maildir_server(workdir / "pymap"))
        self.users = recipients_of("user@example.com", USERS)
        self.deliver: Deliver | None = None
        self.deliver_starts = 0
        #: Mints counted in logs since pymap's last start (dict's store).
        self.minted_since_start = 0
        self.minted_total = 0
        self.deliveries = 0

    def start_pymap(self) -> None:
        self.pymap.start()
        self.minted_since_start = 0
        if self.backend == "dict" or self.pymap.starts == 1:
            asyncio.run(set_users(self.pymap.socket_path, self.pymap.token_path, self.users))

    def start_deliver(self) -> None:
        self.deliver_starts += 1
        self.deliver = Deliver(self.pymap.socket_path, self.pymap.token_path,
                               log=self.workdir / f"deliver-{self.deliver_starts}.log")

    def stop_deliver(self) -> None:
        assert self.deliver is not None
        self.deliver.stop()
        self._count(self.deliver.log.read_text(errors="replace"))
        self.deliver = None

    def _count(self, log: str) -> None:
        minted = log.count(MINTED)
        self.minted_since_start += minted
        self.minted_total += minted

    def lmtp(self, messages: int) -> None:
        assert self.deliver is not None
        smtp_source(self.deliver.port, sessions=10, messages=messages, recipients=USERS,
                    size=4096, to=self.users[0], subject="tokens", timeout=600)
        self.deliveries += messages * USERS

    def pipe(self, per_user: int) -> None:
        program = Path(sys.executable).parent / "pymap-admin"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYMAP_ADMIN")}
        env["XDG_CACHE_HOME"] = str(self.workdir / "pipe-cache")
        data = make_message(4096, to=self.users[0], subject="tokens")
        for _ in range(per_user):
            for user in self.users:
                done = subprocess.run(
                    [str(program), "--debug", "--path", str(self.pymap.socket_path),
                     "--token-file", str(self.pymap.token_path), "append", user],
                    input=data, capture_output=True, env=env, timeout=120)
                if done.returncode != 0:
                    raise RuntimeError(f"append failed: {done.stdout!r} "
                                       f"{done.stderr.decode(errors='replace')[-500:]}")
                self._count(done.stderr.decode(errors="replace"))
                self.deliveries += 1

    def store(self) -> str:
        if self.backend == "maildir":
            return (f"{token_records(Path(self.pymap.backend[1]))} records in pymap-tokens "
                    f"(mints logged: {self.minted_total})")
        return (f"{self.minted_since_start} tokens minted since pymap's last start "
                f"(all mints: {self.minted_total})")

    def report(self, phase: str) -> None:
        print(f"  {self.backend:<8} {phase:<46} deliveries so far {self.deliveries:>5}: "
              f"{self.store()}", flush=True)


def run(backend: str, workdir: Path) -> None:
    state = Run(backend, workdir)
    state.start_pymap()
    try:
        state.start_deliver()
        state.lmtp(1000 // USERS)
        state.stop_deliver()
        state.report("1,000 deliveries to 50 users (pymap-deliver)")
        for _ in range(5):
            state.start_deliver()
            state.lmtp(2)
            state.stop_deliver()
        state.report("+ 5 pymap-deliver restarts, 100 after each")
        for _ in range(5):
            state.pymap.stop()
            state.start_pymap()
            state.start_deliver()
            state.lmtp(2)
            state.stop_deliver()
        state.report("+ 5 pymap restarts, 100 after each")
        state.pipe(5)
        state.report("+ 250 by pymap-admin append (one process each)")
        stored = sum(imap_count(state.pymap.imap_port, user) for user in state.users)
        print(f"  {backend:<8} IMAP: {stored} messages in the 50 INBOXes"
              + (" (dict: since the last restart)" if backend == "dict" else ""), flush=True)
    finally:
        if state.deliver is not None:
            state.deliver.stop()
        state.pymap.stop()


def main() -> int:
    if not smtp_source_installed():
        return 1
    with work_directory("token-store-") as workdir:
        print("pymap's token store on the login-token fast path (pymap 0.36.7):", flush=True)
        for backend in ("dict", "maildir"):
            run(backend, workdir / backend)
    return 0

if __name__ == "__main__":
    sys.exit(main())
