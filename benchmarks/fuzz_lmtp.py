"""A fuzzing campaign against the LMTP command and address parser.

The target is ``tests/fuzz_lmtp.py`` (the same one CI runs for a bounded
number of inputs). With atheris installed (``pip install atheris``; it has
wheels for CPython 3.11 on x86-64), the campaign is coverage-guided: libFuzzer
mutates inputs toward new branches of the instrumented modules. Without it,
hypothesis generates inputs for the same duration. Either way the report is
the number of inputs tried and the crashes found (each saved to a file).

Run: ``flock /work/bench.lock .venv/bin/python -m benchmarks.fuzz_lmtp --seconds 300``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _atheris_child(target: str, argv: list[str]) -> None:
    """Runs inside the child process: instrument, then fuzz until libFuzzer stops."""
    import atheris

    with atheris.instrument_imports(include=["pymap_deliver", "pymap_admin.outcomes"]):
        from tests import fuzz_lmtp

    def one_input(data: bytes) -> None:
        if target == "line":
            fuzz_lmtp.check_command_line(data)
        else:
            # The first byte chooses the chunk size, the rest is the session.
            fuzz_lmtp.check_session(data[1:], chunk=(data[0] if data else 1) % 64 + 1)

    atheris.Setup([sys.argv[0], *argv], one_input)
    atheris.Fuzz()


def run_atheris(target: str, seconds: int, workdir: Path) -> tuple[int, list[Path], str]:
    corpus = workdir / f"corpus-{target}"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes = workdir / f"crashes-{target}"
    crashes.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.fuzz_lmtp", "--_child", target, "--",
         f"-max_total_time={seconds}", f"-artifact_prefix={crashes}/", "-max_len=4096",
         "-print_final_stats=1", str(corpus)],
        cwd=REPO, capture_output=True, text=True, check=False)
    match = re.search(r"Done (\d+) runs", done.stderr) or re.search(
        r"stat::number_of_executed_units:\s*(\d+)", done.stderr)
    runs = int(match.group(1)) if match else 0
    return runs, sorted(crashes.iterdir()), done.stderr[-3000:] if done.returncode else ""


def run_hypothesis(target: str, seconds: int, workdir: Path) -> tuple[int, list[Path], str]:
    """Hypothesis for ``seconds``: the CI strategies, many more examples."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests import fuzz_lmtp

    tried = 0
    crashes: list[Path] = []
    strategy = (st.one_of(st.binary(max_size=600), fuzz_lmtp.COMMAND_LINES.map(
        lambda c: c.encode("utf-8", "replace"))) if target == "line" else
        st.tuples(st.lists(fuzz_lmtp.SESSION_LINES, max_size=60).map(b"".join),
                  st.integers(1, 64)))

    @settings(max_examples=2000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def campaign(value: object) -> None:
        nonlocal tried
        tried += 1
        try:
            if target == "line":
                assert isinstance(value, bytes)
                fuzz_lmtp.check_command_line(value)
            else:
                assert isinstance(value, tuple)
                fuzz_lmtp.check_session(*value)
        except Exception:
            path = workdir / f"crash-{target}-{len(crashes)}"
            path.write_bytes(repr(value).encode())
            crashes.append(path)
            raise

    deadline = time.monotonic() + seconds
    detail = ""
    while time.monotonic() < deadline:
        try:
            campaign()
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            break
    return tried, crashes, detail


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fuzz the LMTP command and address parser")
    parser.add_argument("--seconds", type=int, default=120, help="per target (default: 120)")
    parser.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        _atheris_child(args._child, args.rest)
        return 0
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-lmtp-"))
    print(f"engine: {engine}; {args.seconds} s per target; artifacts in {workdir}",
          flush=True)
    total_crashes = 0
    for target in ("line", "session"):
        runner = run_atheris if engine == "atheris" else run_hypothesis
        started = time.monotonic()
        tried, crashes, detail = runner(target, args.seconds, workdir)
        elapsed = time.monotonic() - started
        total_crashes += len(crashes)
        print(f"  {target:8} {tried:>10,} inputs in {elapsed:.0f}s, {len(crashes)} crashes"
              + "".join(f"\n    {path}" for path in crashes), flush=True)
        if detail:
            print(f"    {detail}", flush=True)
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
