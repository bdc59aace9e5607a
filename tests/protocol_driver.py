"""Driving the sans-I/O LMTP core (pymap_deliver.protocol) without sockets,
as the asyncio adapter (pymap_deliver.lmtp) does with them: the one loop the
core's tests, its state machine and its fuzz target share, and the replies
they script."""

from __future__ import annotations

from typing import Final

from pymap_admin.outcomes import MAX_REPLY_LINE, Reply
from pymap_deliver.protocol import (
    FLUSH,
    NEED_DATA,
    PAUSED,
    CheckRecipients,
    Close,
    Connection,
    Deliver,
)

__all__ = ["DEFERRED", "DELIVERED", "REJECTED", "UNKNOWN", "Question", "next_question",
           "parse_replies"]

DELIVERED: Final = Reply(250, "2.0.0", "Message delivered")
UNKNOWN: Final = Reply(550, "5.1.1", "User unknown")
DEFERRED: Final = Reply(451, "4.4.1", "Mail store unreachable")
REJECTED: Final = Reply(550, "5.7.1", "Rejected by Sieve")

#: What the core asks of its driver: the backend's answer, or to close.
Question = CheckRecipients | Deliver | Close

#: More events than any input of the tests can need without a question: a
#: core that keeps flushing is stuck.
_STEPS: Final = 100_000


def next_question(conn: Connection, out: bytearray) -> Question | None:
    """Runs ``conn`` until it needs more input from the client (None), an
    answer from the backend, or closes; what it flushes meanwhile is
    appended to ``out`` (the rest stays in ``conn.data_to_send()``). Call
    it only when no question is outstanding: the core pauses then, which
    here is an error."""
    for _ in range(_STEPS):
        event = conn.next_event()
        if event is NEED_DATA:
            return None
        assert event is not PAUSED, "paused with no question asked"
        if event is FLUSH:
            out += conn.data_to_send()
        else:
            assert isinstance(event, CheckRecipients | Deliver | Close), event
            return event
    raise AssertionError("the core does not make progress")


def parse_replies(out: bytes) -> list[tuple[int, str, str]]:
    """(code, enhanced or "", text) per reply; multi-line replies count once."""
    replies = []
    for raw in out.split(b"\r\n")[:-1]:
        assert len(raw) <= MAX_REPLY_LINE - 2, raw
        text = raw.decode("utf-8")
        if text[3] == "-":
            continue
        first, _, rest = text[4:].partition(" ")
        if first[:1] in "245" and first.count(".") == 2 and first[0] == text[0]:
            replies.append((int(text[:3]), first, rest))
        else:
            replies.append((int(text[:3]), "", text[4:]))
    return replies
