"""Hypothesis state machine over the sans-I/O LMTP session: random
interleavings of commands, pipelined groups split anywhere, RSETs, slow
backends (answers held back while more input arrives), backend failures,
timeouts, end of input and shutdown.

Invariants checked after every step:
- exactly one reply per command, in order, until the session closes;
- after DATA's 354, exactly one reply per accepted recipient;
- a 250 after the data only for a recipient the backend stored;
- once closed, nothing more is sent and no event but Close comes out;
- a shutdown completes: with the backend answering and the client finishing
  its message, the session closes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pymap_admin.outcomes import Reply
from pymap_deliver.protocol import (
    CheckRecipients,
    Close,
    Connection,
    Deliver,
    IncomingMessage,
    LMTPOptions,
)

from .protocol_driver import (
    DEFERRED,
    DELIVERED,
    REJECTED,
    UNKNOWN,
    next_question,
    parse_replies,
)

COMMANDS = [
    b"LHLO client.example", b"MAIL FROM:<s@x>", b"MAIL FROM:<> BODY=8BITMIME",
    b"MAIL FROM:<s@x> SIZE=999999", b"MAIL FROM:<bad", b"RCPT TO:<known@x>",
    b"RCPT TO:<other@x>", b"RCPT TO:<unknown@x>", b"RCPT TO:<flaky@x>", b"RCPT TO:<a\x0b@x>",
    b"RSET", b"NOOP", b"VRFY x", b"HELP", b"FOO", b"EXPN x", b"\xff\xfe",
]
LINES = [b"Subject: x", b"", b".", b"..", b".x", b"x" * 600, b"y" * 1100, b"bare\nlf",
         b"caf\xc3\xa9"]


@dataclass
class Item:
    """What the client sent: a command, or a message body after a 354."""

    command: bytes | None
    body: bool = False
    #: For a body: which recipients the backend stored (by position).
    stored: list[bool] | None = None


@dataclass
class Pending:
    event: CheckRecipients | Deliver
    item: Item | None = None


@dataclass
class Model:
    items: list[Item] = field(default_factory=list)
    replies: list[tuple[int, str, str]] = field(default_factory=list)


class LMTPSessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.conn = Connection(
            LMTPOptions(hostname="h", data_size_limit=2000, line_length_limit=1024,
                        max_recipients=3),
            session_id="s", peer="p", clock=lambda: 0.0)
        self.items: list[Item] = []
        self.replies: list[tuple[int, str, str]] = []
        self.pending: Pending | None = None
        self.closed: Close | None = None
        self.fed_eof = False
        self.collect()
        # Most interleavings worth trying happen after LHLO.
        self.items.append(Item(b"LHLO client.example"))
        self.feed(b"LHLO client.example\r\n", [])

    # -- driving ------------------------------------------------------------------

    def collect(self) -> None:
        out = self.conn.data_to_send()
        if self.closed is not None:
            assert out == b"", "data sent after close"
        self.replies += parse_replies(out)

    def pump(self) -> None:
        out = bytearray()
        while self.pending is None and self.closed is None:
            event = next_question(self.conn, out)
            self.replies += parse_replies(bytes(out))
            out.clear()
            if event is None:
                break
            if isinstance(event, Close):
                self.collect()
                self.closed = event
                break
            if isinstance(event, Deliver):
                body = next(i for i in reversed(self.items) if i.body)
                self.pending = Pending(event, body)
            else:
                assert isinstance(event, CheckRecipients)
                self.pending = Pending(event)
        self.collect()

    def feed(self, data: bytes, cuts: list[int]) -> None:
        previous = 0
        for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
            if cut > previous:
                self.conn.receive_data(data[previous:cut])
                self.pump()
            previous = cut

    def reply_state(self) -> tuple[int, bool]:
        """Walk the replies against what was sent: (items answered, awaiting
        a body). Asserts the one-reply-per-command rules on the way."""
        replies = self.replies
        assert replies[0][0] == 220
        index, accepted, answered = 1, 0, 0
        for item in self.items:
            if index >= len(replies):
                break
            if replies[index][0] == 421:
                # Closed (shutdown, timeout, error limit) before this item.
                break
            if item.body:
                want = accepted
                accepted = 0
                if len(replies) - index < want:
                    break
                got = replies[index:index + want]
                assert all(code in (250, 451, 550, 552, 554) for code, _, _ in got), got
                for position, (code, _, _) in enumerate(got):
                    if code == 250:
                        assert item.stored is not None and item.stored[position], \
                            "250 without a stored copy"
                index += want
                answered += 1
                continue
            code, _, _ = replies[index]
            index += 1
            answered += 1
            assert item.command is not None
            verb = item.command.split(b" ")[0].upper()
            if verb == b"DATA":
                if code == 354:
                    if answered == len(self.items):
                        return answered, True
                else:
                    assert code in (501, 503), code
                    accepted = 0
            elif verb == b"RCPT" and code == 250:
                accepted += 1
            elif verb in (b"MAIL", b"RSET", b"LHLO") and code == 250:
                accepted = 0
            elif verb == b"QUIT":
                assert code == 221
        if index < len(replies):
            assert replies[index][0] == 421 and index + 1 == len(replies), \
                f"unexpected replies {replies[index:]}"
            assert self.closed is not None
        return answered, False

    def awaiting_body(self) -> bool:
        return self.closed is None and self.reply_state()[1]

    def data_outstanding(self) -> bool:
        last = self.items[-1] if self.items else None
        if last is None or last.command is None or last.command.upper() != b"DATA":
            return False
        answered, _ = self.reply_state()
        return answered < len(self.items) or self.awaiting_body()

    # -- rules --------------------------------------------------------------------

    @precondition(lambda self: not self.fed_eof and not self.data_outstanding())
    @rule(commands=st.lists(st.sampled_from(COMMANDS), min_size=1, max_size=6),
          then_data=st.booleans(), quit_=st.integers(0, 20),
          cuts=st.lists(st.integers(0, 400), max_size=4))
    def pipeline(self, commands: list[bytes], then_data: bool, quit_: int,
                 cuts: list[int]) -> None:
        if quit_ == 0:
            commands = [*commands, b"QUIT"]
        elif then_data:
            commands = [*commands, b"DATA"]
        self.items += [Item(command) for command in commands]
        self.feed(b"".join(c + b"\r\n" for c in commands), cuts)

    @precondition(lambda self: not self.fed_eof and not self.data_outstanding())
    @rule(rcpts=st.lists(st.sampled_from([b"known@x", b"other@x", b"unknown@x", b"flaky@x",
                                          b"<bad"]), min_size=1, max_size=5),
          rset_first=st.booleans(), cuts=st.lists(st.integers(0, 200), max_size=4))
    def transaction(self, rcpts: list[bytes], rset_first: bool, cuts: list[int]) -> None:
        commands = [b"RSET"] if rset_first else []
        commands += [b"MAIL FROM:<s@x>", *(b"RCPT TO:<" + r + b">" for r in rcpts), b"DATA"]
        self.items += [Item(command) for command in commands]
        self.feed(b"".join(c + b"\r\n" for c in commands), cuts)

    @precondition(lambda self: not self.fed_eof and self.awaiting_body())
    @rule(lines=st.lists(st.sampled_from(LINES), max_size=8),
          cuts=st.lists(st.integers(0, 3000), max_size=4))
    def body(self, lines: list[bytes], cuts: list[int]) -> None:
        self.items.append(Item(None, body=True))
        data = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                        for line in lines)
        self.feed(data + b".\r\n", cuts)

    @precondition(lambda self: self.pending is not None
                  and isinstance(self.pending.event, CheckRecipients))
    @rule(choices=st.lists(st.sampled_from(["ok", "deferred", "error"]), min_size=8,
                           max_size=8))
    def answer_lookups(self, choices: list[str]) -> None:
        assert self.pending is not None and isinstance(self.pending.event, CheckRecipients)
        verdicts: list[Reply | BaseException | None] = []
        for address, choice in zip(self.pending.event.addresses, choices * 20, strict=False):
            if address.startswith("unknown"):
                verdicts.append(UNKNOWN)
            elif address.startswith("flaky") and choice != "ok":
                verdicts.append(DEFERRED if choice == "deferred" else RuntimeError("lookup"))
            else:
                verdicts.append(None)
        self.pending = None
        self.conn.recipients_checked(verdicts)
        self.pump()

    @precondition(lambda self: self.pending is not None
                  and isinstance(self.pending.event, Deliver))
    @rule(outcomes=st.lists(st.sampled_from(["stored", "rejected", "deferred"]), min_size=3,
                            max_size=3),
          explode=st.booleans())
    def answer_delivery(self, outcomes: list[str], explode: bool) -> None:
        assert self.pending is not None and isinstance(self.pending.event, Deliver)
        message: IncomingMessage = self.pending.event.message
        item = self.pending.item
        assert item is not None
        count = len(message.recipients)
        event(f"delivery to {count} recipients, explode={explode}")
        self.pending = None
        if explode:
            item.stored = [False] * count
            self.conn.delivered(RuntimeError("backend exploded"))
        else:
            item.stored = [o == "stored" for o in outcomes[:count]]
            table = {"stored": DELIVERED, "rejected": REJECTED, "deferred": DEFERRED}
            self.conn.delivered([table[o] for o in outcomes[:count]])
        self.pump()

    @precondition(lambda self: self.closed is None and self.conn.waiting_for_client)
    @rule()
    def idle_timeout(self) -> None:
        self.closed = self.conn.timed_out()
        self.replies += parse_replies(self.conn.data_to_send())

    @rule()
    def shutdown(self) -> None:
        self.conn.shutdown()
        self.pump()

    @precondition(lambda self: not self.fed_eof)
    @rule()
    def end_of_input(self) -> None:
        self.fed_eof = True
        self.conn.receive_data(b"")
        self.pump()

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def replies_match_commands(self) -> None:
        answered, _ = self.reply_state()
        quiescent = (self.closed is None and self.pending is None
                     and self.conn.buffered == 0)
        if quiescent:
            # Nothing left to process: every item sent has its replies.
            assert answered == len(self.items), (answered, self.items, self.replies)

    @invariant()
    def closed_means_closed(self) -> None:
        if self.closed is not None:
            assert self.conn.closed
            assert self.conn.next_event() == self.closed
            assert self.conn.data_to_send() == b""
            self.conn.receive_data(b"NOOP\r\n")
            assert self.conn.next_event() == self.closed
            assert self.conn.data_to_send() == b""

    def teardown(self) -> None:
        # Shutdown completes: answer the backend, finish a message under way.
        self.conn.shutdown()
        self.pump()
        for _ in range(6):
            if self.closed is not None:
                break
            if self.pending is not None:
                if isinstance(self.pending.event, CheckRecipients):
                    self.answer_lookups(["ok"] * 8)
                else:
                    self.answer_delivery(["stored"] * 3, explode=False)
            elif self.awaiting_body() and not self.fed_eof:
                self.body([], [])
            self.pump()
        assert self.closed is not None, "shutdown did not complete"
        self.reply_state()


LMTPSessionMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None)
test_lmtp_session = LMTPSessionMachine.TestCase
