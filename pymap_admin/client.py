"""The async client of pymap's admin API.

One :class:`AdminClient` owns one channel per admin endpoint
(:class:`~pymap_admin._channel.H2Channel`): one HTTP/2 connection on which
any number of calls are multiplexed, reconnected on demand after the server
went away. With several endpoints (members of a
pymap cluster) the pool of :mod:`pymap_admin.pool` spreads the calls and
fails over. Results are plain dataclasses; failures are the exceptions
of :mod:`pymap_admin.errors`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from grpclib.const import Cardinality

from . import _messages, errors
from ._wire import SerializedAppend, make_channel
from .logintokens import LoginTokens, NoLoginTokens, TokenCacheFolder
from .pool import DEFAULT_HEALTH_INTERVAL, Endpoint, EndpointPool, Metadata, MethodOf
from .settings import ConnectionSettings
from .stats import ClientStats
from .tokens import RequestTokens, TokenSource, inspect_token, token_kind

if TYPE_CHECKING:
    from grpclib.client import Channel

    from .grpc import admin_pb2

__all__ = [
    "PROTOCOL_VERSION",
    "AdminClient",
    "AppendResult",
    "LoginResult",
    "PingResult",
    "UserInfo",
]

#: The admin protocol version we implement and send as ``client-version``.
#: pymap accepts 0.12.x from a 0.12.y server; our own package version would
#: be refused.
PROTOCOL_VERSION = "0.12.1"
# A token file is re-read at once when the server refuses its token, so
# looking at it once a second is enough otherwise.
_TOKEN_FILE_CHECK_INTERVAL = 1.0

@dataclass(frozen=True, slots=True)
class PingResult:
    pymap_version: str
    pymap_admin_version: str
    response: str


@dataclass(frozen=True, slots=True)
class LoginResult:
    bearer_token: str = field(repr=False)
    response: str


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where the message went. ``mailbox`` is empty and ``uid`` None when the
    user's Sieve script discarded it."""

    mailbox: str
    validity: int | None
    uid: int | None
    response: str

    @property
    def discarded(self) -> bool:
        return self.uid is None and not self.mailbox


@dataclass(frozen=True, slots=True)
class UserInfo:
    user: str
    entity_tag: int | None
    #: The stored password *hash* (the server hashes what it is sent), or None.
    password: str | None = field(repr=False)
    roles: tuple[str, ...]
    params: Mapping[str, str]
    response: str = ""


class _UnaryMethod:
    """What the pool needs of a generated stub's method: ``open()`` a call on
    the endpoint's channel (H2Channel, or grpclib's in tests). A delivery's
    calls use it with the messages of :mod:`pymap_admin._messages`, without
    the stubs, protobuf's runtime or grpclib's client module."""

    __slots__ = ("channel", "name", "reply_type", "request_type")

    def __init__(self, channel: Any, name: str, request_type: type, reply_type: type) -> None:
        self.channel = channel
        self.name = name
        self.request_type = request_type
        self.reply_type = reply_type

    def open(self, *, timeout: float | None = None,
             metadata: Mapping[str, str] | None = None) -> Any:
        return self.channel.request(self.name, Cardinality.UNARY_UNARY, self.request_type,
                                    self.reply_type, timeout=timeout, metadata=metadata)


def _unary(name: str, request_type: type, reply_type: type) -> MethodOf:
    """``name`` is the generated stub's (a test compares)."""
    def method(endpoint: Endpoint) -> _UnaryMethod:
        return _UnaryMethod(endpoint.channel, name, request_type, reply_type)

    return method


# Each endpoint's method for each call (pool.MethodOf).
_PING: MethodOf = attrgetter("system.Ping")
_LOGIN: MethodOf = attrgetter("system.Login")
_CHECK: MethodOf = attrgetter("health.Check")
#: The calls of a delivery, with messages that need no protobuf runtime.
_MINT_LOGIN: MethodOf = _unary("/pymapadmin.grpc.System/Login", _messages.LoginRequest,
                               _messages.LoginResponse)
