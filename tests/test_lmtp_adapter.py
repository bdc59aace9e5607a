"""The asyncio adapter over real sockets: the RCPTs of a pipelined batch are
looked up at once, their replies still go out in order, and what is already
answered is written before the session waits on the backend."""

from __future__ import annotations

import asyncio
import socket
import struct

from pymap_admin.outcomes import Reply

from .lmtp_client import ScriptedBackend, connected, running_server

UNKNOWN = Reply(550, "5.1.1", "User unknown")
#: A safety net against a hang, never a performance figure.
WAIT = 30.0


class SlowLookups(ScriptedBackend):
    """Lookups that wait until the test releases them, in an order it picks."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most_in_flight = 0
        self.release: dict[str, asyncio.Event] = {}
        self.all_started = asyncio.Event()
        self.expected = 0

    async def check_recipient(self, address: str) -> Reply | None:
        self.checked.append(address)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight == self.expected:
            self.all_started.set()
        try:
            await self.release.setdefault(address, asyncio.Event()).wait()
        finally:
            self.in_flight -= 1
        return UNKNOWN if address.startswith("x") else None


async def test_pipelined_rcpts_are_looked_up_concurrently_and_answered_in_order() -> None:
    backend = SlowLookups()
    rcpts = ["a@example.com", "x1@example.com", "b@example.com", "x2@example.com",
             "c@example.com"]
    backend.expected = len(rcpts)
    async with running_server(backend) as server, connected(server) as client:
        await client.send(b"MAIL FROM:<s@example.com>\r\n" + b"".join(
            f"RCPT TO:<{r}>\r\n".encode() for r in rcpts) + b"DATA\r\n")
        # Written before the session waits for the lookups.
        mail = await client.read_reply()
        assert (mail.code, mail.enhanced) == (250, "2.1.0")
        # All five are asked at once: a session looking them up one by one
        # would never get here (the first waits until released).
        await asyncio.wait_for(backend.all_started.wait(), WAIT)
        # Answered in reverse order; the replies still follow the commands.
        for address in reversed(rcpts):
            backend.release.setdefault(address, asyncio.Event()).set()
            await asyncio.sleep(0)
        replies = await client.read_replies(len(rcpts) + 1)
        assert [(r.code, r.enhanced) for r in replies] == [
            (250, "2.1.5"), (550, "5.1.1"), (250, "2.1.5"), (550, "5.1.1"), (250, "2.1.5"),
            (354, None)]
        final = await client.send_data(b"Subject: x\r\n\r\nhi\r\n", 3)
        assert [r.code for r in final] == [250] * 3
        await client.assert_no_pending_reply()
    assert backend.most_in_flight == len(rcpts)
    assert backend.messages[0].recipients == ("a@example.com", "b@example.com",
                                              "c@example.com")


async def test_half_closed_during_lookups_still_gets_its_replies() -> None:
    backend = SlowLookups()
    backend.expected = 2
    async with running_server(backend) as server, connected(server) as client:
        await client.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\n"
                          b"RCPT TO:<x@example.com>\r\nQUIT\r\n")
        client.writer.write_eof()
        await asyncio.wait_for(backend.all_started.wait(), WAIT)
        for event in backend.release.values():
            event.set()
        replies = await client.read_replies(4)
        assert [r.code for r in replies] == [250, 250, 550, 221]
        assert await client.reader.read() == b""


async def test_a_client_reset_during_lookups_cancels_them_and_frees_the_slot() -> None:
    backend = SlowLookups()
    backend.expected = 2
    async with running_server(backend) as server:
        async with connected(server) as client:
            await client.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\n"
                              b"RCPT TO:<b@example.com>\r\n")
            await asyncio.wait_for(backend.all_started.wait(), WAIT)
            sock = client.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Nobody will read the answers: the lookups are cancelled and the
        # session is gone, so a stop completes although they never finish.
        for _ in range(1000):
            if server.session_count == 0 and backend.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert (server.session_count, backend.in_flight) == (0, 0)
