"""The one exception tree of the admin client.

Every failure a caller can meet derives from :class:`AdminError`:

* :class:`ResultError` and its subclasses: the server answered, with
  ``result.code = FAILURE`` and a result key (``UserNotFound``, ...). A key this
  client has never seen becomes :class:`UnknownResultError`.
* :class:`TransportError` (also a :class:`ConnectionError`): the server could
  not be reached or the connection broke; :class:`DeadlineExceeded` (also a
  :class:`TimeoutError`) when the call's deadline passed.
* :class:`ProtocolError`: the server answered with a gRPC status that is not a
  result: incompatible version, unimplemented operation, anything unexpected.
* :class:`ConfigurationError`: our own settings are wrong (missing socket,
  no token, unreadable files).

:func:`map_grpc_error` and :func:`map_os_error` are the only places where
lower-level errors become ours.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import ClassVar

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.exceptions import ProtocolError as _H2ProtocolError

__all__ = [
    "AdminError",
    "AppendFailure",
    "AuthError",
    "AuthorizationFailure",
    "CannotReplaceUser",
    "CloseConnection",
    "ConfigurationError",
    "ConnectionReset",
    "DeadlineExceeded",
    "IncompatibleData",
    "IncompatibleVersion",
    "InvalidAuth",
    "InvalidUserName",
    "MailboxConflict",
    "MailboxError",
    "MailboxHasChildren",
    "MailboxNotFound",
    "MailboxReadOnly",
    "NotAllowedError",
    "NotSupportedError",
    "ProtocolError",
    "ResultError",
    "SearchNotAllowed",
    "ServerUnreachable",
    "TLSError",
    "TemporaryFailure",
    "TokenExpired",
    "TransportError",
    "UnexpectedStatus",
    "Unimplemented",
    "UnknownResultError",
    "UserNotFound",
    "map_grpc_error",
    "map_os_error",
    "result_error",
]


class AdminError(Exception):
    """Root of every error raised by :mod:`pymap_admin`."""

    #: True when the whole request had reached the server before the call
    #: failed (a deadline, a lost connection): the server may have carried
    #: it out, e.g. stored an Append that we report as failed.
    request_sent: bool = False


# --- Application results --------------------------------------------------


class ResultError(AdminError):
    """The server answered with ``result.code = FAILURE``.

    ``key`` is the server's error name and ``response`` its response line.
    """

    #: The result key this class stands for; ``""`` for the generic classes.
    key_name: ClassVar[str] = ""

    def __init__(self, key: str, response: str, *, operation: str = "") -> None:
        self.key = key
        self.response = response
        self.operation = operation
        super().__init__(f"{key}: {response}" if response else key)

    @property
    def reason(self) -> str:
        """The server's human text: the response line without tag, status and code.

        ``Append NO [NONEXISTENT] User not found.`` becomes ``User not found.``.
        """
        text = self.response.strip()
        parts = text.split(" ", 2)
        if len(parts) == 3 and parts[1] in ("NO", "BAD", "BYE", "OK"):
            text = parts[2]
        if text.startswith("["):
            end = text.find("]")
            if end >= 0:
                text = text[end + 1 :].lstrip()
        return text


class UserNotFound(ResultError):
    key_name = "UserNotFound"


class MailboxError(ResultError):
    """A mailbox-level failure."""


class MailboxNotFound(MailboxError):
    key_name = "MailboxNotFound"


class MailboxReadOnly(MailboxError):
    key_name = "MailboxReadOnly"


class MailboxConflict(MailboxError):
    key_name = "MailboxConflict"


class MailboxHasChildren(MailboxError):
    key_name = "MailboxHasChildren"


class AppendFailure(ResultError):
    """The message was refused, e.g. by the recipient's Sieve ``reject``."""

    key_name = "AppendFailure"


class AuthError(ResultError):
    """The token (or password) was not accepted."""


class InvalidAuth(AuthError):
    key_name = "InvalidAuth"


class TokenExpired(InvalidAuth):
    """The server refused a token whose ``time <`` caveat has passed."""

    def __init__(self, key: str, response: str, *, operation: str = "", expired_at: str) -> None:
        super().__init__(key, response, operation=operation)
        self.expired_at = expired_at
        self.args = (f"token expired at {expired_at}",)


class AuthorizationFailure(AuthError):
    key_name = "AuthorizationFailure"


class TemporaryFailure(ResultError):
    key_name = "TemporaryFailure"


class CannotReplaceUser(ResultError):
    """``SetUser`` with a stale entity tag, or ``overwrite=false`` on an existing user."""

    key_name = "CannotReplaceUser"


class IncompatibleData(ResultError):
    key_name = "IncompatibleData"


class NotAllowedError(ResultError):
    key_name = "NotAllowedError"


class NotSupportedError(ResultError):
    key_name = "NotSupportedError"


class SearchNotAllowed(ResultError):
    key_name = "SearchNotAllowed"


