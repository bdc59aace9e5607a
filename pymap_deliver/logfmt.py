"""Logs in one format, logfmt, to stderr, syslog or journald.

Every line is ``key=value`` pairs, values quoted when they need it
(``status="250 2.0.0 Message delivered 5f1c.1"``), so that any logfmt
parser reads it::

    ts=2026-11-26T19:35:31.123Z level=info logger=pymap_deliver.delivery
    session=5f1c0a9e3b2d msg=delivered id=5f1c0a9e3b2d.1 from=<a@example.com> ...

``session=`` comes from the record's ``session`` attribute or, without one,
from :data:`SESSION`, a context variable an LMTP session sets in the tasks
it runs: call sites below the session (delivery, recipient checks) need not
pass it. A call site logs ``event("delivered", rcpt=…, status=…)``: the
pairs are the message, so any handler sees them.

Targets: ``stderr`` (timestamps included), ``journald`` (stderr with
sd-daemon ``<N>`` priority prefixes, no timestamps: the journal adds its
own; ``journalctl -p warning`` then works), ``syslog`` (``/dev/log``, facility
mail, like postfix), or a file (reopened on SIGHUP, for logrotate).
"""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

__all__ = ["SESSION", "Event", "LogfmtFormatter", "configure", "event", "parse", "quote",
           "reopen_files", "session_context"]

#: The LMTP session a task works for.
SESSION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pymap_deliver_session", default=None)

#: sd-daemon(3) priorities (syslog's) by logging level.
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
               logging.CRITICAL: 2}

_BARE = re.compile(r"[^\s\"=\\\x00-\x1f\x7f]+")
_bare = _BARE.fullmatch


def quote(value: object) -> str:
    """A logfmt value: as it is when it can be, else in double quotes with
    backslash escapes (a line break never splits a log line)."""
    if type(value) is int:
        return str(value)
    text = "" if value is None else str(value)
    if _bare(text):
        return text
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    escaped = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", escaped)
    return f'"{escaped}"'


class Event(str):
    """A log message already in logfmt pairs: ``msg=delivered id=… status="…"``.
    The data is in the message itself, so every handler (and pytest's
    caplog) sees it, not only ours."""


def event(name: str, values: Mapping[str, object] | None = None, /,
          **more: object) -> Event:
    """``msg=name`` and the pairs (None left out); ``session`` goes first."""
    pairs = {**values, **more} if values else more
    session = pairs.pop("session", None)
    parts = [f"session={quote(session)}"] if session is not None else []
    parts.append(f"msg={quote(name)}")
    parts += [f"{key}={quote(value)}" for key, value in pairs.items() if value is not None]
    return Event(" ".join(parts))


def session_context(session_id: str) -> contextvars.Context:
    """A context in which :data:`SESSION` is ``session_id``: run a session's
    tasks in it (``loop.create_task(coro, context=...)``)."""
    context = contextvars.copy_context()
    context.run(SESSION.set, session_id)
    return context


class LogfmtFormatter(logging.Formatter):
    def __init__(self, *, timestamps: bool = True, priority_prefix: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps
        self.priority_prefix = priority_prefix
        self._stamp_second = -1
        self._stamp = ""

    def _second(self, created: float) -> str:
        # The same second for many lines under load: formatted once.
        second = int(created)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._stamp

    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, object]] = []
        if self.timestamps:
            pairs.append(("ts", f"{self._second(record.created)}.{int(record.msecs):03d}Z"))
        pairs += [("level", record.levelname.lower()), ("logger", record.name)]
        if isinstance(record.msg, Event) and not record.args:
            body = str(record.msg)
        else:
            body = f"msg={quote(record.getMessage())}"
        session = getattr(record, "session", None) or SESSION.get()
        if session and not body.startswith("session="):
            pairs.append(("session", session))
        if record.exc_info and record.exc_info[0] is not None:
            body += (f" error={quote(f'{record.exc_info[0].__name__}: {record.exc_info[1]}')}"
                     f" traceback={quote(self.formatException(record.exc_info))}")
        line = " ".join([*(f"{key}={quote(value)}" for key, value in pairs), body])
        if self.priority_prefix:
            line = f"<{_PRIORITIES.get(record.levelno, 6)}>{line}"
        return line


def parse(line: str) -> dict[str, str]:
    """One logfmt line back into its pairs (for tests and tools)."""
    pairs: dict[str, str] = {}
    for match in re.finditer(r'(\w+)=("((?:[^"\\]|\\.)*)"|[^\s]*)', line):
        key, raw, quoted = match.group(1), match.group(2), match.group(3)
        if quoted is not None:
            value = re.sub(r"\\(x[0-9a-f]{2}|.)", _unescape, quoted)
        else:
            value = raw
        pairs[key] = value
    return pairs


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code.startswith("x") and len(code) == 3:
        return chr(int(code[1:], 16))
    return {"n": "\n", "r": "\r", "t": "\t"}.get(code, code)


def configure(level: int, *, target: str = "stderr", stream: TextIO | None = None,
              log_file: Path | None = None, syslog_address: str = "/dev/log") -> None:
    """Route every log record of the process to one handler in logfmt."""
    handler: logging.Handler
    if log_file is not None:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(LogfmtFormatter())
    elif target == "syslog":
        handler = logging.handlers.SysLogHandler(
            address=syslog_address, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        # syslog adds the time and host; RFC 3164's tag names the program.
        handler.ident = f"pymap-deliver[{os.getpid()}]: "
        handler.setFormatter(LogfmtFormatter(timestamps=False))
    elif target == "journald":
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(LogfmtFormatter(timestamps=False, priority_prefix=True))
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # Our lines name no thread, process or source line: the logging HOWTO's
    # "Optimization" switches keep each record from looking them up (a
    # delivery logs a line per recipient).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    # hpack logs every header it encodes at DEBUG, values included: that is
    # our auth-token. It and h2 stay at INFO whatever the level asked for.
    for name in ("hpack", "h2"):
        logging.getLogger(name).setLevel(max(level, logging.INFO))


def reopen_files() -> None:
    """SIGHUP: reopen log files (logrotate has moved them away)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            reopened = open(handler.baseFilename, "a", encoding=handler.encoding)  # noqa: SIM115
            old = handler.setStream(reopened)
            if old is not None:
                old.close()
