"""``append``: deliver one message, as an MTA's delivery agent.

postfix's pipe(8), ``mailbox_command`` and sendmail's local mailer decide
from the first line of output and the exit status; both come from the one
outcome table (:mod:`pymap_admin.outcomes`). Whatever goes wrong, including
our own bugs, is temporary (75) unless the recipient or the content was
definitively refused, so the MTA keeps the mail.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from ..errors import ConfigurationError
from ..message import crlf
from ..outcomes import ExitStatus, Outcome, delivered, outcome_for_error, too_big
from .args import CommandSpec, size
from .base import EXPECTED, Command, Field, dumps, result_fields, text_format

if TYPE_CHECKING:
    from ..client import AdminClient

__all__ = ["DEFAULT_MAX_SIZE", "SPECS", "AppendCommand", "AppendOptions", "crlf", "null_sender",
           "read_message"]

#: Largest message ``append`` sends, as pymap-deliver's LMTP SIZE limit.
DEFAULT_MAX_SIZE = 64 * 1024 * 1024


class AppendOptions(NamedTuple):
    username: str
    sender: str | None = None
    recipient: str | None = None
    mailbox: str | None = None
    timestamp: float | None = None
    data: Path | None = None
    flags: tuple[str, ...] = ()
    max_size: int = DEFAULT_MAX_SIZE

#: A leading mbox ``From `` line longer than this is not one.
_FROM_LINE_LIMIT = 64 * 1024


def null_sender(sender: str | None) -> str | None:
    """The envelope sender to send: "" for the null sender (``MAILER-DAEMON``,
    empty, ``<>``), angle brackets removed, None when not given."""
    if sender is None:
        return None
    text = sender.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if not text or text.upper() == "MAILER-DAEMON":
        return ""
    return text


def _read(stream: IO[bytes], limit: int) -> bytes:
    chunks = []
    while limit > 0:
        chunk = stream.read(min(limit, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        limit -= len(chunk)
    return b"".join(chunks)


def read_message(stream: IO[bytes], max_size: int) -> bytes | None:
    """The message from ``stream`` without a leading mbox ``From `` line,
    with CRLF line endings, or None if it is larger than ``max_size`` bytes
    (0: no limit)."""
    kept = _read(stream, 5)
    if kept == b"From ":
        line = stream.readline(_FROM_LINE_LIMIT)
        # Without a line end it is no mbox separator: keep it all.
        kept = b"" if line.endswith(b"\n") else kept + line
    if not max_size:
        return crlf(kept + stream.read())
    data = kept + _read(stream, max_size + 1 - len(kept))
    return None if len(data) > max_size else crlf(data)


class AppendCommand(Command[AppendOptions]):
    """Append a message directly to a user's mailbox."""

    async def execute(self) -> int:
        options = self.options
        try:
            data = self._read()
            if data is None:
                return self._finish(too_big(), None,
                                    f"message larger than --max-size {options.max_size} bytes")
            async with self.client() as client:
                result = await client.append(
                    options.username, data, sender=null_sender(options.sender),
                    recipient=options.recipient, mailbox=options.mailbox,
                    flags=options.flags, when=options.timestamp)
        except Exception as exc:
            # Anything at all, even a bug of ours: the row says "try again".
            return self._failed(exc)
        outcome = delivered(discarded=result.discarded)
        details: list[Field] = [*result_fields(result.response), ("mailbox", result.mailbox),
                                ("validity", result.validity), ("uid", result.uid)]
        if result.discarded:
            details = [*result_fields(result.response), ("discarded", True)]
        extra = {"mailbox": result.mailbox, "validity": result.validity, "uid": result.uid,
                 "discarded": result.discarded, "response": result.response}
        return self._finish(outcome, None, text_format(details).rstrip("\n"), extra)

    def client(self) -> AdminClient:
        """Deliveries come one process each: the user's login token is kept
        in the token cache for the next one (unless switched off)."""
        from ..client import AdminClient

        return AdminClient(self.settings(), short_lived=True)

    def _read(self) -> bytes | None:
        path = self.options.data
        if path is None:
            return read_message(self.streams.binary_stdin(), self.options.max_size)
        try:
            with path.open("rb") as handle:
                return read_message(handle, self.options.max_size)
        except OSError as exc:
            raise ConfigurationError(f"cannot read --data {path}: {exc.strerror}") from exc

    def _finish(self, outcome: Outcome, exc: BaseException | None, detail: str,
                extra: dict[str, Any] | None = None) -> int:
        """Status line first on stdout, details on stderr, status from the row.

        The exit status is what the MTA acts on, so output never decides it
        wrongly: if stdout cannot be written (closed, a full disk), a stored
        message still exits 0 (a bounce or a retry would duplicate it), and
        anything else exits 75 (try again; the reason is lost)."""
        if self.globals.json:
            data: dict[str, Any] = {
                "status": outcome.status_text, "code": outcome.code,
                "enhanced": outcome.enhanced, "exit_status": int(outcome.exit_status),
                "delivered": outcome.delivered, **(extra or {})}
            if exc is not None:
                data["error"] = self.error_data(exc)
            written = self._write_stdout(dumps(data) + "\n")
        else:
            written = self._write_stdout(outcome.status_text + "\n")
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if exc is not None or not outcome.delivered:
                self.error(detail if written else f"{detail} (and stdout is not writable)")
            elif detail:
                print(detail, file=self.streams.stderr)
        if not written:
            return int(ExitStatus.OK if outcome.delivered else ExitStatus.TEMPFAIL)
        return int(outcome.exit_status)

    def _write_stdout(self, text: str) -> bool:
        """Write and flush; False if stdout is closed or failing. A failing
        stdout is then replaced by the null device, so that no later flush
        (at exit) fails the process after the fact."""
        try:
            self.print(text)
            self.streams.stdout.flush()
            return True
        except (OSError, ValueError, AttributeError):
            pass
        if self.streams.stdout is sys.stdout or sys.stdout is None:
            # The buffered text would be flushed (and fail) again at exit.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives until exit)
        self.streams = self.streams._replace(stdout=sys.stdout)
        return False

    def _failed(self, exc: BaseException) -> int:
        if self.globals.debug:
            import traceback

            traceback.print_exception(exc, file=self.streams.stderr)
        detail = self.describe(exc)
        if not isinstance(exc, EXPECTED):
            detail = f"unexpected {type(exc).__name__}: {detail} (--debug shows more)"
        return self._finish(outcome_for_error(exc), exc, detail)

    def run(self) -> int:
        import asyncio

        try:
            return asyncio.run(self.execute())
        except BaseException as exc:  # KeyboardInterrupt, SystemExit, MemoryError
            return self._failed(exc)


