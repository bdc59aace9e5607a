"""A bounded run of the LMTP parser fuzz target (tests/fuzz_lmtp.py): raw
bytes, and command lines built from the grammar's pieces and the characters
that broke things before (controls, separators, quotes, brackets). The long
campaign is ``python -m benchmarks.fuzz_lmtp``."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .fuzz_lmtp import COMMAND_LINES, SESSION_LINES, check_command_line, check_session

_FUZZ = settings(max_examples=300, deadline=None, derandomize=False,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_FUZZ
@given(st.one_of(st.binary(max_size=300),
                 COMMAND_LINES.map(lambda c: c.encode("utf-8", "replace"))))
@example(b"MAIL FROM:<a\x0cX-Evil:\tyes@x.example>\r\n")
@example(b"RCPT TO:<alice+../bob>\r\n")
@example(b"RCPT TO:<alice+/>\r\n")
def test_command_line_parser(line: bytes) -> None:
    check_command_line(line)


@_FUZZ
@given(st.lists(SESSION_LINES, max_size=40).map(b"".join), st.integers(1, 64))
@example(b"LHLO a\r\nMAIL FROM:<s@x>\r\nRCPT TO:<ab>\r\nDATA\r\nx\n.\r\n", 3)
def test_session_bytes(data: bytes, chunk: int) -> None:
    check_session(data, chunk)
