"""LMTP load and size benchmark of pymap-deliver, printed as ratios to anchors.

One run measures, with postfix's ``smtp-source -L`` as the client (10
sessions, 4 KB messages, 1 and 5 recipients per message):

* aiosmtpd's bare LMTP server with a no-op handler answering 250 per
  recipient: the ceiling of the library;
* pymap-deliver into a zero-work admin server (the tests' fake, in a
  process of its own): ratio to the bare rate, target >= 0.70;
* pymap-deliver into a real pymap 0.36.7 beside the raw concurrent
  ``Append`` rate at the same concurrency (sessions x recipients calls in
  flight, same message size, same number of deliveries): target >= 0.90;

and then delivers one 50 MB message and reports the peak RSS of the
pymap-deliver process above its idle baseline, relative to the message size
(target <= 3x).

Every server under test runs in its own process, the load generator in
another, and only one load runs at a time. Rates are recipient-deliveries per
second; each measured run is preceded by a pilot run that warms the server
(connections, recipient cache, token cache) and sizes the measured run to
about ``--seconds``. Deliveries are counted on the server side (the no-op
handler, the fake's Append counter, pymap-deliver's log lines, IMAP on the real
pymap) and must equal messages x recipients. Nothing here asserts a time.

    .venv/bin/python -m benchmarks.lmtp_load            # full run, a few minutes
    .venv/bin/python -m benchmarks.lmtp_load --quick    # about a minute

The parts: :mod:`benchmarks.servers` (the servers and the raw Append load,
each in a process of its own), :mod:`benchmarks.harness` (processes, loads,
series against their anchors), :mod:`benchmarks.big_message` (peak RSS).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Sequence

from .big_message import Memory, bench_big
from .harness import (
    DOMAIN,
    Child,
    Deliver,
    Options,
    Series,
    exit_status,
    imap_size,
    lmtp_load,
    load_options,
    load_parser,
    measure,
    print_table,
    proc_cpu,
    set_users,
    smtp_source_installed,
    versus_raw_append,
    work_directory,
    write_fake_token,
)

BIG_SIZE = 50_000_000


def bench_fake(opts: Options) -> tuple[list[Series], list[Memory]]:
    """Bare aiosmtpd and pymap-deliver into the zero-work fake, interleaved."""
    sock = opts.workdir / "fake.sock"
    token = opts.workdir / "fake.token"
    write_fake_token(token)
    results: list[Series] = []
    memory: list[Memory] = []
    bare = Child(["_bare", "--port", "0"], log=opts.workdir / "bare.log")
    fake = Child(["_fake", "--path", str(sock)], log=opts.workdir / "fake.log")
    try:
        bare_port = int(bare.ready.split()[1])
        deliver = Deliver(sock, token, log=opts.workdir / "deliver-fake.log",
                          extra=["--log-level", opts.log_level])
        try:
            for rcpts in opts.recipients:
                anchor = Series("aiosmtpd bare LMTP, no-op handler", rcpts)
                subject = Series("pymap-deliver -> zero-work fake", rcpts)
                measure(
                    opts, rcpts,
                    anchor, lmtp_load(bare_port, opts, rcpts, f"bare@{DOMAIN}",
                                      counted=lambda: int(bare.stats()["deliveries"]),
                                      server_cpu=lambda: float(bare.stats()["cpu"])),
                    subject, lmtp_load(deliver.port, opts, rcpts, f"fake@{DOMAIN}",
                                       counted=lambda: int(fake.stats()["Append"]),
                                       server_cpu=lambda: proc_cpu(deliver.pid)))
                if subject.samples and anchor.samples:
                    subject.note = (f"{subject.rate / anchor.rate:.2f} of bare "
                                    "(target >= 0.70)")
                results += [anchor, subject]
        finally:
            deliver.stop()
        if opts.big_size:
            memory.append(bench_big("zero-work fake", sock, token, opts,
                                    stored=lambda: int(fake.stats()["last"])))
    finally:
        fake.close()
        bare.close()
    return results, memory


def bench_real(opts: Options) -> tuple[list[Series], list[Memory]]:
    """pymap-deliver into a real pymap against raw Append
    (:func:`versus_raw_append`), then the big message."""
    from devstack.localpymap import PymapServer, pymap_executable

    results: list[Series] = []
    memory: list[Memory] = []
    if pymap_executable() is None:
        print("real pymap: not installed (make pymap-venv), skipped", flush=True)
        return results, memory
    pymap = PymapServer(workdir=opts.workdir / "pymap")
    pymap.start()
    try:
        results = versus_raw_append(pymap, opts, prefix="pymap: ",
                                    log=opts.workdir / "deliver-pymap.log",
                                    targets=dict.fromkeys(opts.recipients, 0.90))
        if opts.big_size and opts.big_real:
            big_user = f"big-{uuid.uuid4().hex[:8]}@{DOMAIN}"
            asyncio.run(set_users(pymap.socket_path, pymap.token_path, [big_user]))
            memory.append(bench_big("real pymap", pymap.socket_path, pymap.token_path, opts,
                                    to=big_user,
                                    stored=lambda: imap_size(pymap.imap_port, big_user)))
    finally:
        pymap.stop()
    return results, memory


# --- output --------------------------------------------------------------------

def mib(value: int) -> str:
    return f"{value / 2**20:.1f}"


def print_tables(opts: Options, results: Sequence[Series], memory: Sequence[Memory]) -> None:
    print_table("LMTP load", opts, results)
    print("srv cpu: CPU of the server process per delivery (bare aiosmtpd; pymap-deliver "
          "for the fake rows;\n         pymap for the real rows). agent: pymap-deliver's "
          "own CPU per delivery into real pymap.")
    if memory:
        print()
        print(f"One {opts.big_size}-byte message, one recipient, through a fresh pymap-deliver "
              "(baseline = its RSS after one small delivery)")
        header = (f"{'into':<16} {'baseline MiB':>12} {'VmHWM MiB':>10} {'sampled MiB':>11} "
                  f"{'sec':>6} {'stored bytes':>12}  (peak - baseline) / size")
        print(header)
        print("-" * (len(header) + 4))
        for m in memory:
            print(f"{m.target:<16} {mib(m.baseline):>12} {mib(m.peak):>10} "
                  f"{mib(m.sampled_peak):>11} {m.seconds:>6.1f} {m.stored:>12}  "
                  f"{m.ratio:.2f}x (target <= 3x); reply: {m.reply}")


def main(argv: Sequence[str] | None = None) -> int:
    quick_seconds = 1.0
    parser = load_parser(__doc__, quick_seconds=quick_seconds,
                         quick_help="short runs (about a second each) and a 10 MB message")
    parser.add_argument("--big-size", type=int, default=None,
                        help=f"the big message in bytes, 0 to skip (default: {BIG_SIZE})")
    parser.add_argument("--no-real", action="store_true", help="skip the real pymap")
    parser.add_argument("--no-big-real", action="store_true",
                        help="send the big message to the fake only")
    args = parser.parse_args(argv)
    if not smtp_source_installed():
        return 1
    big = args.big_size if args.big_size is not None else (
        10_000_000 if args.quick else BIG_SIZE)
    with work_directory("lmtp-bench-", keep=args.keep) as workdir:
        opts = load_options(args, workdir, quick_seconds=quick_seconds, big_size=big,
                            real=not args.no_real, big_real=not args.no_big_real)
        print("bare aiosmtpd and pymap-deliver into the zero-work fake:", flush=True)
        results, memory = bench_fake(opts)
        if opts.real:
            print("real pymap 0.36.7 (dict backend):", flush=True)
            real, big_real = bench_real(opts)
            results += real
            memory += big_real
        print_tables(opts, results, memory)
    return exit_status(results)

if __name__ == "__main__":
    sys.exit(main())
