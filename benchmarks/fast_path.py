"""pymap-deliver into a real pymap on the login-token fast path, against its anchor.

For each backend (dict, maildir) and each recipient count (1, 5), one run
measures, interleaved round by round:

* the anchor: raw concurrent ``Append`` calls, ``sessions x recipients`` in
  flight on one connection, each with a login token minted for its user
  (the client library without LMTP; its fast-path counters are printed to
  show every measured call used a login token);
* pymap-deliver as deployed (login tokens by default, INFO log line per
  recipient) under postfix's ``smtp-source -L``, ``sessions`` sessions.

Targets (issue 9): dict r=1 >= 0.75x the anchor, maildir r=1 >= 0.85x;
r=5 reported. Deliveries are counted on the server side (pymap-deliver's
log lines and IMAP read-back). The pymap server, pymap-deliver and the load
generators are separate processes on the same machine; nothing asserts a
time. Afterwards, what maildir's token store (``pymap-tokens``) holds.

    .venv/bin/python -m benchmarks.fast_path [--quick] [--backends dict,maildir]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from .harness import (
    Options,
    Series,
    exit_status,
    load_options,
    load_parser,
    print_table,
    smtp_source_installed,
    versus_raw_append,
    work_directory,
)


def token_records(maildir: Path) -> int:
    path = maildir / "pymap-tokens"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


TARGETS = {("dict", 1): 0.75, ("maildir", 1): 0.85}


def bench_backend(backend: str, opts: Options) -> list[Series]:
    from devstack.localpymap import PymapServer, make_maildir_server

    workdir = opts.workdir / backend
    pymap = (PymapServer(workdir=workdir / "pymap") if backend == "dict"
             else make_maildir_server(workdir / "pymap"))
    pymap.start()
    try:
        results = versus_raw_append(
            pymap, opts, prefix=f"{backend}: ", log=workdir / "deliver.log",
            targets={r: target for (b, r), target in TARGETS.items() if b == backend},
            cache=opts.workdir / "raw-cache")
        if backend == "maildir":
            users = 2 * sum(opts.recipients)
            print(f"  maildir token store after the run: "
                  f"{token_records(Path(pymap.backend[1]))} records "
                  f"({users} users delivered to)", flush=True)
    finally:
        pymap.stop()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    quick_seconds = 1.5
    parser = load_parser(__doc__, quick_seconds=quick_seconds,
                         quick_help="one short round each")
    parser.add_argument("--backends", default="dict,maildir")
    args = parser.parse_args(argv)
    if not smtp_source_installed():
        return 1
    results: list[Series] = []
    with work_directory("fast-path-bench-", keep=args.keep) as workdir:
        opts = load_options(args, workdir, quick_seconds=quick_seconds)
        for backend in args.backends.split(","):
            print(f"real pymap 0.36.7, {backend}:", flush=True)
            results += bench_backend(backend, opts)
        print_table("login-token fast path", opts, results, width=52)
    return exit_status(results)

if __name__ == "__main__":
    sys.exit(main())
