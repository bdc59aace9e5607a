"""The delivery outcome table: the one place a delivery result becomes a reply.

``pymap-deliver`` sends :attr:`Outcome.reply` per LMTP recipient; ``pymap-admin
append`` prints :attr:`Outcome.status_text` as its first line of output and
exits with :attr:`Outcome.exit_status`. postfix's pipe(8) reads a leading
``4.x.x``/``5.x.x`` before the exit status, so both come from the same row.

The rule: a permanent (5xx) failure only when the recipient or the content is
definitively refused; everything else is temporary so the MTA keeps the
message and retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from . import errors

__all__ = ["ExitStatus", "Outcome", "delivered", "outcome_for_error", "too_big"]


class ExitStatus(IntEnum):
    """Every exit status of ``pymap-admin`` and ``pymap-deliver``: sysexits(3)
    values, which an MTA understands, and the shell's conventions."""

    OK = 0
    #: A command that ran and failed (``check``: not serving).
    FAILURE = 1
    #: EX_USAGE: a mistake on the command line (``append`` uses TEMPFAIL).
    USAGE = 64
    DATAERR = 65
    NOUSER = 67
    #: EX_SOFTWARE: our own bug, found at start-up.
    SOFTWARE = 70
    #: EX_OSERR: the system refused (a listener that cannot be bound).
    OSERR = 71
    TEMPFAIL = 75
    NOPERM = 77
    #: EX_CONFIG: the configuration is wrong.
    CONFIG = 78
    #: Interrupted by SIGINT (128 + 2), as a shell reports it.
    INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class Outcome:
    """One row of the table, with the server's detail where it matters."""

    code: int
    enhanced: str
    text: str
    exit_status: ExitStatus

    @property
    def status_text(self) -> str:
        """``2.0.0 Message delivered``: the enhanced code and text."""
        return f"{self.enhanced} {self.text}"

    @property
    def reply(self) -> str:
        """``250 2.0.0 Message delivered``: a complete LMTP reply line."""
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def delivered(self) -> bool:
        return self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500


def _one_line(text: str) -> str:
    # The text goes into a single reply line: never let a server's reason
    # (or anything else) smuggle a line break into the protocol.
    return " ".join(text.split())


def delivered(*, discarded: bool = False) -> Outcome:
    """Stored by pymap (including where the user's Sieve script filed it), or
    discarded by the user's own Sieve script: both are final for the MTA."""
    text = "Message delivered" if not discarded else "Message delivered (discarded by Sieve)"
    return Outcome(250, "2.0.0", text, ExitStatus.OK)


def too_big() -> Outcome:
    return Outcome(552, "5.3.4", "Message too big", ExitStatus.DATAERR)


def outcome_for_error(exc: BaseException) -> Outcome:
    """The row for a failed delivery. Anything unforeseen is temporary."""
    match exc:
        case errors.UserNotFound():
            return Outcome(550, "5.1.1", "User unknown", ExitStatus.NOUSER)
        case errors.AppendFailure():
            reason = _one_line(exc.reason) or "Message rejected"
            return Outcome(550, "5.7.1", reason, ExitStatus.NOPERM)
        case errors.MailboxNotFound():
            return Outcome(450, "4.2.0", "Mailbox not found", ExitStatus.TEMPFAIL)
        case errors.MailboxReadOnly():
            return Outcome(450, "4.2.0", "Mailbox is read-only", ExitStatus.TEMPFAIL)
        case errors.TokenExpired():
            return Outcome(451, "4.3.5", f"Delivery agent's admin token expired at "
                           f"{exc.expired_at}", ExitStatus.TEMPFAIL)
        case errors.AuthError():
            return Outcome(451, "4.3.5", "Delivery agent not authorized by the mail store",
                           ExitStatus.TEMPFAIL)
        case errors.IncompatibleVersion():
            return Outcome(451, "4.3.5", "Mail store speaks an incompatible admin protocol",
                           ExitStatus.TEMPFAIL)
        case errors.ConfigurationError():
            return Outcome(451, "4.3.5", f"Delivery agent misconfigured: {_one_line(str(exc))}",
                           ExitStatus.TEMPFAIL)
        case errors.DeadlineExceeded():
            return Outcome(451, "4.4.2", "Mail store did not answer in time", ExitStatus.TEMPFAIL)
        case errors.TransportError():
            return Outcome(451, "4.4.1", "Mail store unreachable", ExitStatus.TEMPFAIL)
        case _:
            # TemporaryFailure, keys we have never seen, unimplemented
            # operations, unexpected statuses and our own bugs: the MTA keeps
            # the message and tries again.
            return Outcome(451, "4.3.0", "Temporary failure, try again later",
                           ExitStatus.TEMPFAIL)
