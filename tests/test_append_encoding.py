"""The hand-serialized AppendRequest parses back to the request protobuf
would have built."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pymap_admin._wire import SerializedAppend as _SerializedAppend
from pymap_admin.grpc.admin_pb2 import AppendRequest

text = st.text(max_size=40)


@given(user=text, sender=st.none() | text, recipient=st.none() | text,
       mailbox=st.none() | text, flags=st.lists(text, max_size=3),
       when=st.integers(min_value=0, max_value=2**64 - 1),
       prefix=st.binary(max_size=300), data=st.binary(max_size=70000))
def test_parses_back_to_the_same_request(user: str, sender: str | None, recipient: str | None,
                                         mailbox: str | None, flags: list[str], when: int,
                                         prefix: bytes, data: bytes) -> None:
    head = AppendRequest(user=user, flags=flags, when=when)
    for name, value in (("sender", sender), ("recipient", recipient), ("mailbox", mailbox)):
        if value is not None:
            setattr(head, name, value)
    expected = AppendRequest()
    expected.CopyFrom(head)
    expected.data = prefix + data
    parsed = AppendRequest.FromString(_SerializedAppend(head, prefix, data).payload)
    assert parsed == expected
    # Presence survives: an unset sender is still absent, an empty one present.
    assert parsed.HasField("sender") == (sender is not None)
    assert parsed.HasField("recipient") == (recipient is not None)
    assert parsed.HasField("mailbox") == (mailbox is not None)


def test_large_lengths_use_multibyte_varints() -> None:
    data = b"x" * (2**21 + 5)
    parsed = AppendRequest.FromString(_SerializedAppend(AppendRequest(user="u"), b"h", data)
                                      .payload)
    assert parsed.data == b"h" + data
