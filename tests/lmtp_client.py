"""Test helpers for the LMTP layer: a raw LMTP client, a scripted backend and
a running server.

The client exists because :class:`smtplib.LMTP` reads a single reply after
DATA; LMTP sends one per accepted recipient, and the tests must count them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from pymap_admin.outcomes import Reply as ServerReply
from pymap_deliver.lmtp import DeliveryBackend, IncomingMessage
from pymap_deliver.protocol import LMTPOptions
from pymap_deliver.server import DeliveryServer, ServerConfig, TcpEndpoint

ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}$")
# A reply that never comes is a failure, not a hang. Generous: this is a
# safety net, never a performance assertion.
REPLY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> str | None:
        """The enhanced status code of the (last) line, if it has one."""
        first = self.lines[-1].split(" ", 1)[0] if self.lines else ""
        return first if ENHANCED.match(first) else None

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class LMTPClient:
    """A minimal LMTP client speaking over an asyncio stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting: Reply | None = None

    @classmethod
    async def tcp(cls, host: str, port: int) -> LMTPClient:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    @classmethod
    async def unix(cls, path: str) -> LMTPClient:
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
        return cls(reader, writer)

    async def read_reply(self) -> Reply:
        """One (possibly multi-line) reply. Raises on EOF, and TimeoutError
        if the server never sends it."""
        lines: list[str] = []
        code = 0
        while True:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), REPLY_TIMEOUT)
            text = raw[:-2].decode("utf-8")
            if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in (" ", "-", ""):
                raise AssertionError(f"malformed reply line {raw!r}")
            code = int(text[:3])
            lines.append(text[4:])
            if text[3:4] != "-":
                return Reply(code, tuple(lines))

    async def read_replies(self, count: int) -> list[Reply]:
        return [await self.read_reply() for _ in range(count)]

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def command(self, line: str | bytes) -> Reply:
        raw = line.encode("utf-8") if isinstance(line, str) else line
        await self.send(raw + b"\r\n")
        return await self.read_reply()

    async def start(self, name: str = "client.example") -> Reply:
        """Read the greeting and say LHLO."""
        self.greeting = await self.read_reply()
        assert self.greeting.code == 220, self.greeting
        return await self.command(f"LHLO {name}")

    async def send_data(self, data: bytes, expected_replies: int) -> list[Reply]:
        """After a 354: send the message (dot-stuffed here) and read exactly
        ``expected_replies`` replies."""
        await self.send(dot_stuff(data) + b".\r\n")
        return await self.read_replies(expected_replies)

    async def transaction(
        self, sender: str, recipients: Sequence[str], data: bytes
    ) -> tuple[list[Reply], list[Reply]]:
        """MAIL, RCPTs and DATA, one at a time. Returns the RCPT replies and
        the replies after the dot: one per accepted recipient (or the single
        reply to DATA when it was refused)."""
        mail = await self.command(f"MAIL FROM:<{sender}>")
        assert mail.code == 250, mail
        rcpt = [await self.command(f"RCPT TO:<{r}>") for r in recipients]
        accepted = sum(1 for r in rcpt if r.code == 250)
        data_reply = await self.command("DATA")
        if data_reply.code != 354:
            return rcpt, [data_reply]
        return rcpt, await self.send_data(data, accepted)

    async def assert_no_pending_reply(self) -> None:
        """Prove, without timing, that no stray reply is queued: the next
        reply must be the one to this NOOP."""
        reply = await self.command("NOOP")
        assert (reply.code, reply.lines) == (250, ("2.0.0 OK",)), reply

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError):
            await self.writer.wait_closed()

    async def quit(self) -> Reply:
        reply = await self.command("QUIT")
        await self.close()
        return reply


async def run_tool(proc: asyncio.subprocess.Process, timeout: float = 120.0) -> tuple[bytes, bytes]:
    """communicate() with a safety timeout: a client stuck waiting for a
    reply that never comes must fail the test, not hang it."""
    try:
        return await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{proc!r} did not finish in {timeout} s") from None


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 section 4.5.2 transparency, and a final CRLF if missing."""
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def message(body: str = "Hello.", *, subject: str = "test") -> bytes:
    return (
        f"From: sender@example.com\r\nTo: rcpt@example.com\r\nSubject: {subject}\r\n"
        f"\r\n{body}\r\n"
    ).encode()


#: What the scripted backend answers after DATA unless told otherwise.
DELIVERED = ServerReply(250, "2.0.0", "Message delivered")


@dataclass
class ScriptedBackend:
    """A DeliveryBackend whose answers are set by the test.

    ``rcpt`` maps a recipient to its RCPT verdict (default: accept).
    ``delivery`` maps a recipient to its reply after DATA (default 250).
    ``deliver_hook`` may replace the whole delivery (to raise, to sleep, to
    return a wrong number of replies). Every message is recorded.
    """

    rcpt: dict[str, ServerReply | BaseException] = field(default_factory=dict)
    delivery: dict[str, ServerReply] = field(default_factory=dict)
    deliver_hook: Callable[[IncomingMessage], Awaitable[Sequence[ServerReply]]] | None = None
    messages: list[IncomingMessage] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    async def check_recipient(self, address: str) -> ServerReply | None:
        self.checked.append(address)
        verdict = self.rcpt.get(address)
        if isinstance(verdict, BaseException):
            raise verdict
        return verdict

    async def deliver(self, message: IncomingMessage) -> Sequence[ServerReply]:
        self.messages.append(message)
        if self.deliver_hook is not None:
            return await self.deliver_hook(message)
        return [self.delivery.get(r, DELIVERED) for r in message.recipients]


def tcp_port(server: DeliveryServer) -> int:
    for sock in server.sockets:
        name: Any = sock.getsockname()
        if isinstance(name, tuple):
            return int(name[1])
    raise AssertionError("no TCP listener")


def server_config(**config: Any) -> ServerConfig:
    """A ServerConfig from flat keywords: the session's protocol settings
    (hostname, data_size_limit, ...) go into its LMTPOptions."""
    protocol = {name: config.pop(name) for name in list(config)
                if name in LMTPOptions.__dataclass_fields__}
    return ServerConfig(lmtp=LMTPOptions(**protocol), **config)


@asynccontextmanager
async def running_server(
    backend: DeliveryBackend, **config: Any
) -> AsyncIterator[DeliveryServer]:
    """A started server on a free loopback port (unless endpoints are given),
    stopped and awaited on exit."""
    config.setdefault("tcp", [TcpEndpoint(host="127.0.0.1", port=0)])
    config.setdefault("hostname", "lmtp.test")
    server = DeliveryServer(backend, server_config(**config))
    async with server:
        yield server


@asynccontextmanager
async def connected(server: DeliveryServer) -> AsyncIterator[LMTPClient]:
    """A client connected over TCP, greeted and LHLO'd."""
    client = await LMTPClient.tcp("127.0.0.1", tcp_port(server))
    try:
        lhlo = await client.start()
        assert lhlo.code == 250, lhlo
        yield client
    finally:
        await client.close()
