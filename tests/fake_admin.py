"""An in-process admin server for what a real pymap cannot be made to do on demand.

Built on the generated grpclib base classes, so it speaks the same wire
protocol. Behaviour is scripted per method: a reply, a result key, a delay,
a gRPC error, or a dropped connection. Every request and its metadata is
recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from pymap_admin.grpc import admin_pb2 as pb
from pymap_admin.grpc.admin_grpc import MailboxBase, SystemBase, UserBase

#: A script step: given the request, answer (return a response message) or
#: misbehave (raise, sleep).
Step = Callable[[Any], Awaitable[Any]]


@dataclass
class Call:
    method: str
    request: Any
    metadata: dict[str, str]


def failure(key: str, text: str = "NO failure.") -> pb.Result:
    return pb.Result(code=pb.FAILURE, key=key, response=text.encode())


def success(text: str = "OK completed.") -> pb.Result:
    return pb.Result(code=pb.SUCCESS, response=text.encode())


async def _default_append(request: pb.AppendRequest) -> pb.AppendResponse:
    return pb.AppendResponse(result=success("Append OK completed."),
                             mailbox=request.mailbox if request.HasField("mailbox") else "INBOX",
                             validity=1, uid=1)


async def _default_ping(request: pb.PingRequest) -> pb.PingResponse:
    return pb.PingResponse(result=success(), pymap_version="0.36.7", pymap_admin_version="0.12.1")


async def default_user(request: Any) -> pb.UserResponse:
    return pb.UserResponse(result=success(), user=request.user, entity_tag=1,
                           data=pb.UserData(password="hash", roles=["r"], params={"k": "v"}))


async def _default_login(request: pb.LoginRequest) -> pb.LoginResponse:
    return pb.LoginResponse(result=success(), bearer_token="token-for-" + request.authcid)


@dataclass
class FakeAdmin(SystemBase, MailboxBase, UserBase):
    """Answers like a healthy server unless ``script[method]`` says otherwise."""

    script: dict[str, Step] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    #: False keeps no calls (a benchmark's server, which must not grow).
    record: bool = True

    def __mapping__(self) -> dict[str, Any]:
        # Each generated base maps only its own service; serve all three.
        return {**SystemBase.__mapping__(self), **MailboxBase.__mapping__(self),
                **UserBase.__mapping__(self)}

    async def _handle(self, name: str, stream: Stream[Any, Any], default: Step) -> None:
        request = await stream.recv_message()
        if self.record:
            metadata = {k: v if isinstance(v, str) else v.decode()
                        for k, v in (stream.metadata or {}).items()}
            self.calls.append(Call(name, request, metadata))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = await self.script.get(name, default)(request)
        finally:
            self.in_flight -= 1
        await stream.send_message(response)

    async def Ping(self, stream: Stream[pb.PingRequest, pb.PingResponse]) -> None:
        await self._handle("Ping", stream, _default_ping)

    async def Login(self, stream: Stream[pb.LoginRequest, pb.LoginResponse]) -> None:
        await self._handle("Login", stream, _default_login)

    async def Append(self, stream: Stream[pb.AppendRequest, pb.AppendResponse]) -> None:
        await self._handle("Append", stream, _default_append)

    async def GetUser(self, stream: Stream[pb.GetUserRequest, pb.UserResponse]) -> None:
        await self._handle("GetUser", stream, default_user)

    async def SetUser(self, stream: Stream[pb.SetUserRequest, pb.UserResponse]) -> None:
        await self._handle("SetUser", stream, default_user)

    async def DeleteUser(self, stream: Stream[pb.DeleteUserRequest, pb.UserResponse]) -> None:
        await self._handle("DeleteUser", stream, default_user)


def respond_failure(key: str, text: str = "NO failure.") -> Step:
    """A step answering every request with a FAILURE result of ``key``."""
    async def step(request: Any) -> Any:
        if isinstance(request, pb.AppendRequest):
            return pb.AppendResponse(result=failure(key, text))
        if isinstance(request, pb.LoginRequest):
            return pb.LoginResponse(result=failure(key, text))
        return pb.UserResponse(result=failure(key, text))
    return step


def sleep_forever() -> Step:
    async def step(request: Any) -> Any:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")
    return step


def grpc_error(status: Status, message: str = "", details: list[Any] | None = None) -> Step:
    async def step(request: Any) -> Any:
        raise GRPCError(status, message or status.name, details)
    return step


def incompatible_version(client: str = "9.9.9", server: str = "0.12.1") -> Step:
    from google.rpc.error_details_pb2 import ErrorInfo

    info = ErrorInfo(reason="INCOMPATIBLE", domain="pymap-admin",
                     metadata={"client_version": client, "server_version": server})
    return grpc_error(Status.FAILED_PRECONDITION, "Incompatible version", [info])


class RunningFake:
    """A FakeAdmin listening on a UNIX socket."""

    def __init__(self, fake: FakeAdmin, path: Path) -> None:
        self.fake = fake
        self.path = path
        self._server = Server([fake])

    async def __aenter__(self) -> RunningFake:
        await self._server.start(path=str(self.path))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)


class DroppingServer:
    """Accepts connections on a UNIX socket and closes them at once, or after
    reading ``read_bytes``: a server that resets every call."""

    def __init__(self, path: Path, read_bytes: int = 0) -> None:
        self.path = path
        self.read_bytes = read_bytes
        self._server: asyncio.AbstractServer | None = None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                          ) -> None:
        if self.read_bytes:
            with contextlib.suppress(Exception):
                await reader.read(self.read_bytes)
        writer.transport.abort()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_unix_server(self._on_connect, path=str(self.path))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)
