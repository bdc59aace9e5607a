"""The exception tree and the delivery outcome table, row by row."""

from __future__ import annotations

import ast
import errno
import ssl
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from pymap_admin import errors, outcomes
from pymap_admin.outcomes import ExitStatus, Outcome

KNOWN_KEYS = ["UserNotFound", "MailboxNotFound", "MailboxReadOnly", "MailboxConflict",
              "MailboxHasChildren", "AppendFailure", "InvalidAuth", "AuthorizationFailure",
              "IncompatibleData", "NotAllowedError", "TemporaryFailure", "CannotReplaceUser",
              "NotSupportedError", "SearchNotAllowed", "CloseConnection"]


@pytest.mark.parametrize("key", KNOWN_KEYS)
def test_every_known_key_has_its_own_class(key: str) -> None:
    error = errors.result_error(key, f"Append NO {key}.")
    assert type(error).__name__ == key
    assert not isinstance(error, errors.UnknownResultError)
    assert error.key == key


def test_unknown_key_is_still_a_result_error() -> None:
    error = errors.result_error("SomethingNew", "Append NO [X] new thing.")
    assert isinstance(error, errors.UnknownResultError)
    assert error.key == "SomethingNew"
    assert error.reason == "new thing."


@pytest.mark.parametrize("status", [s for s in Status if s is not Status.OK])
def test_every_grpc_status_is_mapped(status: Status) -> None:
    mapped = errors.map_grpc_error(GRPCError(status, "text"))
    assert isinstance(mapped, errors.AdminError)
    # Nothing falls through to a bare AdminError: each has a definite place.
    assert type(mapped) is not errors.AdminError
    outcome = outcomes.outcome_for_error(mapped)
    assert outcome.code in (451, 450)  # never permanent, never delivered


def test_transport_errors_are_standard_exceptions_too() -> None:
    assert isinstance(errors.map_grpc_error(GRPCError(Status.DEADLINE_EXCEEDED)), TimeoutError)
    assert isinstance(errors.map_grpc_error(GRPCError(Status.UNAVAILABLE)), ConnectionError)
    for exc in (FileNotFoundError(errno.ENOENT, "No such file"),
                ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
                ConnectionResetError(errno.ECONNRESET, "reset"),
                StreamTerminatedError("Connection lost"),
                ssl.SSLCertVerificationError("bad cert")):
        mapped = errors.map_os_error(exc, "unix:/x")
        assert isinstance(mapped, errors.TransportError)
        assert isinstance(mapped, ConnectionError)
    assert isinstance(errors.map_os_error(TimeoutError(), "x"), errors.DeadlineExceeded)
    assert isinstance(errors.map_os_error(ssl.SSLError(1, "x"), "x"), errors.TLSError)
    assert isinstance(errors.map_os_error(ConnectionRefusedError(), "x"),
                      errors.ServerUnreachable)


def test_incompatible_version_detail_is_read() -> None:
    from google.rpc.error_details_pb2 import ErrorInfo

    info = ErrorInfo(reason="INCOMPATIBLE",
                     metadata={"client_version": "1.0", "server_version": "0.12.1"})
    mapped = errors.map_grpc_error(GRPCError(Status.FAILED_PRECONDITION,
                                             "Incompatible version", [info]))
    assert isinstance(mapped, errors.IncompatibleVersion)
    assert "client 1.0" in str(mapped)


def _result(key: str, text: str = "Append NO failed.") -> errors.ResultError:
    return errors.result_error(key, text)


