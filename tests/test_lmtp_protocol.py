"""RFC 2033 behaviour of pymap_deliver.lmtp over real sockets, with a scripted
backend: replies, enhanced status codes, and one reply per accepted recipient
after the final dot on every path."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymap_admin.message import crlf
from pymap_admin.outcomes import Reply as ServerReply
from pymap_deliver.lmtp import IncomingMessage

from .lmtp_client import (
    DELIVERED,
    LMTPClient,
    Reply,
    ScriptedBackend,
    connected,
    dot_stuff,
    message,
    running_server,
    tcp_port,
)

RECIPIENTS = {1: ["a@example.com"], 3: ["a@example.com", "b@example.com", "c@example.com"]}
N = pytest.mark.parametrize("n", [1, 3])


async def _failing_transaction(
    n: int, body: bytes, *, mail: str = "MAIL FROM:<s@example.com>", **config: Any
) -> tuple[ScriptedBackend, list[Reply]]:
    """Run one transaction with n recipients and return the replies after the
    dot, having proved that no further reply follows them."""
    backend = ScriptedBackend()
    async with running_server(backend, **config) as server, connected(server) as client:
        assert (await client.command(mail)).code == 250
        for rcpt in RECIPIENTS[n]:
            assert (await client.command(f"RCPT TO:<{rcpt}>")).code == 250
        assert (await client.command("DATA")).code == 354
        await client.send(body)
        replies = await client.read_replies(n)
        await client.assert_no_pending_reply()
    return backend, replies


# -- greeting, LHLO, refused commands -------------------------------------------


async def test_greeting_and_capabilities() -> None:
    async with running_server(ScriptedBackend(), data_size_limit=12345) as server:
        client = await LMTPClient.tcp("127.0.0.1", tcp_port(server))
        lhlo = await client.start("mta.example")
        await client.quit()
    assert client.greeting is not None
    assert client.greeting.code == 220
    assert client.greeting.lines[0].startswith("lmtp.test ")
    assert lhlo.code == 250
    assert lhlo.lines[0] == "lmtp.test"
    assert set(lhlo.lines[1:]) == {
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "SIZE 12345",
        "SMTPUTF8",
    }


@pytest.mark.parametrize("verb", ["HELO", "EHLO", "helo"])
async def test_helo_and_ehlo_are_refused(verb: str) -> None:
    async with running_server(ScriptedBackend()) as server:
        client = await LMTPClient.tcp("127.0.0.1", tcp_port(server))
        await client.read_reply()
        reply = await client.command(f"{verb} client.example")
        assert (reply.code, reply.enhanced) == (500, "5.5.1")
        # and HELO does not count as a greeting
        reply = await client.command("MAIL FROM:<a@example.com>")
        assert (reply.code, reply.enhanced) == (503, "5.5.1")
        await client.close()


@pytest.mark.parametrize(
    ("command", "code", "enhanced"),
    [
        ("NOOP", 250, "2.0.0"),
        ("RSET", 250, "2.0.0"),
        ("VRFY someone", 252, "2.5.0"),
        ("EXPN list", 502, "5.5.1"),
        ("HELP", 214, "2.0.0"),
        ("FOO bar", 500, "5.5.2"),
        ("", 500, "5.5.2"),
        ("MAIL TO:<a@example.com>", 501, "5.5.4"),
        ("MAIL FROM:<a@example.com> BODY=9BIT", 501, "5.5.4"),
        ("MAIL FROM:<a@example.com> SIZE=abc", 501, "5.5.4"),
        ("MAIL FROM:<a@example.com> SIZE=999999999999", 552, "5.3.4"),
        ("MAIL FROM:<a@example.com> SMTPUTF8=yes", 501, "5.5.4"),
        ("MAIL FROM:<a@example.com> RET=HDRS", 555, "5.5.4"),
        ("MAIL FROM:<a@example.com", 501, "5.5.4"),
        ("MAIL FROM:<a b@example.com>", 501, "5.5.4"),
        ("RCPT TO:<a@example.com>", 503, "5.5.1"),
        ("DATA", 503, "5.5.1"),
        ("LHLO", 501, "5.5.4"),
        ("MAIL FROM:<" + "a" * 3000 + "@example.com>", 500, "5.5.2"),
        (b"MAIL FROM:<\xff@example.com>", 500, "5.5.2"),
    ],
)
async def test_every_reply_has_an_enhanced_code(
    command: str | bytes, code: int, enhanced: str
) -> None:
    async with running_server(ScriptedBackend()) as server, connected(server) as client:
        reply = await client.command(command)
        assert (reply.code, reply.enhanced) == (code, enhanced), reply
        await client.assert_no_pending_reply()
        quit_reply = await client.command("QUIT")
        assert (quit_reply.code, quit_reply.enhanced) == (221, "2.0.0")


async def test_transaction_replies_have_enhanced_codes() -> None:
    backend = ScriptedBackend()
    async with running_server(backend) as server, connected(server) as client:
        mail = await client.command("MAIL FROM:<s@example.com>")
        nested = await client.command("MAIL FROM:<s@example.com>")
        rcpt = await client.command("RCPT TO:<a@example.com>")
        rcpt_param = await client.command("RCPT TO:<a@example.com> NOTIFY=NEVER")
        rcpt_empty = await client.command("RCPT TO:<>")
        data = await client.command("DATA")
        (final,) = await client.send_data(message(), 1)
    assert (mail.code, mail.enhanced) == (250, "2.1.0")
    assert (nested.code, nested.enhanced) == (503, "5.5.1")
    assert (rcpt.code, rcpt.enhanced) == (250, "2.1.5")
    assert (rcpt_param.code, rcpt_param.enhanced) == (555, "5.5.4")
    assert (rcpt_empty.code, rcpt_empty.enhanced) == (501, "5.5.4")
    assert data.code == 354  # exempt, as in postfix and Dovecot
    assert (final.code, final.enhanced) == (250, "2.0.0")


# -- DATA: one reply per accepted recipient, on every path ----------------------


@N
async def test_delivered(n: int) -> None:
    body = message("line one\r\n.leading dot\r\n..two dots")
    backend, replies = await _failing_transaction(n, dot_stuff(body) + b".\r\n")
    assert [(r.code, r.enhanced) for r in replies] == [(250, "2.0.0")] * n
    (msg,) = backend.messages
    assert msg.recipients == tuple(RECIPIENTS[n])
    assert msg.data == body
    assert msg.sender == "s@example.com"
    assert msg.lhlo_name == "client.example"
    assert msg.peer.startswith("127.0.0.1:")
    assert not msg.smtputf8
    assert not msg.body_8bitmime


@N
async def test_backend_replies_are_passed_in_order(n: int) -> None:
    backend = ScriptedBackend(
        delivery={
            "a@example.com": ServerReply(451, "4.3.0", "Temporary failure"),
            "c@example.com": ServerReply(550, "5.7.1", "Rejected by Sieve"),
        }
    )
    async with running_server(backend) as server, connected(server) as client:
        _, replies = await client.transaction("s@example.com", RECIPIENTS[n], message())
        await client.assert_no_pending_reply()
    expected = {1: [451], 3: [451, 250, 550]}[n]
    assert [r.code for r in replies] == expected


@N
async def test_message_too_big(n: int) -> None:
    body = dot_stuff(message("x" * 5000)) + b".\r\n"
    backend, replies = await _failing_transaction(n, body, data_size_limit=4096)
    assert [(r.code, r.enhanced) for r in replies] == [(552, "5.3.4")] * n
    assert backend.messages == []


@N
async def test_line_too_long(n: int) -> None:
    body = message("y" * 5000) + b".\r\n"
    backend, replies = await _failing_transaction(n, body, line_length_limit=1024)
    assert [(r.code, r.enhanced) for r in replies] == [(554, "5.6.0")] * n
    assert backend.messages == []


async def test_long_line_followed_by_dot_line_is_not_the_end() -> None:
    # ".\r\n" right after an over-long line is that line's tail, not the end
    # of data; the real end comes later and only then the replies.
    body = b"z" * 3000 + b".\r\nmore\r\n.\r\n"
    _, replies = await _failing_transaction(1, body, line_length_limit=1024)
    assert [r.code for r in replies] == [554]


@N
async def test_undeclared_8bit_rejected_when_configured(n: int) -> None:
    body = b"Subject: latin-1\r\n\r\ncaf\xe9\r\n.\r\n"
    backend, replies = await _failing_transaction(n, body, reject_undeclared_8bit=True)
    assert [(r.code, r.enhanced) for r in replies] == [(554, "5.6.0")] * n
    assert backend.messages == []


@N
@pytest.mark.parametrize(
    ("mail", "reject"),
    [
        ("MAIL FROM:<s@example.com>", False),  # the default: accept, as Dovecot does
        ("MAIL FROM:<s@example.com> BODY=8BITMIME", True),
        ("MAIL FROM:<s@example.com> SMTPUTF8", True),
    ],
)
async def test_8bit_accepted(n: int, mail: str, reject: bool) -> None:
    body = b"Subject: caf\xc3\xa9\r\n\r\nna\xefve\r\n.\r\n"
    backend, replies = await _failing_transaction(
        n, body, mail=mail, reject_undeclared_8bit=reject
    )
    assert [r.code for r in replies] == [250] * n
    (msg,) = backend.messages
    assert msg.data == body[:-3]
    assert msg.body_8bitmime == ("8BITMIME" in mail)
    assert msg.smtputf8 == ("SMTPUTF8" in mail)


@N
async def test_backend_exception(n: int, caplog: pytest.LogCaptureFixture) -> None:
    async def boom(message: IncomingMessage) -> Sequence[ServerReply]:
        raise RuntimeError("backend exploded")

    backend = ScriptedBackend(deliver_hook=boom)
    async with running_server(backend) as server, connected(server) as client:
        _, replies = await client.transaction("s@example.com", RECIPIENTS[n], message())
        await client.assert_no_pending_reply()
    assert [(r.code, r.enhanced) for r in replies] == [(451, "4.3.0")] * n
    assert "backend exploded" in caplog.text


@N
@pytest.mark.parametrize("wrong", [0, 2, 4])
async def test_backend_wrong_reply_count(n: int, wrong: int) -> None:
    async def miscount(message: IncomingMessage) -> Sequence[ServerReply]:
        return [DELIVERED] * wrong

    backend = ScriptedBackend(deliver_hook=miscount)
    async with running_server(backend) as server, connected(server) as client:
        _, replies = await client.transaction("s@example.com", RECIPIENTS[n], message())
        await client.assert_no_pending_reply()
    assert [(r.code, r.enhanced) for r in replies] == [(451, "4.3.0")] * n


@pytest.mark.parametrize(
    "bad", ["250 2.0.0 a string, not a Reply", None, ServerReply(354, "", "not after data")]
)
async def test_backend_reply_that_is_not_a_final_reply_becomes_451(bad: object) -> None:
    backend = ScriptedBackend(delivery={"b@example.com": bad})  # type: ignore[dict-item]
    async with running_server(backend) as server, connected(server) as client:
        _, replies = await client.transaction("s@example.com", RECIPIENTS[3], message())
        await client.assert_no_pending_reply()
    assert [r.code for r in replies] == [451, 451, 451]


@N
async def test_duplicate_recipient_gets_its_own_reply(n: int) -> None:
    backend = ScriptedBackend()
    rcpts = RECIPIENTS[n] + ["a@example.com"]
    async with running_server(backend) as server, connected(server) as client:
        _, replies = await client.transaction("s@example.com", rcpts, message())
        await client.assert_no_pending_reply()
    assert [r.code for r in replies] == [250] * (n + 1)
    assert backend.messages[0].recipients == tuple(rcpts)


async def test_rejected_recipients_get_no_data_reply() -> None:
    backend = ScriptedBackend(
        rcpt={
            "unknown@example.com": ServerReply(550, "5.1.1", "User unknown"),
            "later@example.com": ServerReply(451, "4.4.1", "Server unreachable"),
        }
    )
    rcpts = ["a@example.com", "unknown@example.com", "later@example.com", "b@example.com"]
    async with running_server(backend) as server, connected(server) as client:
        rcpt_replies, replies = await client.transaction("s@example.com", rcpts, message())
        await client.assert_no_pending_reply()
    assert [(r.code, r.enhanced) for r in rcpt_replies] == [
        (250, "2.1.5"),
        (550, "5.1.1"),
        (451, "4.4.1"),
        (250, "2.1.5"),
    ]
    assert len(replies) == 2
    assert backend.messages[0].recipients == ("a@example.com", "b@example.com")


@pytest.mark.parametrize(
    "verdict", [RuntimeError("lookup failed"), ServerReply(250, "2.1.5", "but not None"),
                "550 5.1.1 a string, not a Reply"]
)
async def test_check_recipient_failure_gives_451(verdict: object) -> None:
    backend = ScriptedBackend(rcpt={"a@example.com": verdict})  # type: ignore[dict-item]
    async with running_server(backend) as server, connected(server) as client:
        await client.command("MAIL FROM:<s@example.com>")
        reply = await client.command("RCPT TO:<a@example.com>")
        assert (reply.code, reply.enhanced) == (451, "4.3.0")
        data = await client.command("DATA")
        assert (data.code, data.enhanced) == (503, "5.5.1")


async def test_data_without_recipients() -> None:
    async with running_server(ScriptedBackend()) as server, connected(server) as client:
        reply = await client.command("DATA")
        assert (reply.code, reply.enhanced) == (503, "5.5.1")
        await client.command("MAIL FROM:<s@example.com>")
        reply = await client.command("DATA")
        assert (reply.code, reply.enhanced) == (503, "5.5.1")
        await client.assert_no_pending_reply()


async def test_rset_clears_the_transaction() -> None:
    backend = ScriptedBackend()
    async with running_server(backend) as server, connected(server) as client:
        await client.command("MAIL FROM:<s@example.com>")
        await client.command("RCPT TO:<a@example.com>")
        assert (await client.command("RSET")).code == 250
        assert (await client.command("DATA")).code == 503
        # and a new transaction starts cleanly, without the old recipient
        _, replies = await client.transaction("t@example.com", ["b@example.com"], message())
    assert [r.code for r in replies] == [250]
    assert backend.messages[0].recipients == ("b@example.com",)
    assert backend.messages[0].sender == "t@example.com"


async def test_null_sender() -> None:
    backend = ScriptedBackend()
    async with running_server(backend) as server, connected(server) as client:
        mail = await client.command("MAIL FROM:<>")
        assert (mail.code, mail.enhanced) == (250, "2.1.0")
        await client.command("RCPT TO:<a@example.com>")
        await client.command("DATA")
        replies = await client.send_data(message(), 1)
    assert [r.code for r in replies] == [250]
    assert backend.messages[0].sender == ""


async def test_two_transactions_in_one_session() -> None:
    backend = ScriptedBackend()
    async with running_server(backend) as server, connected(server) as client:
        for i in range(2):
            _, replies = await client.transaction("s@example.com", RECIPIENTS[3], message(str(i)))
            assert [r.code for r in replies] == [250] * 3
    assert [m.data for m in backend.messages] == [message("0"), message("1")]


@pytest.mark.parametrize(
    ("command", "enhanced"),
    [
        (b"MAIL FROM:<a\rb@example.com>", "5.1.7"),
        (b"MAIL FROM:<a\x00b@example.com>", "5.1.7"),
        (b"RCPT TO:<a\rBcc: x@evil.example>", "5.1.3"),
        (b"RCPT TO:<a\x00@example.com>", "5.1.3"),
        (b"RCPT TO:<" + b"a" * 1000 + b"@example.com>", "5.1.3"),
    ],
)
async def test_header_injection_refused(command: bytes, enhanced: str) -> None:
    backend = ScriptedBackend()
    async with running_server(backend) as server, connected(server) as client:
        if command.startswith(b"RCPT"):
            await client.command("MAIL FROM:<s@example.com>")
        reply = await client.command(command)
        assert (reply.code, reply.enhanced) == (501, enhanced)
        await client.assert_no_pending_reply()
    assert backend.checked == []


async def test_size_parameter() -> None:
    async with (
        running_server(ScriptedBackend(), data_size_limit=1000) as server,
        connected(server) as client,
    ):
        refused = await client.command("MAIL FROM:<s@example.com> SIZE=1001")
        accepted = await client.command("MAIL FROM:<s@example.com> SIZE=1000")
    assert (refused.code, refused.enhanced) == (552, "5.3.4")
    assert (accepted.code, accepted.enhanced) == (250, "2.1.0")


async def test_too_many_recipients() -> None:
    backend = ScriptedBackend()
    rcpts = ["a@example.com", "b@example.com", "c@example.com"]
    async with running_server(backend, max_recipients=2) as server, connected(server) as client:
        rcpt_replies, replies = await client.transaction("s@example.com", rcpts, message())
    assert [(r.code, r.enhanced) for r in rcpt_replies][-1] == (452, "4.5.3")
    assert len(replies) == 2


# -- pipelining ----------------------------------------------------------------


async def test_pipelined_batch() -> None:
    backend = ScriptedBackend(rcpt={"x@example.com": ServerReply(550, "5.1.1", "User unknown")})
    async with running_server(backend) as server, connected(server) as client:
        await client.send(
            b"MAIL FROM:<s@example.com>\r\n"
            b"RCPT TO:<a@example.com>\r\n"
            b"RCPT TO:<x@example.com>\r\n"
            b"RCPT TO:<b@example.com>\r\n"
            b"DATA\r\n"
        )
        batch = await client.read_replies(5)
        assert [r.code for r in batch] == [250, 250, 550, 250, 354]
        # RFC 2920: after the data, the next transaction may follow at once.
        await client.send(
            dot_stuff(message()) + b".\r\n"
            b"MAIL FROM:<t@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n"
        )
        replies = await client.read_replies(2 + 3)
        assert [r.code for r in replies] == [250, 250, 250, 250, 354]
        await client.send(dot_stuff(message("second")) + b".\r\nQUIT\r\n")
        last = await client.read_replies(2)
        assert [r.code for r in last] == [250, 221]
    assert [m.recipients for m in backend.messages] == [
        ("a@example.com", "b@example.com"),
        ("c@example.com",),
    ]


async def test_pipelined_then_half_closed() -> None:
    # A client may send everything and shut down its side; every reply must
    # still arrive before the session closes.
    backend = ScriptedBackend()
    async with running_server(backend) as server:
        client = await LMTPClient.tcp("127.0.0.1", tcp_port(server))
        await client.send(
            b"LHLO c\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\n"
            b"RCPT TO:<b@example.com>\r\nDATA\r\n"
            + dot_stuff(message())
            + b".\r\nQUIT\r\n"
        )
        client.writer.write_eof()
        replies = await client.read_replies(1 + 1 + 3 + 1 + 2 + 1)
        assert [r.code for r in replies] == [220, 250, 250, 250, 250, 354, 250, 250, 221]
        assert await client.reader.read() == b""
        await client.close()


async def test_bare_lf_dot_does_not_end_data() -> None:
    # Only CRLF.CRLF ends the data (SMTP smuggling: a bare-LF dot must not).
    backend = ScriptedBackend()
    body = b"Subject: x\r\n\r\nbefore\n.\nMAIL FROM:<evil@example.com>\r\nafter\r\n"
    async with running_server(backend) as server, connected(server) as client:
        await client.command("MAIL FROM:<s@example.com>")
        await client.command("RCPT TO:<a@example.com>")
        await client.command("DATA")
        replies = await client.send_data(body, 1)
        await client.assert_no_pending_reply()
    assert [r.code for r in replies] == [250]
    # Stored with CRLF line endings (the Reliability issue), the dot kept.
    assert backend.messages[0].data == crlf(body)


# -- dot-stuffing round trip (property) -----------------------------------------

_line = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(_line, st.sampled_from([b".", b"..", b". x", b""])), max_size=12))
def test_data_round_trip(lines: list[bytes]) -> None:
    body = b"".join(line + b"\r\n" for line in lines)

    async def run() -> bytes:
        backend = ScriptedBackend()
        async with running_server(backend) as server, connected(server) as client:
            await client.command("MAIL FROM:<s@example.com> BODY=8BITMIME")
            await client.command("RCPT TO:<a@example.com>")
            await client.command("DATA")
            replies = await client.send_data(body, 1)
            assert [r.code for r in replies] == [250]
        return backend.messages[0].data

    assert asyncio.run(run()) == body
