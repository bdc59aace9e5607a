"""``pymap-admin``: parse the command line, run the one chosen command.

Only the chosen command's module is imported. Exit statuses, all from
:class:`pymap_admin.outcomes.ExitStatus`: 0 success, 1 failure (``check``:
not serving), ``append`` the outcome table's sysexits (0, 65, 67, 75, 77);
a mistake on the command line 64 (EX_USAGE), except for ``append`` (or a
command line whose command cannot be told), where it is 75 (EX_TEMPFAIL) so
that an MTA defers the mail instead of bouncing it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from typing import IO, Any, TextIO

from ..outcomes import ExitStatus
from .args import COMMANDS, PROG, UsageError, command_name, parse_args
from .base import Command, Streams

__all__ = ["main"]


def _usage_error(exc: UsageError, argv: Sequence[str], streams: Streams) -> int:
    command = exc.command or command_name(argv)
    helping = f"{PROG} {command} --help" if command else f"{PROG} --help"
    print(f"{PROG}: error: {exc.message} (see {helping})", file=streams.stderr)
    # "token attenuate" and the like are actions of a command: its first word.
    if command and command.split()[0] in COMMANDS and "append" not in argv:
        return ExitStatus.USAGE
    if "append" in argv:
        # An MTA reads the first line of output: say "try again later" in
        # its language too, from the outcome table.
        from ..errors import ConfigurationError
        from ..outcomes import outcome_for_error

        outcome = outcome_for_error(ConfigurationError(f"command line: {exc.message}"))
        print(outcome.status_text, file=streams.stdout)
    return ExitStatus.TEMPFAIL


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None,
         stderr: TextIO | None = None, stdin: IO[Any] | None = None) -> int:
    """Run ``pymap-admin`` with ``argv`` (default: ``sys.argv[1:]``) on the
    given streams (default: the process's); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    streams = Streams(stdout or sys.stdout, stderr or sys.stderr, stdin or sys.stdin)
    try:
        with redirect_stdout(streams.stdout), redirect_stderr(streams.stderr):
            options = parse_args(args)
    except UsageError as exc:
        return _usage_error(exc, args, streams)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else ExitStatus.OK
    held = None
    if options.globals.debug:
        from ..logs import configure_logging

        configure_logging(logging.DEBUG, streams.stderr)
    else:
        held = _hold_warnings(streams.stderr)
    command_class: type[Command[Any]] = options.runner
    try:
        status = command_class(options, streams).run()
    finally:
        if held is not None:
            _release_warnings(held)
    if argv is None and stdout is None and stderr is None:
        _exit_now(status)
    return status


class _HeldWarnings(logging.Handler):
    """Keeps the records (at most 1000) until :meth:`write_out` writes them
    (logging.handlers.MemoryHandler would do, at ~2 ms of imports)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(logging.WARNING)
        self.stream = stream
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < 1000:
            self.records.append(record)

    def write_out(self) -> None:
        # Not "release": that is Handler's lock, released after each emit.
        records, self.records = self.records, []
        target = logging.StreamHandler(self.stream)
        target.setFormatter(self.formatter)
        for record in records:
            target.handle(record)
        self.close()


def _hold_warnings(stream: TextIO) -> _HeldWarnings:
    """Library warnings (without --debug) go to stderr after the command's own
    output, never before it: postfix's pipe(8) reads stdout and stderr as one
    stream and takes a status code only from its start."""
    held = _HeldWarnings(stream)
    held.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    logging.getLogger().addHandler(held)
    return held


def _release_warnings(held: _HeldWarnings) -> None:
    logging.getLogger().removeHandler(held)
    held.write_out()


def _exit_now(status: int) -> None:
    """Leave without the interpreter's finalization, which costs a delivery
    ~18 ms of CPU (a fifth of it) tearing down modules it will never use
    again. Only as the console script: everything is written and closed by
    now, and the output streams are flushed here.

    ``PYMAP_ADMIN_FAST_EXIT=no`` switches this off (for a profiler, a
    coverage tool or an ``atexit`` handler that must run)."""
    import os

    if os.environ.get("PYMAP_ADMIN_FAST_EXIT", "").strip().lower() in ("0", "no", "false",
                                                                        "off"):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        return  # let the normal exit report it
    os._exit(status)