# Every row of the table in DESIGN.md: situation -> reply and exit status.
ROWS: list[tuple[str, Outcome, int, str, ExitStatus]] = [
    ("stored", outcomes.delivered(), 250, "2.0.0", ExitStatus.OK),
    ("discarded by Sieve", outcomes.delivered(discarded=True), 250, "2.0.0", ExitStatus.OK),
    ("UserNotFound", outcomes.outcome_for_error(_result("UserNotFound")), 550, "5.1.1",
     ExitStatus.NOUSER),
    ("Sieve reject", outcomes.outcome_for_error(
        _result("AppendFailure", "Append NO message rejected")), 550, "5.7.1",
     ExitStatus.NOPERM),
    ("MailboxNotFound", outcomes.outcome_for_error(_result("MailboxNotFound")), 450, "4.2.0",
     ExitStatus.TEMPFAIL),
    ("MailboxReadOnly", outcomes.outcome_for_error(_result("MailboxReadOnly")), 450, "4.2.0",
     ExitStatus.TEMPFAIL),
    ("InvalidAuth", outcomes.outcome_for_error(_result("InvalidAuth")), 451, "4.3.5",
     ExitStatus.TEMPFAIL),
    ("AuthorizationFailure", outcomes.outcome_for_error(_result("AuthorizationFailure")), 451,
     "4.3.5", ExitStatus.TEMPFAIL),
    ("TemporaryFailure", outcomes.outcome_for_error(_result("TemporaryFailure")), 451, "4.3.0",
     ExitStatus.TEMPFAIL),
    ("unknown key", outcomes.outcome_for_error(_result("BrandNew")), 451, "4.3.0",
     ExitStatus.TEMPFAIL),
    ("unreachable", outcomes.outcome_for_error(errors.ServerUnreachable("x")), 451, "4.4.1",
     ExitStatus.TEMPFAIL),
    ("reset", outcomes.outcome_for_error(errors.ConnectionReset("x")), 451, "4.4.1",
     ExitStatus.TEMPFAIL),
    ("deadline", outcomes.outcome_for_error(errors.DeadlineExceeded("x")), 451, "4.4.2",
     ExitStatus.TEMPFAIL),
    ("incompatible version", outcomes.outcome_for_error(errors.IncompatibleVersion("x")), 451,
     "4.3.5", ExitStatus.TEMPFAIL),
    ("too big", outcomes.too_big(), 552, "5.3.4", ExitStatus.DATAERR),
    ("configuration", outcomes.outcome_for_error(errors.ConfigurationError("no token")), 451,
     "4.3.5", ExitStatus.TEMPFAIL),
    ("our own bug", outcomes.outcome_for_error(RuntimeError("oops")), 451, "4.3.0",
     ExitStatus.TEMPFAIL),
]


@pytest.mark.parametrize(("situation", "outcome", "code", "enhanced", "exit_status"), ROWS,
                         ids=[row[0] for row in ROWS])
def test_outcome_table(situation: str, outcome: Outcome, code: int, enhanced: str,
                       exit_status: ExitStatus) -> None:
    assert outcome.code == code
    assert outcome.enhanced == enhanced
    assert outcome.exit_status == exit_status
    assert str(outcome.reply).startswith(f"{code} {enhanced} ")
    assert outcome.status_text.startswith(f"{enhanced} ")
    # The reply class and the exit status agree: postfix's pipe(8) reads both.
    assert outcome.enhanced[0] == str(code)[0]
    if code >= 500:
        assert exit_status not in (ExitStatus.TEMPFAIL, ExitStatus.OSERR, ExitStatus.OK)
    elif code >= 400:
        assert exit_status == ExitStatus.TEMPFAIL
    else:
        assert exit_status == ExitStatus.OK


def test_sieve_reason_is_carried_on_one_line() -> None:
    outcome = outcomes.outcome_for_error(
        _result("AppendFailure", "Append NO you are\r\nnot welcome"))
    assert str(outcome.reply) == "550 5.7.1 you are not welcome"


def test_expired_token_says_when() -> None:
    error = errors.TokenExpired("InvalidAuth", "x", expired_at="2026-01-01T00:00:00+00:00")
    assert "expired at 2026-01-01" in str(error)
    outcome = outcomes.outcome_for_error(error)
    assert outcome.code == 451
    assert "2026-01-01" in outcome.reply.text


def _int_literals_returned(source: str) -> list[int]:
    """Lines where a ``return`` hands back an int literal, directly or as a
    branch of a conditional expression."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Return) or node.value is None:
            continue
        values = [node.value]
        if isinstance(node.value, ast.IfExp):
            values = [node.value.body, node.value.orelse]
        if any(isinstance(v, ast.Constant) and type(v.value) is int for v in values):
            lines.append(node.lineno)
    return lines


def test_every_exit_status_is_named_in_exit_status() -> None:
    # Exit statuses are a contract with the MTA (sysexits): each comes from
    # ExitStatus, so a reader finds them all in one enum.
    root = Path(__file__).resolve().parent.parent
    paths = [*sorted((root / "pymap_admin" / "cli").glob("*.py")),
             root / "pymap_deliver" / "main.py", root / "pymap_deliver" / "install.py"]
    found = {str(path.relative_to(root)): lines for path in paths
             if (lines := _int_literals_returned(path.read_text()))}
    assert found == {}