_APPEND: MethodOf = _unary("/pymapadmin.grpc.Mailbox/Append", SerializedAppend,
                           _messages.AppendResponse)
_GET_USER: MethodOf = attrgetter("user.GetUser")
_SET_USER: MethodOf = attrgetter("user.SetUser")
_DELETE_USER: MethodOf = attrgetter("user.DeleteUser")
#: Calls not repeated on another member after a connection lost mid-call:
#: a second SetUser could overwrite a change made in between, a second
#: DeleteUser would answer "unknown user" for a user it did delete.
_NOT_RETRIED = frozenset({"SetUser", "DeleteUser"})
#: How long a short-lived client waits on exit for a login token being
#: minted (one call, normally 0.3 s) before giving up on it.
_MINT_WAIT = 10.0


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace").strip()


def _user_info(response: admin_pb2.UserResponse) -> UserInfo:
    data = response.data
    return UserInfo(
        user=response.user,
        entity_tag=response.entity_tag if response.HasField("entity_tag") else None,
        password=data.password if data.HasField("password") else None,
        roles=tuple(data.roles),
        params=dict(data.params),
        response=_text(response.result.response),
    )


class AdminClient:
    """An async context manager owning one connection to a pymap admin service.

    ``settings`` say where to connect and which token to use. ``channel``
    replaces the channel made from the settings (tests use it to talk to an
    in-process server); it must carry the production codec
    (:func:`pymap_admin._wire.channel_for` makes one). ``tokens`` replaces
    the token source. ``attenuate_tokens=False`` sends the token as it is
    instead of one narrowed per request; ``protocol_version`` is what we
    claim to speak.

    ``login_tokens`` (default: ``settings.login_tokens``) lets Append and
    GetUser use a login token per user instead of the admin token, which
    pymap 0.36.7 makes wait 0.3 s per call (:mod:`pymap_admin.logintokens`).
    ``short_lived`` is for a process that makes one call and exits
    (``pymap-admin append``): it mints a login token only where the cache
    folder can keep it for the next process. ``members`` are the settings'
    members looked up already (the daemon resolves a name off its event
    loop); by default, :meth:`ConnectionSettings.members`.
    """

    def __init__(
        self,
        settings: ConnectionSettings | None = None,
        *,
        channel: Channel | None = None,
        tokens: TokenSource | None = None,
        attenuate_tokens: bool = True,
        protocol_version: str = PROTOCOL_VERSION,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        login_tokens: bool | None = None,
        short_lived: bool = False,
        members: Sequence[ConnectionSettings] | None = None,
    ) -> None:
        self.settings = settings if settings is not None else ConnectionSettings()
        self._timeout = self.settings.timeout
        # Each member's own admin token (several sockets, no token given):
        # the other members trust it only once SWIM has converged.
        own_tokens = tokens is None and channel is None and self.settings.own_member_tokens
        if channel is not None:
            endpoints = [Endpoint("the admin service", channel)]
        else:
            endpoints = [Endpoint(member.target, make_channel(member),
                                  TokenSource(path=member.token_file,
                                              check_interval=_TOKEN_FILE_CHECK_INTERVAL)
                                  if own_tokens else None)
                         for member in (members if members is not None
                                        else self.settings.members())]
        #: The admin endpoints and how they are used (one: just that one).
        #: What the client did: the pool's decisions and the fast path's.
        self.stats = ClientStats()
        self.pool = EndpointPool(endpoints, health_interval=health_interval, stats=self.stats)
        self._member_tokens = [e.tokens for e in endpoints if e.tokens is not None]
        if self._member_tokens:
            # What start-up checks and the fast path look at: the first
            # member's whose token file is there (a member may be down).
            self._tokens = next((t for t in self._member_tokens
                                 if t.path is not None and t.path.exists()),
                                self._member_tokens[0])
        else:
            self._tokens = tokens if tokens is not None else TokenSource(
                token=self.settings.token, path=self.settings.token_path(),
                check_interval=_TOKEN_FILE_CHECK_INTERVAL)
        self._request_tokens = RequestTokens() if attenuate_tokens else None
        self._short_lived = short_lived
        self._login_tokens: LoginTokens | None = None
        if self.settings.login_tokens if login_tokens is None else login_tokens:
            path = self.settings.token_cache_path()
            # Login tokens are the server's (a cluster's: in its Redis), so
            # they are kept per server address.
            scope = self.pool.target if channel is None else ""
            folder = (TokenCacheFolder(path, scope) if path is not None and scope
                      else None)
            self._login_tokens = LoginTokens(self._mint_login_token, folder,
                                             need_folder=short_lived, stats=self.stats)
        # The token's kind, computed once per token (it changes when pymap
        # restarts).
        self._kind_of: tuple[str, str] = ("", "")
        self._version_metadata = {"client-version": protocol_version}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._short_lived and self._login_tokens is not None and exc is None:
            # A login token being minted is kept for the next process; a
            # long-lived client (a daemon shutting down) does not wait.
            await self._login_tokens.wait(_MINT_WAIT)
        self.close()

    def close(self) -> None:
        if self._login_tokens is not None:
            self._login_tokens.cancel()
        self.pool.close()

    @property
    def tokens(self) -> TokenSource:
        return self._tokens

    @property
    def tokens_minted(self) -> int:
        """Per-request narrowed tokens made so far (for metrics)."""
        return self._request_tokens.minted if self._request_tokens is not None else 0

    @property
    def fast_path(self) -> ClientStats | None:
        """The client's counters (the fast path's among them); None when the
        login-token fast path is off."""
        return self._login_tokens.stats if self._login_tokens is not None else None

    # --- plumbing -------------------------------------------------------

    async def _invoke(self, operation: str, method: MethodOf, request: Any,
                      metadata: Metadata, timeout: float | None, *,
                      user: str | None = None) -> Any:
        """One call through the pool. Changing calls are not retried once
        they may have been carried out; see :mod:`pymap_admin.pool`."""
        return await self.pool.call(operation, method, request, metadata,
                                    timeout or self._timeout, subject=user,
                                    retry_ambiguous=operation not in _NOT_RETRIED)

    def _token_metadata(self, user: str | None, token: str | None = None) -> Metadata:
        """The call's metadata with ``token`` (a login token, valid on every
        member), else with the admin token of the member the call goes to."""
        if token is None:
            if self._member_tokens:
                return lambda endpoint: self._with_token(
                    user, (endpoint.tokens or self._tokens).current())
            token = self._tokens.current()
        return self._with_token(user, token)

    def _with_token(self, user: str | None, token: str) -> dict[str, str]:
        if user is not None and self._request_tokens is not None:
            token = self._request_tokens.for_user(token, user)
        return {**self._version_metadata, "auth-token": token}

    def _reload_tokens(self) -> bool:
        """Re-read the token file(s) after a refusal; True if one changed."""
        sources = self._member_tokens or [self._tokens]
        return any([source.reload() for source in sources])

    def _admin_token_in_use(self) -> bool:
        """True when our token is pymap's admin token (the slow one)."""
        token = self._tokens.current()
        if self._kind_of[0] is not token:
            self._kind_of = (token, token_kind(token))
        return self._kind_of[1] == "admin"

    async def _authenticated(self, operation: str, method: MethodOf,
                             request: Any, user: str | None, *,
                             timeout: float | None = None, fast: bool = False) -> Any:
        """A token-authenticated call, retried once with a re-read token file
        if the server refused the token (it restarted with a new one).

        ``fast``: ``user``'s login token may stand in for the admin token. A
        refused login token is forgotten and the call retried with the admin
        token: refused means not authenticated, so nothing was done yet.
        """
        retried = False
        fast_tokens = self._login_tokens if fast and user is not None else None
        login_token: str | None = None
        if fast_tokens is not None:
            if self._admin_token_in_use():
                login_token = await fast_tokens.token_for(user)  # type: ignore[arg-type]
            else:
                fast_tokens = None  # not the admin token: nothing to gain
        while True:
            response = await self._invoke(operation, method, request,
                                          self._token_metadata(user, login_token), timeout,
                                          user=user)
            result = response.result
            if result.code == 0:
                if fast_tokens is not None:
                    assert user is not None
                    if login_token is not None:
                        fast_tokens.accepted(login_token)
                    else:
                        fast_tokens.admin_call_succeeded(user)
                return response
            error = errors.result_error(result.key, _text(result.response), operation=operation)
            if isinstance(error, errors.AuthError):
                if login_token is not None:
                    assert fast_tokens is not None and user is not None
                    fast_tokens.refused(user, login_token)
                    login_token = None
                    continue
                if not retried and self._reload_tokens():
                    retried = True
                    continue
            if isinstance(error, errors.InvalidAuth):
                error = self._explain_invalid_auth(error)
            raise error

    async def _mint_login_token(self, user: str) -> str | None:
        """A login token for ``user``, authorized by the admin token (one
        0.3 s call and one record in pymap's token store, except on redis).
        None if the user does not exist."""
        try:
            response = await self._authenticated("Login", _MINT_LOGIN,
                                                 _messages.LoginRequest(user), user)
        except errors.UserNotFound:
            return None
        token = response.bearer_token
        if token_kind(token) != "login":
            raise NoLoginTokens("pymap's Login answered without a login token")
        return str(token)

    def _explain_invalid_auth(self, error: errors.InvalidAuth) -> errors.InvalidAuth:
        try:
            info = inspect_token(self._tokens.current())
        except (ValueError, errors.ConfigurationError):
            return error
        if info.expired():
            assert info.expires is not None
            return errors.TokenExpired(error.key, error.response, operation=error.operation,
                                       expired_at=info.expires.isoformat())
        return error

    # --- System ---------------------------------------------------------

    async def ping(self, *, timeout: float | None = None) -> PingResult:
        from .grpc.admin_pb2 import PingRequest

        response = await self._invoke("Ping", _PING, PingRequest(),
                                      self._version_metadata, timeout)
        return PingResult(response.pymap_version, response.pymap_admin_version,
                          _text(response.result.response))

    async def check(self, service: str = "", *, timeout: float | None = None) -> bool:
        """The standard gRPC health check: True when the service is SERVING.

        ``""`` is the whole server, ``pymap.backend`` its storage backend; an
        unknown name raises :class:`~pymap_admin.errors.UnexpectedStatus`
        (NOT_FOUND).
        """
        from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

        response = await self._invoke("Check", _CHECK, HealthCheckRequest(service=service),
                                      self._version_metadata, timeout)
        return bool(response.status == HealthCheckResponse.SERVING)

    async def login(self, user: str, *, password: str | None = None,
                    authzid: str | None = None, expiration: datetime | None = None,
                    timeout: float | None = None) -> LoginResult:
        """A bearer token for ``user``: with ``password`` checked by the
        server, or, without it, re-issued for the identity of our token.

        ``expiration`` becomes a ``time <`` caveat that we add to the issued
        token ourselves. It is not sent as ``token_expiration``: pymap 0.36.7
        turns that into a caveat without a timezone, and every later use of
        such a token fails on the server with an internal error.
        """
        from .grpc.admin_pb2 import LoginRequest
        from .tokens import attenuate

        request = LoginRequest(authcid=user)
        if authzid is not None:
            request.authzid = authzid
        if expiration is not None and expiration.tzinfo is None:
            raise ValueError("expiration must carry a timezone")
        if password is not None:
            request.secret = password
            response = await self._invoke("Login", _LOGIN, request,
                                          self._version_metadata, timeout, user=user)
            result = response.result
            if result.code != 0:
                raise errors.result_error(result.key, _text(result.response),
                                          operation="Login")
        else:
            response = await self._authenticated("Login", _LOGIN, request, user,
                                                 timeout=timeout)
        token = response.bearer_token
        if expiration is not None:
            token = attenuate(token, expires=expiration.astimezone(UTC))
        return LoginResult(token, _text(response.result.response))

    # --- Mailbox --------------------------------------------------------

    async def append(self, user: str, data: bytes, *, sender: str | None = None,
                     recipient: str | None = None, mailbox: str | None = None,
                     flags: Iterable[str] = (), when: float | None = None,
                     prefix: bytes = b"", timeout: float | None = None) -> AppendResult:
        """Deliver ``prefix + data`` to ``user``; pymap runs the user's Sieve script.

        ``sender`` None is "unknown" (the server uses an empty sender),
        ``recipient`` None is ``user``, ``mailbox`` None is INBOX, ``when``
        None is now. ``prefix`` (trace headers, say) is joined to ``data``
        while the request is serialized, not before, so a large message is
        not held once more for it.
        """
        request = _messages.AppendHead(user, sender=sender, recipient=recipient,
                                       mailbox=mailbox, flags=flags,
                                       when=int(time.time() if when is None else when))
        response = await self._authenticated("Append", _APPEND,
                                             SerializedAppend(request, prefix, data), user,
                                             timeout=timeout, fast=True)
        return AppendResult(
            mailbox=response.mailbox,
            validity=response.validity if response.HasField("validity") else None,
            uid=response.uid if response.HasField("uid") else None,
            response=_text(response.result.response),
        )

    # --- User -----------------------------------------------------------

    async def get_user(self, user: str, *, timeout: float | None = None) -> UserInfo:
        from .grpc.admin_pb2 import GetUserRequest

        response = await self._authenticated("GetUser", _GET_USER,
                                             GetUserRequest(user=user), user, timeout=timeout,
                                             fast=True)
        return _user_info(response)

    async def set_user(self, user: str, *, password: str | None = None,
                       roles: Iterable[str] = (), params: Mapping[str, str] | None = None,
                       overwrite: bool = True, previous_entity_tag: int | None = None,
                       timeout: float | None = None) -> UserInfo:
        """Create or replace ``user``.

        With ``previous_entity_tag`` the write succeeds only if the stored
        user still has that tag (else :class:`~pymap_admin.errors.CannotReplaceUser`);
        otherwise ``overwrite=False`` refuses to replace an existing user.
        ``password`` is sent in clear (over the socket or TLS) and hashed by
        the server; None leaves the user without a password. pymap answers
        with the user and its new entity tag only (no data).
        """
        from .grpc.admin_pb2 import SetUserRequest, UserData

        data = UserData(roles=list(roles), params=dict(params or {}))
        if password is not None:
            data.password = password
        request = SetUserRequest(user=user, data=data)
        if previous_entity_tag is not None:
            request.previous_entity_tag = previous_entity_tag
        else:
            request.overwrite = overwrite
        response = await self._authenticated("SetUser", _SET_USER, request, user,
                                             timeout=timeout)
        return _user_info(response)

    async def change_password(self, user: str, password: str | None, *,
                              timeout: float | None = None) -> UserInfo:
        """Change only the password: roles and params are kept, and a
        concurrent edit between our read and our write is detected
        (:class:`~pymap_admin.errors.CannotReplaceUser`), not overwritten."""
        current = await self.get_user(user, timeout=timeout)
        if current.entity_tag is None:
            raise errors.UnexpectedStatus("the server returned no entity tag for the user")
        return await self.set_user(user, password=password, roles=current.roles,
                                   params=current.params,
                                   previous_entity_tag=current.entity_tag, timeout=timeout)

    async def delete_user(self, user: str, *, timeout: float | None = None) -> None:
        from .grpc.admin_pb2 import DeleteUserRequest

        await self._authenticated("DeleteUser", _DELETE_USER,
                                  DeleteUserRequest(user=user), user, timeout=timeout)
        if self._login_tokens is not None:
            self._login_tokens.forget(user)
