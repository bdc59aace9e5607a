"""The fuzz target of the LMTP command and address parser.

Two entry points, both taking raw bytes and raising AssertionError (or any
other exception, which is a crash) when a rule is broken:

* :func:`check_command_line`: one command line through the pure syntax
  functions, and every address they accept on through the recipient rules
  and the trace headers;
* :func:`check_session`: bytes fed in chunks to the sans-I/O protocol core,
  its events answered, until it asks for more input or closes.

``tests/test_fuzz_lmtp.py`` runs them for a bounded number of inputs in CI;
``benchmarks/fuzz_lmtp.py`` runs a campaign (atheris when installed,
coverage-guided; hypothesis otherwise).
"""

from __future__ import annotations

import re
from typing import Final

from hypothesis import strategies as st

from pymap_admin.outcomes import MAX_REPLY_LINE, Reply
from pymap_deliver.headers import trace_headers
from pymap_deliver.protocol import (
    RCPT_BATCH_LIMIT,
    CheckRecipients,
    Close,
    Connection,
    LMTPOptions,
)
from pymap_deliver.recipients import RecipientRules, is_mailbox_name
from pymap_deliver.syntax import (
    Mail,
    address_is_safe,
    parse_mail,
    parse_params,
    parse_path,
    parse_rcpt,
    split_command,
)

from .protocol_driver import DELIVERED, UNKNOWN, next_question

__all__ = ["COMMAND_LINES", "SESSION_LINES", "check_command_line", "check_session"]

_RULES: Final = RecipientRules(delimiter="+-", detail_mailbox=True)
_REPLY_LINE: Final = re.compile(rb"[2-5]\d\d(?:[ -][^\r\n]*)?\r\n")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# Small limits, so that short inputs reach the limit paths too.
_OPTIONS: Final = LMTPOptions(hostname="fuzz.test", data_size_limit=4096,
                              line_length_limit=1024, max_recipients=5)

_tricky = st.sampled_from([*'<>"\\@:,. +-/\t\r\n\x00\x0b\x0c\x1c\x7f\x85=',
                           "..", "../", "/..", "INBOX", "é", "\u2028", "SIZE=",
                           "BODY=8BITMIME", "SMTPUTF8"])
_text = st.lists(st.one_of(_tricky, st.text(max_size=6)), max_size=12).map("".join)
#: Command lines built from the grammar's pieces and the characters that
#: broke things before (controls, separators, quotes, brackets).
COMMAND_LINES = st.builds(
    lambda verb, head, inner, tail: f"{verb} {head}{inner}{tail}",
    st.sampled_from(["MAIL", "RCPT", "mail", "LHLO", "DATA", "NOOP", "VRFY", "X"]),
    st.sampled_from(["FROM:<", "TO:<", "FROM:", "TO:", "from: <", "TO:<@a,@b:", ""]),
    _text,
    st.sampled_from([">", "> SIZE=10", "> BODY=8BITMIME SMTPUTF8", "> X=1", ">x", ""]),
)


#: Lines of a session: commands, data lines, over-long and bare-LF lines.
SESSION_LINES = st.one_of(
    COMMAND_LINES.map(lambda c: c.encode("utf-8", "replace") + b"\r\n"),
    st.sampled_from([b"LHLO fuzz\r\n", b"MAIL FROM:<s@x>\r\n", b"RCPT TO:<ab>\r\n",
                     b"RCPT TO:<abc>\r\n", b"DATA\r\n", b"RSET\r\n", b".\r\n", b"..x\r\n",
                     b"line\n", b"x" * 1100 + b"\r\n", b"QUIT\r\n", b"\r\n"]),
    st.binary(max_size=40),
)


def check_reply_bytes(out: bytes) -> None:
    """Replies as they go on the wire: whole CRLF lines, each a reply line
    of at most 512 octets, nothing else."""
    if not out:
        return
    assert out.endswith(b"\r\n"), out[-80:]
    for line in out.split(b"\r\n")[:-1]:
        raw = line + b"\r\n"
        assert len(raw) <= MAX_REPLY_LINE, len(raw)
        assert _REPLY_LINE.fullmatch(raw), raw[:80]


def _check_address(address: str) -> None:
    assert address_is_safe(address), address
    assert _CONTROL.search(address) is None, address
    target = _RULES.resolve(address)
    if target.mailbox is not None:
        assert is_mailbox_name(target.mailbox), target
        assert ".." not in target.mailbox.split("/"), target
        assert not target.mailbox.startswith("/"), target
    headers = trace_headers(sender=address, recipient=address, lhlo_name="fuzz",
                            peer="127.0.0.1:1", hostname="fuzz.test", session_id="s",
                            received_at=0.0, smtputf8=True)
    # Three header fields, folded lines only: nothing the address could inject.
    lines = headers.split(b"\r\n")
    assert lines[-1] == b"", headers[-40:]
    fields = [line for line in lines[:-1] if line[:1] not in (b" ", b"\t")]
    assert len(fields) == 3, headers
    assert b"\n" not in b"".join(lines) and b"\r" not in b"".join(lines)


def check_command_line(data: bytes) -> None:
    """One command line through the syntax functions."""
    split = split_command(data)
    if split is None:
        # Only a line that is not UTF-8 is refused outright.
        try:
            data.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError:
            return
        raise AssertionError(f"valid UTF-8 refused: {data!r}")
    verb, arg = split
    assert verb == verb.upper()
    path = parse_path(arg)
    if path is not None:
        assert path[1] == path[1].strip()
    params = parse_params(arg)
    if params is not None:
        assert all(key == key.upper() and key.isalnum() for key in params)
    mail = parse_mail(arg)
    if isinstance(mail, Mail):
        if mail.sender:
            _check_address(mail.sender)
        assert mail.size is None or mail.size >= 0
    else:
        assert isinstance(mail, Reply) and mail.code >= 500, mail
        check_reply_bytes(mail.to_bytes())
    rcpt = parse_rcpt(arg)
    if isinstance(rcpt, str):
        assert rcpt, arg
        _check_address(rcpt)
    else:
        assert isinstance(rcpt, Reply) and rcpt.code >= 500, rcpt
        check_reply_bytes(rcpt.to_bytes())


def check_session(data: bytes, chunk: int = 7) -> None:
    """``data`` fed to a protocol core in ``chunk``-byte pieces, then EOF.
    Recipients whose address has an even length are accepted, the others
    refused; deliveries succeed. The session must end in a Close."""
    conn = Connection(_OPTIONS, session_id="fuzz", peer="127.0.0.1:1", clock=lambda: 0.0)
    pieces = [data[i:i + chunk] for i in range(0, len(data), max(chunk, 1))] + [b""]
    out = bytearray()
    for piece in pieces:
        conn.receive_data(piece)
        while (event := next_question(conn, out)) is not None:
            if isinstance(event, Close):
                check_reply_bytes(bytes(out) + conn.data_to_send())
                return
            if isinstance(event, CheckRecipients):
                assert 0 < len(event.addresses) <= RCPT_BATCH_LIMIT
                for address in event.addresses:
                    _check_address(address)
                conn.recipients_checked(
                    [None if len(a) % 2 == 0 else UNKNOWN for a in event.addresses])
            else:
                message = event.message
                assert 0 < len(message.recipients) <= _OPTIONS.max_recipients
                assert len(message.data) <= _OPTIONS.data_size_limit
                if message.sender:
                    _check_address(message.sender)
                conn.delivered([DELIVERED] * len(message.recipients))
    raise AssertionError("input ended (EOF) but the session did not close")
