"""Peak memory of pymap-deliver for big messages to many recipients.

The Reliability issue's cases, each against a fresh ``pymap-deliver`` process
in front of the zero-work admin server (a separate process, so that only our
own memory is measured):

* one 64 MiB message to 100 recipients (target: peak <= 4x the message size
  above the baseline);
* one 5 MB message to 100 recipients, with the byte budget and without it
  (``--max-bytes-in-flight`` larger than everything: the old behaviour, the
  anchor);
* 50 sessions at once, each with its own 5 MB message.

With ``--real``, one 64 MiB message into a real pymap (maildir) as well:
how long pymap takes to store it, which sizes the default call deadline.

Run: ``flock /work/bench.lock .venv/bin/python -m benchmarks.memory``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .harness import (
    Child,
    Deliver,
    make_message,
    proc_status,
    sampling_rss,
    work_directory,
    write_fake_token,
)

MIB = 1024 * 1024


@dataclass
class Result:
    case: str
    size: int
    baseline: int
    peak: int
    seconds: float
    replies: dict[str, int]

    @property
    def ratio(self) -> float:
        return (self.peak - self.baseline) / self.size


def lmtp_transaction(port: int, recipients: Sequence[str], data: bytes,
                     timeout: float = 900) -> list[str]:
    """MAIL, the RCPTs and DATA pipelined; the replies after the dot."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        stream = conn.makefile("rb")

        def reply() -> str:
            lines = []
            while True:
                line = stream.readline().decode()
                lines.append(line.rstrip())
                if line[3:4] != "-":
                    return lines[-1]

        reply()
        conn.sendall(b"LHLO bench.example\r\n")
        reply()
        conn.sendall(b"MAIL FROM:<load@example.com>\r\n"
                     + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in recipients)
                     + b"DATA\r\n")
        answers = [reply() for _ in range(len(recipients) + 2)]
        if not answers[-1].startswith("354"):
            return answers
        conn.sendall(data.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        replies = [reply() for _ in recipients]
        conn.sendall(b"QUIT\r\n")
        return replies


def measure(case: str, sock: Path, token: Path, workdir: Path, *, size: int,
            recipients: int, sessions: int = 1, extra: Sequence[str] = ()) -> Result:
    deliver = Deliver(sock, token, log=workdir / f"deliver-{len(case)}-{time.time_ns()}.log",
                      extra=["--log-level", "WARNING",
                             "--max-size", str(size + MIB), *extra])
    try:
        warm = lmtp_transaction(deliver.port, ["warm@example.com"],
                                make_message(4096, to="warm@example.com", subject="warm"))
        assert warm[0].startswith("250"), warm
        time.sleep(0.3)
        baseline = proc_status(deliver.pid, "VmRSS")
        Path(f"/proc/{deliver.pid}/clear_refs").write_text("5")  # resets VmHWM
        messages = [make_message(size, to="big@example.com", subject=f"big {n}")
                    for n in range(sessions)]
        rcpts = [f"big{n}@example.com" for n in range(recipients)]
        started = time.perf_counter()

        async def run_all() -> list[list[str]]:
            return list(await asyncio.gather(*(
                asyncio.to_thread(lmtp_transaction, deliver.port, rcpts, m) for m in messages)))

        with sampling_rss(deliver.pid) as sampled:
            replies = asyncio.run(run_all())
        seconds = time.perf_counter() - started
        peak = max(proc_status(deliver.pid, "VmHWM"), sampled[0])
    finally:
        deliver.stop()
    counts: dict[str, int] = {}
    for reply in (r for session in replies for r in session):
        counts[reply[:3]] = counts.get(reply[:3], 0) + 1
    result = Result(case, size * sessions, baseline, peak, seconds, counts)
    print(f"  {case}: peak {(peak - baseline) / MIB:.0f} MiB above a baseline of "
          f"{baseline / MIB:.0f} MiB = {result.ratio:.2f}x the data; replies {counts}; "
          f"{seconds:.1f}s", flush=True)
    return result


def real_pymap_append(size: int, workdir: Path) -> None:
    """One message of ``size`` into a real pymap (maildir): the call's time."""
    from devstack.localpymap import make_maildir_server, pymap_executable
    from pymap_admin import AdminClient, ConnectionSettings

    if pymap_executable() is None:
        print("  real pymap: not installed, skipped")
        return
    server = make_maildir_server(workdir / "pymap")
    server.start()
    try:
        async def run() -> float:
            settings = ConnectionSettings(path=server.socket_path,
                                          token_file=server.token_path, timeout=600)
            async with AdminClient(settings) as client:
                await client.set_user("big", password="pw")
                data = make_message(size, to="big", subject="big")
                started = time.perf_counter()
                await client.append("big", data)
                return time.perf_counter() - started

        seconds = asyncio.run(run())
        print(f"  real pymap (maildir): one Append of {size / MIB:.0f} MiB took "
              f"{seconds:.1f}s (the default call deadline is 60 s)", flush=True)
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--big", type=int, default=64 * MIB, help="size of the big message")
    parser.add_argument("--recipients", type=int, default=100)
    parser.add_argument("--real", action="store_true", help="also time one Append into pymap")
    parser.add_argument("--quick", action="store_true", help="skip the 50-session case "
                        "and the unbudgeted anchor")
    args = parser.parse_args(argv)
    results = []
    with work_directory("memory-bench-") as workdir:
        sock, token = workdir / "fake.sock", workdir / "fake.token"
        write_fake_token(token)
        fake = Child(["_fake", "--path", str(sock)], log=workdir / "fake.log")
        try:
            print("pymap-deliver -> zero-work admin server (machine shared; figures are "
                  "RSS, not time)", flush=True)
            results.append(measure(f"{args.big / MIB:.0f} MiB x {args.recipients} recipients",
                                   sock, token, workdir, size=args.big,
                                   recipients=args.recipients))
            results.append(measure(f"5 MB x {args.recipients} recipients", sock, token,
                                   workdir, size=5_000_000, recipients=args.recipients))
            if not args.quick:
                results.append(measure(f"5 MB x {args.recipients} recipients, no byte "
                                       "budget (anchor: the old behaviour)", sock, token,
                                       workdir, size=5_000_000, recipients=args.recipients,
                                       extra=["--max-bytes-in-flight", str(1 << 40)]))
                results.append(measure("50 sessions x 5 MB x 1 recipient", sock, token,
                                       workdir, size=5_000_000, recipients=1, sessions=50))
            if args.real:
                real_pymap_append(args.big, workdir)
        finally:
            fake.close()
    big = results[0]
    verdict = "met" if big.ratio <= 4 else "MISSED"
    print(f"\n64 MiB x 100 target (<= 4x above baseline): {big.ratio:.2f}x, {verdict}")
    failed = any(set(r.replies) - {"250"} for r in results)
    return 1 if failed or big.ratio > 4 else 0


if __name__ == "__main__":
    sys.exit(main())