def _arguments(append: Any, common: Any) -> None:
    append.add_argument("--from", metavar="ADDRESS", dest="sender",
                        help="the message envelope sender (MAILER-DAEMON or empty: "
                             "the null sender)")
    append.add_argument("--to", metavar="ADDRESS", dest="recipient",
                        help="the message envelope recipient")
    append.add_argument("--mailbox", metavar="NAME", help="the mailbox name (default: INBOX)")
    append.add_argument("--timestamp", metavar="SECONDS", type=float,
                        help="the message timestamp (default: now)")
    append.add_argument("--data", metavar="FILE", type=Path,
                        help="the message data (default: stdin)")
    append.add_argument("--max-size", metavar="BYTES", type=size, default=DEFAULT_MAX_SIZE,
                        help="refuse larger messages with 5.3.4 (default: 64 MiB; 0: no limit)")
    append.add_argument("username", help="the user name")
    flags = append.add_argument_group("message flags")
    flags.add_argument("--flag", dest="flags", action="append", metavar="VAL",
                       help="a message flag or keyword")
    for flag in ("flagged", "seen", "draft", "deleted", "answered"):
        flags.add_argument(f"--{flag}", dest="flags", action="append_const",
                           const="\\" + flag.capitalize(), help=f"the message is {flag}")


def _options(ns: Any, error: Any) -> tuple[str, AppendOptions, type[AppendCommand]]:
    return "append", AppendOptions(
        username=ns.username, sender=ns.sender, recipient=ns.recipient, mailbox=ns.mailbox,
        timestamp=ns.timestamp, data=ns.data, flags=tuple(ns.flags or ()),
        max_size=ns.max_size), AppendCommand


SPECS = {"append": CommandSpec(
    "append a message to a mailbox",
    "Deliver a message to a user's mailbox, as an MTA's delivery agent. The first line on "
    "stdout is the enhanced status (2.0.0 Message delivered, 5.1.1 User unknown, 4.4.1 "
    "...); details go to stderr; the exit status is 0, 67 (no such user), 77 (rejected), "
    "65 (too big) or 75 (try again later, also for any mistake on this command line). A "
    "leading mbox 'From ' line is removed and UNIX line endings become CRLF.",
    _arguments, _options)}
