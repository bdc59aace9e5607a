"""An async client for pymap's gRPC admin API, and the pymap-admin command line.

``AdminClient`` talks to a pymap server (0.36, admin protocol 0.12);
``load_settings`` finds where and how, the way pymap users expect;
every failure is an ``AdminError``; ``outcome_for_error`` and ``delivered``
turn a delivery result into an LMTP reply, a DSN text and an exit status.
"""

from .client import (
    PROTOCOL_VERSION,
    AdminClient,
    AppendResult,
    LoginResult,
    PingResult,
    UserInfo,
)
from .errors import (
    AdminError,
    AppendFailure,
    AuthError,
    AuthorizationFailure,
    CannotReplaceUser,
    ConfigurationError,
    ConnectionReset,
    DeadlineExceeded,
    IncompatibleVersion,
    InvalidAuth,
    InvalidUserName,
    MailboxError,
    MailboxNotFound,
    MailboxReadOnly,
    ProtocolError,
    ResultError,
    ServerUnreachable,
    TemporaryFailure,
    TLSError,
    TokenExpired,
    TransportError,
    UnexpectedStatus,
    Unimplemented,
    UnknownResultError,
    UserNotFound,
)
from .outcomes import ExitStatus, Outcome, Reply, delivered, outcome_for_error, too_big
from .settings import ConnectionSettings, load_settings
from .tokens import TokenInfo, TokenSource, attenuate, inspect_token

__all__ = [
    "PROTOCOL_VERSION",
    "AdminClient",
    "AdminError",
    "AppendFailure",
    "AppendResult",
    "AuthError",
    "AuthorizationFailure",
    "CannotReplaceUser",
    "ConfigurationError",
    "ConnectionReset",
    "ConnectionSettings",
    "DeadlineExceeded",
    "ExitStatus",
    "IncompatibleVersion",
    "InvalidAuth",
    "InvalidUserName",
    "LoginResult",
    "MailboxError",
    "MailboxNotFound",
    "MailboxReadOnly",
    "Outcome",
    "PingResult",
    "ProtocolError",
    "Reply",
    "ResultError",
    "ServerUnreachable",
    "TLSError",
    "TemporaryFailure",
    "TokenExpired",
    "TokenInfo",
    "TokenSource",
    "TransportError",
    "UnexpectedStatus",
    "Unimplemented",
    "UnknownResultError",
    "UserInfo",
    "UserNotFound",
    "attenuate",
    "delivered",
    "inspect_token",
    "load_settings",
    "outcome_for_error",
    "too_big",
]
