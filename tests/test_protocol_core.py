"""The sans-I/O LMTP core (pymap_deliver.protocol) without sockets: every
RFC 2033 rule, pipelining with batched RCPT lookups, the DATA paths, limits,
error counting, and byte-at-a-time input."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymap_admin.outcomes import MAX_REPLY_LINE, Replies, Reply
from pymap_deliver.protocol import (
    ERROR_LIMIT,
    FLUSH,
    FLUSH_SIZE,
    NEED_DATA,
    PAUSED,
    RCPT_BATCH_LIMIT,
    CheckRecipients,
    Close,
    Connection,
    Deliver,
    IncomingMessage,
    LMTPOptions,
)

from .protocol_driver import DEFERRED, DELIVERED, UNKNOWN, next_question, parse_replies

Verdict = Reply | BaseException | None


@dataclass
class Driver:
    """Runs a Connection the way an adapter would, with scripted answers."""

    options: LMTPOptions = field(default_factory=lambda: LMTPOptions(hostname="lmtp.test"))
    verdict: Callable[[str], Verdict] = lambda address: None
    deliver: Callable[[IncomingMessage], Sequence[Reply] | BaseException] = (
        lambda m: [DELIVERED] * len(m.recipients))
    conn: Connection = field(init=False)
    messages: list[IncomingMessage] = field(default_factory=list)
    batches: list[tuple[str, ...]] = field(default_factory=list)
    closed: Close | None = None
    out: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.conn = Connection(self.options, session_id="sess", peer="127.0.0.1:1",
                               clock=lambda: 1700000000.0)

    def run(self) -> None:
        while (event := next_question(self.conn, self.out)) is not None:
            if isinstance(event, CheckRecipients):
                self.batches.append(event.addresses)
                self.conn.recipients_checked([self.verdict(a) for a in event.addresses])
            elif isinstance(event, Deliver):
                self.messages.append(event.message)
                self.conn.delivered(self.deliver(event.message))
            else:
                assert isinstance(event, Close)
                self.closed = event
                return

    def feed(self, data: bytes) -> list[tuple[int, str, str]]:
        self.conn.receive_data(data)
        self.run()
        out = bytes(self.out) + self.conn.data_to_send()
        self.out.clear()
        return parse_replies(out)

    def start(self) -> None:
        replies = self.feed(b"LHLO client.example\r\n")
        assert [r[0] for r in replies] == [220, 250]


def started(**kwargs: object) -> Driver:
    driver = Driver(**kwargs)  # type: ignore[arg-type]
    driver.start()
    return driver


def codes(replies: list[tuple[int, str, str]]) -> list[int]:
    return [r[0] for r in replies]


# -- greeting and commands -------------------------------------------------------


def test_greeting_and_capabilities() -> None:
    driver = Driver(options=LMTPOptions(hostname="lmtp.test", data_size_limit=12345))
    driver.conn.receive_data(b"LHLO mta.example\r\n")
    driver.run()
    out = driver.conn.data_to_send()
    assert out == (b"220 lmtp.test LMTP pymap-deliver ready\r\n"
                   b"250-lmtp.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n"
                   b"250-8BITMIME\r\n250-SIZE 12345\r\n250 SMTPUTF8\r\n")


@pytest.mark.parametrize(
    ("command", "code", "enhanced"),
    [
        (b"NOOP", 250, "2.0.0"),
        (b"RSET", 250, "2.0.0"),
        (b"VRFY someone", 252, "2.5.0"),
        (b"EXPN list", 502, "5.5.1"),
        (b"HELP", 214, "2.0.0"),
        (b"HELO x", 500, "5.5.1"),
        (b"ehlo x", 500, "5.5.1"),
        (b"FOO bar", 500, "5.5.2"),
        (b"", 500, "5.5.2"),
        (b"MAIL TO:<a@example.com>", 501, "5.5.4"),
        (b"MAIL FROM:<a@example.com> BODY=9BIT", 501, "5.5.4"),
        (b"MAIL FROM:<a@example.com> SIZE=abc", 501, "5.5.4"),
        (b"MAIL FROM:<a@example.com> SIZE=999999999999", 552, "5.3.4"),
        (b"MAIL FROM:<a@example.com> SMTPUTF8=yes", 501, "5.5.4"),
        (b"MAIL FROM:<a@example.com> RET=HDRS", 555, "5.5.4"),
        (b"MAIL FROM:<a@example.com", 501, "5.5.4"),
        (b"MAIL FROM:<a b@example.com>", 501, "5.5.4"),
        (b"MAIL FROM:<a\x0cX-Evil:\tyes@x.example>", 501, "5.1.7"),
        (b"MAIL FROM:<a\x0bb@x.example>", 501, "5.1.7"),
        (b"MAIL FROM:<a\x1cb@x.example>", 501, "5.1.7"),
        (b"MAIL FROM:<a\rb@example.com>", 501, "5.1.7"),
        (b"RCPT TO:<a@example.com>", 503, "5.5.1"),
        (b"DATA", 503, "5.5.1"),
        (b"LHLO", 501, "5.5.4"),
        (b"MAIL FROM:<" + b"a" * 3000 + b"@example.com>", 500, "5.5.2"),
        (b"MAIL FROM:<\xff@example.com>", 500, "5.5.2"),
    ],
)
def test_one_reply_with_an_enhanced_code(command: bytes, code: int, enhanced: str) -> None:
    driver = started()
    replies = driver.feed(command + b"\r\nNOOP\r\n")
    assert [(r[0], r[1]) for r in replies] == [(code, enhanced), (250, "2.0.0")]


def test_commands_need_lhlo_first() -> None:
    driver = Driver()
    replies = driver.feed(b"MAIL FROM:<a@b>\r\nHELO x\r\nMAIL FROM:<a@b>\r\n")
    assert codes(replies) == [220, 503, 500, 503]


def test_quit_closes() -> None:
    driver = started()
    replies = driver.feed(b"QUIT\r\nNOOP\r\n")
    assert replies == [(221, "2.0.0", "lmtp.test Bye")]
    assert driver.closed == Close("quit")
    assert driver.conn.closed
    driver.conn.receive_data(b"NOOP\r\n")
    assert driver.conn.next_event() == Close("quit")
    assert driver.conn.data_to_send() == b""


def test_eof_answers_buffered_commands_then_closes() -> None:
    driver = started()
    driver.conn.receive_data(b"NOOP\r\nRSET\r\nNOO")
    driver.conn.receive_data(b"")
    driver.run()
    assert codes(parse_replies(driver.conn.data_to_send())) == [250, 250]
    assert driver.closed == Close("eof")


def test_long_command_line_is_dropped_as_it_arrives() -> None:
    driver = started()
    for _ in range(10):
        assert driver.feed(b"x" * 10000) == []
        assert driver.conn.buffered <= 10000
    assert codes(driver.feed(b"tail\r\nNOOP\r\n")) == [500, 250]


# -- transactions -------------------------------------------------------------------


def test_transaction() -> None:
    driver = started()
    replies = driver.feed(b"MAIL FROM:<s@example.com> BODY=8BITMIME\r\nRCPT TO:<a@example.com>"
                          b"\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    assert codes(replies) == [250, 250, 250, 354]
    replies = driver.feed(b"Subject: x\r\n\r\n.leading dot\r\n..\r\nend\r\n.\r\n")
    assert replies == [(250, "2.0.0", "Message delivered")] * 2
    (msg,) = driver.messages
    assert msg == IncomingMessage(
        session_id="sess", peer="127.0.0.1:1", lhlo_name="client.example",
        sender="s@example.com", recipients=("a@example.com", "b@example.com"),
        data=b"Subject: x\r\n\r\nleading dot\r\n.\r\nend\r\n", smtputf8=False,
        body_8bitmime=True, received_at=1700000000.0)
    # the transaction is over: a new one starts clean
    assert codes(driver.feed(b"DATA\r\n")) == [503]


def test_empty_message_and_null_sender() -> None:
    driver = started()
    replies = driver.feed(b"MAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n.\r\n")
    assert codes(replies) == [250, 250, 354, 250]
    assert driver.messages[0].data == b""
    assert driver.messages[0].sender == ""


def test_rset_and_nested_mail() -> None:
    driver = started()
    replies = driver.feed(b"MAIL FROM:<s@x>\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nRSET\r\n"
                          b"DATA\r\nMAIL FROM:<t@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nhi\r\n.\r\n")
    assert codes(replies) == [250, 503, 250, 250, 503, 250, 250, 354, 250]
    assert driver.messages[0].recipients == ("b@x",)
    assert driver.messages[0].sender == "t@x"


def test_refused_recipients_get_no_data_reply() -> None:
    verdicts: dict[str, Verdict] = {"unknown@x": UNKNOWN, "later@x": DEFERRED,
                                    "broken@x": RuntimeError("lookup failed"),
                                    "odd@x": Reply(250, "2.1.5", "not a refusal")}
    driver = started(verdict=lambda a: verdicts.get(a))
    replies = driver.feed(b"MAIL FROM:<s@x>\r\n" + b"".join(
        f"RCPT TO:<{a}>\r\n".encode()
        for a in ["a@x", "unknown@x", "later@x", "broken@x", "odd@x", "b@x"]) + b"DATA\r\n")
    assert [(c, e) for c, e, _ in replies] == [
        (250, "2.1.0"), (250, "2.1.5"), (550, "5.1.1"), (451, "4.4.1"), (451, "4.3.0"),
        (451, "4.3.0"), (250, "2.1.5"), (354, "")]
    assert codes(driver.feed(b"x\r\n.\r\n")) == [250, 250]
    assert driver.messages[0].recipients == ("a@x", "b@x")


# -- pipelining: batched lookups, replies in order ------------------------------------


def test_pipelined_rcpts_are_looked_up_as_one_batch() -> None:
    driver = started()
    rcpts = b"".join(f"RCPT TO:<u{i}@x>\r\n".encode() for i in range(50))
    replies = driver.feed(b"MAIL FROM:<s@x>\r\n" + rcpts + b"RCPT TO:<bad address>\r\n"
                          b"RCPT TO:<last@x>\r\nDATA\r\n")
    assert codes(replies) == [250] + [250] * 50 + [501, 250, 354]
    assert driver.batches == [(*(f"u{i}@x" for i in range(50)), "last@x")]


def test_batch_is_bounded() -> None:
    driver = started(options=LMTPOptions(hostname="h", max_recipients=5000))
    count = RCPT_BATCH_LIMIT + 10
    rcpts = b"".join(f"RCPT TO:<u{i}@x>\r\n".encode() for i in range(count))
    replies = driver.feed(b"MAIL FROM:<s@x>\r\n" + rcpts)
    assert codes(replies) == [250] * (count + 1)
    assert [len(b) for b in driver.batches] == [RCPT_BATCH_LIMIT, 10]


def test_rcpts_arriving_one_by_one_are_looked_up_one_by_one() -> None:
    driver = started()
    driver.feed(b"MAIL FROM:<s@x>\r\n")
    for i in range(3):
        assert codes(driver.feed(f"RCPT TO:<u{i}@x>\r\n".encode())) == [250]
    assert driver.batches == [("u0@x",), ("u1@x",), ("u2@x",)]


def test_connection_pauses_for_the_backend() -> None:
    conn = Connection(LMTPOptions(hostname="h"), session_id="s", peer="p")
    conn.receive_data(b"LHLO x\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nNOOP\r\n")
    event = conn.next_event()
    assert event == CheckRecipients(("a@x", "b@x"))
    assert not conn.waiting_for_client
    assert conn.next_event() is PAUSED
    # replies so far can be flushed before waiting on the backend
    assert codes(parse_replies(conn.data_to_send())) == [220, 250, 250]
    with pytest.raises(ValueError, match="verdicts"):
        conn.recipients_checked([None])
    conn.recipients_checked([None, UNKNOWN])
    assert conn.next_event() is NEED_DATA
    assert codes(parse_replies(conn.data_to_send())) == [250, 550, 250]
    with pytest.raises(RuntimeError):
        conn.delivered([])


def test_max_recipients_counts_only_accepted_ones() -> None:
    driver = started(options=LMTPOptions(hostname="h", max_recipients=2),
                     verdict=lambda a: UNKNOWN if a.startswith("x") else None)
    replies = driver.feed(b"MAIL FROM:<s@x>\r\nRCPT TO:<x1@x>\r\nRCPT TO:<a@x>\r\n"
                          b"RCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n")
    assert [(c, e) for c, e, _ in replies] == [
        (250, "2.1.0"), (550, "5.1.1"), (250, "2.1.5"), (250, "2.1.5"), (452, "4.5.3"),
        (354, "")]
    assert driver.feed(b".\r\n") == [(250, "2.0.0", "Message delivered")] * 2


# -- error counting ---------------------------------------------------------------------


def test_error_limit_closes_the_session() -> None:
    driver = started()
    replies = driver.feed(b"FOO\r\n" * (ERROR_LIMIT + 5))
    assert codes(replies) == [500] * ERROR_LIMIT + [421]
    assert replies[-1][1] == "4.7.0"
    assert driver.closed == Close("errors")


def test_unknown_users_count_toward_the_error_limit() -> None:
    driver = started(verdict=lambda a: UNKNOWN)
    rcpts = b"".join(f"RCPT TO:<u{i}@x>\r\n".encode() for i in range(2000))
    replies = driver.feed(b"MAIL FROM:<s@x>\r\n" + rcpts)
    assert codes(replies) == [250] + [550] * ERROR_LIMIT + [421]
    assert driver.closed == Close("errors")
    assert sum(len(b) for b in driver.batches) <= RCPT_BATCH_LIMIT


def test_temporary_rcpt_refusals_do_not_count() -> None:
    driver = started(verdict=lambda a: DEFERRED)
    rcpts = b"".join(f"RCPT TO:<u{i}@x>\r\n".encode() for i in range(ERROR_LIMIT + 5))
    replies = driver.feed(b"MAIL FROM:<s@x>\r\n" + rcpts)
    assert codes(replies) == [250] + [451] * (ERROR_LIMIT + 5)
    assert driver.closed is None


# -- DATA: one reply per accepted recipient on every path ---------------------------------

N = pytest.mark.parametrize("n", [1, 3])


def _data_replies(n: int, body: bytes, **kwargs: object) -> tuple[Driver, list[int]]:
    driver = started(**kwargs)
    rcpts = b"".join(f"RCPT TO:<r{i}@x>\r\n".encode() for i in range(n))
    assert codes(driver.feed(b"MAIL FROM:<s@x>\r\n" + rcpts + b"DATA\r\n")) == [250] * (n + 1) + [
        354]
    replies = driver.feed(body + b"NOOP\r\n")
    assert replies[-1][:2] == (250, "2.0.0")
    return driver, [r[0] for r in replies[:-1]]


@N
def test_too_big(n: int) -> None:
    driver, replies = _data_replies(n, b"x" * 3000 + b"\r\n" + b"y" * 2000 + b"\r\n.\r\n",
                                    options=LMTPOptions(hostname="h", data_size_limit=4096))
    assert replies == [552] * n
    assert driver.messages == []


def test_size_limit_counts_unstuffed_bytes() -> None:
    driver, replies = _data_replies(1, b"." * 1001 + b"\r\n" * 0 + b"\r\n.\r\n",
                                    options=LMTPOptions(hostname="h", data_size_limit=1002))
    assert replies == [250]
    assert len(driver.messages[0].data) == 1002


@N
def test_line_too_long(n: int) -> None:
    driver, replies = _data_replies(n, b"y" * 5000 + b"\r\n.\r\n",
                                    options=LMTPOptions(hostname="h", line_length_limit=1024))
    assert replies == [554] * n
    assert driver.messages == []


def test_line_too_long_counts_bare_lf_lines() -> None:
    body = b"a\n" + b"z" * 2000 + b"\nshort\r\n.\r\n"
    _, replies = _data_replies(1, body, options=LMTPOptions(hostname="h",
                                                            line_length_limit=1024))
    assert replies == [554]


def test_bare_lf_body_of_short_lines_is_accepted() -> None:
    # 6,000 lines of 13 bytes, no CR at all: no line is long.
    body = b"line of text\n" * 6000
    driver, replies = _data_replies(1, body + b"\r\n.\r\n",
                                    options=LMTPOptions(hostname="h", line_length_limit=65536))
    assert replies == [250]
    # stored with CRLF line ends, as IMAP wants them
    assert driver.messages[0].data == b"line of text\r\n" * 6000 + b"\r\n"


def test_long_line_followed_by_dot_line_is_not_the_end() -> None:
    body = b"z" * 3000 + b".\r\nmore\r\n.\r\n"
    _, replies = _data_replies(1, body, options=LMTPOptions(hostname="h",
                                                            line_length_limit=1024))
    assert replies == [554]


def test_bare_lf_dot_does_not_end_data() -> None:
    body = b"Subject: x\r\n\r\nbefore\n.\nMAIL FROM:<evil@example.com>\r\nafter\r\n"
    driver, replies = _data_replies(1, body + b".\r\n")
    assert replies == [250]
    assert driver.messages[0].data == body.replace(b"\n.\n", b"\r\n.\r\n")


@N
def test_undeclared_8bit(n: int) -> None:
    driver, replies = _data_replies(n, b"caf\xe9\r\n.\r\n", options=LMTPOptions(
        hostname="h", reject_undeclared_8bit=True))
    assert replies == [554] * n
    assert driver.messages == []


@N
@pytest.mark.parametrize("answer", [
    RuntimeError("backend exploded"), [], [DELIVERED] * 4, ["250 2.0.0 a string"],
    [Reply(354, "", "not a delivery reply")]])
def test_backend_failure_defers_every_recipient(n: int, answer: object) -> None:
    def deliver(message: IncomingMessage) -> Sequence[Reply] | BaseException:
        return answer if isinstance(answer, BaseException) else list(answer)  # type: ignore[call-overload]

    _, replies = _data_replies(n, b"hi\r\n.\r\n", deliver=deliver)
    assert replies == [451] * n


def test_backend_replies_are_passed_in_order() -> None:
    answers = [Reply(451, "4.3.0", "Temporary failure"), DELIVERED,
               Reply(550, "5.7.1", "Rejected by Sieve")]
    _, replies = _data_replies(3, b"hi\r\n.\r\n", deliver=lambda m: answers)
    assert replies == [451, 250, 550]


def test_eof_during_data_loses_the_transaction() -> None:
    driver = started()
    driver.feed(b"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nDATA\r\nhalf a mess")
    driver.conn.receive_data(b"")
    driver.run()
    assert driver.closed == Close("eof")
    assert driver.messages == []


# -- timeouts, shutdown, internal errors -------------------------------------------------


def test_timeout() -> None:
    driver = started()
    assert driver.conn.waiting_for_client
    assert driver.conn.timed_out() == Close("timeout")
    assert parse_replies(driver.conn.data_to_send())[0][:2] == (421, "4.4.2")


def test_shutdown_between_commands_and_during_data() -> None:
    idle = started()
    idle.conn.shutdown()
    idle.run()
    assert idle.closed == Close("shutdown")
    assert parse_replies(idle.conn.data_to_send())[0][:2] == (421, "4.3.2")

    busy = started()
    busy.feed(b"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\npart")
    busy.conn.shutdown()
    busy.run()
    assert busy.closed is None  # the data under way is received
    replies = busy.feed(b" two\r\n.\r\nNOOP\r\n")
    assert codes(replies) == [250, 250, 421]
    assert busy.closed == Close("shutdown")


def test_internal_error_drops_queued_replies() -> None:
    driver = started()
    driver.conn.receive_data(b"NOOP\r\n")
    driver.conn.next_event()
    assert driver.conn.internal_error() == Close("internal-error")
    assert parse_replies(driver.conn.data_to_send()) == [
        (421, "4.3.0", "lmtp.test Internal error, closing connection")]


# -- replies -----------------------------------------------------------------------------


def test_reply_lines_are_capped_and_one_line() -> None:
    reply = Reply(550, "5.7.1", "no\r\nInjected: header " + "é" * 600)
    data = reply.to_bytes()
    assert data.endswith(b"\r\n") and data.count(b"\r\n") == 1
    assert len(data) <= MAX_REPLY_LINE
    data.decode("utf-8")
    assert str(reply).startswith("550 5.7.1 no Injected: header é")


@pytest.mark.parametrize(("code", "enhanced"), [(250, "5.0.0"), (99, ""), (600, ""),
                                                (550, "5.1"), (550, "x.1.1")])
def test_reply_validation(code: int, enhanced: str) -> None:
    with pytest.raises(ValueError, match=r"reply code|enhanced"):
        Reply(code, enhanced, "text")


def test_every_protocol_reply_is_sendable() -> None:
    for name, reply in vars(Replies).items():
        if isinstance(reply, Reply):
            filled = reply.format(host="h", size=1, limit=2, verb="MAIL", names="X")
            assert parse_replies(filled.to_bytes())[0][0] == reply.code, name


# -- input split anywhere gives the same session ------------------------------------------

SESSION = (b"LHLO c\r\nMAIL FROM:<s@x> SIZE=100\r\nRCPT TO:<a@x>\r\nRCPT TO:<bad\r\n"
           b"RCPT TO:<b@x>\r\nDATA\r\n.x\r\n..\r\nbare\n.\nlf\r\n\r\n.\r\nRSET\r\n"
           b"MAIL FROM:<t@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n" + b"w" * 1500 + b"\r\n.\r\nQUIT\r\n")


def _run_split(cuts: list[int]) -> tuple[bytes, list[IncomingMessage], Close | None]:
    driver = Driver(options=LMTPOptions(hostname="h", line_length_limit=1024))
    out = bytearray()
    previous = 0
    for cut in [*sorted(cuts), len(SESSION)]:
        if cut > previous:  # b"" would mean end of input
            driver.conn.receive_data(SESSION[previous:cut])
        previous = cut
        driver.run()
        out += driver.conn.data_to_send()
    return bytes(out), driver.messages, driver.closed


def test_whole_session_in_one_piece() -> None:
    out, messages, closed = _run_split([])
    assert codes(parse_replies(out)) == [220, 250, 250, 250, 501, 250, 354, 250, 250, 250,
                                         250, 250, 354, 554, 221]
    assert messages[0].data == b"x\r\n.\r\nbare\r\n.\r\nlf\r\n\r\n"
    assert closed == Close("quit")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SESSION)), max_size=30))
def test_any_split_of_the_input_gives_the_same_replies(cuts: list[int]) -> None:
    assert _run_split(cuts) == _run_split([])


def test_byte_at_a_time() -> None:
    assert _run_split(list(range(len(SESSION)))) == _run_split([])


def test_replies_piling_up_are_handed_out_in_slices() -> None:
    # A client that pipelines without reading: the session hands out its
    # replies a slice at a time (the adapter stops when the client does not
    # take them) instead of answering everything buffered at once.
    conn = Connection(LMTPOptions(hostname="h"), session_id="s", peer="p")
    conn.receive_data(b"HELP\r\n" * 5000)
    assert conn.next_event() is FLUSH
    first = conn.data_to_send()
    assert FLUSH_SIZE <= len(first) < FLUSH_SIZE + 200
    assert conn.buffered > 0
    while (event := conn.next_event()) is FLUSH:
        conn.data_to_send()
    assert event is NEED_DATA
    assert conn.buffered == 0