class CloseConnection(ResultError):
    key_name = "CloseConnection"


class UnknownResultError(ResultError):
    """A result key this client does not know (a newer server)."""


def _key_classes() -> Mapping[str, type[ResultError]]:
    found: dict[str, type[ResultError]] = {}
    pending: list[type[ResultError]] = [ResultError]
    while pending:
        cls = pending.pop()
        # Only the class that names a key stands for it, not its refinements
        # (TokenExpired is an InvalidAuth we diagnose, not a key of its own).
        if "key_name" in vars(cls) and cls.key_name:
            found[cls.key_name] = cls
        pending.extend(cls.__subclasses__())
    return found


_BY_KEY = _key_classes()


def result_error(key: str, response: str, *, operation: str = "") -> ResultError:
    """The exception for a FAILURE result with ``key``."""
    cls = _BY_KEY.get(key, UnknownResultError)
    return cls(key, response, operation=operation)


# --- Transport ------------------------------------------------------------


class TransportError(AdminError, ConnectionError):
    """The server could not be reached, or the connection failed mid-call."""


class ServerUnreachable(TransportError):
    """No socket, connection refused, host unreachable."""


class ConnectionReset(TransportError):
    """The connection or the stream broke before the answer arrived."""


class TLSError(TransportError):
    """The TLS handshake failed (certificate not trusted, wrong name, ...)."""


class DeadlineExceeded(AdminError, TimeoutError):
    """The call's deadline passed before the server answered."""


# --- gRPC statuses that are not results -------------------------------------


class ProtocolError(AdminError):
    """The server answered with a gRPC error status."""

    def __init__(self, message: str, *, status: Status | None = None,
                 details: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.details: Mapping[str, str] = details or {}


class IncompatibleVersion(ProtocolError):
    """The server refused our admin protocol version."""


class Unimplemented(ProtocolError):
    """The server's backend does not implement the operation."""


class UnexpectedStatus(ProtocolError):
    """Any other gRPC status."""


class InvalidUserName(AdminError, ValueError):
    """A user name no request may carry (CR, LF or NUL, or absurdly long):
    the per-request token cannot be narrowed to it, so nothing is sent."""


class ConfigurationError(AdminError):
    """Our own connection settings are wrong or incomplete."""


def _error_info(exc: GRPCError) -> tuple[str, Mapping[str, str]]:
    """The reason and metadata of a ``google.rpc.ErrorInfo`` detail, if any."""
    for detail in exc.details or ():
        reason = getattr(detail, "reason", None)
        if isinstance(reason, str):
            return reason, dict(getattr(detail, "metadata", {}))
    return "", {}


# Statuses that mean "we never got an answer" rather than "the server said no".
_TRANSPORT_STATUSES = frozenset({Status.UNAVAILABLE, Status.CANCELLED, Status.ABORTED})


def map_grpc_error(exc: GRPCError) -> AdminError:
    """Turn a grpclib status into our exception; raise it ``from exc``.

    Every :class:`grpclib.const.Status` is mapped (a test checks this).
    """
    status = exc.status
    message = exc.message or status.name
    reason, metadata = _error_info(exc)
    if status is Status.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"deadline exceeded: {message}")
    if status in _TRANSPORT_STATUSES:
        return ConnectionReset(f"{status.name}: {message}")
    if status is Status.FAILED_PRECONDITION and (
        reason == "INCOMPATIBLE" or message == "Incompatible version"
    ):
        client = metadata.get("client_version", "?")
        server = metadata.get("server_version", "?")
        return IncompatibleVersion(
            f"incompatible admin protocol version: client {client}, server {server}",
            status=status, details=metadata,
        )
    if status is Status.UNIMPLEMENTED:
        return Unimplemented(f"operation not available: {message}", status=status,
                             details=metadata)
    return UnexpectedStatus(f"{status.name}: {message}", status=status, details=metadata)


def map_os_error(exc: BaseException, target: str) -> AdminError:
    """Turn a connection-level exception into our exception; raise it ``from exc``."""
    if isinstance(exc, ssl.SSLError):
        return TLSError(f"TLS failure talking to {target}: {exc}")
    if isinstance(exc, StreamTerminatedError | _H2ProtocolError | ConnectionResetError
                  | BrokenPipeError | ConnectionAbortedError):
        reason = str(exc)
        if not reason:
            reason = f"{type(exc).__name__}: the server closed the connection"
            if target.startswith("https://"):
                # pymap without --cert accepts TCP, then drops the handshake.
                reason += " (does its admin port speak TLS? pymap needs --cert for that)"
        return ConnectionReset(f"connection to {target} broken: {reason}")
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded(f"timed out talking to {target}")
    if isinstance(exc, OSError):
        detail = exc.strerror or str(exc)
        return ServerUnreachable(f"cannot connect to {target}: {detail}")
    return ConnectionReset(f"connection to {target} failed: {exc!r}")
