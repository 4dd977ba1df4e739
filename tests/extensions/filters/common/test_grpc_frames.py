"""gRPC message framing read piece by piece (sans-IO): counts as Envoy's FrameInspector counts."""

from __future__ import annotations

import pytest

from pylon.extensions.filters.common.grpc_frames import FrameCounter, frame

BODY = frame(b"hello") + frame(b"") + frame(b"x" * 300) + frame(b"k: v\r\n", 0x80)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 11, 64, len(BODY)])
def test_messages_are_counted_however_the_body_is_split(size: int) -> None:
    counter = FrameCounter()
    started = [counter.feed(BODY[i:i + size]) for i in range(0, len(BODY), size)]
    assert counter.count == sum(started) == 4


def test_a_message_counts_when_its_first_byte_arrives() -> None:
    counter = FrameCounter()
    assert counter.feed(b"\x00") == 1  # only the flag byte so far: counted, as Envoy does
    assert counter.feed(b"\x00\x00\x00\x02ab") == 0
    assert counter.feed(b"") == 0 and counter.feed(b"\x00") == 1


def test_frame_prefixes_the_length() -> None:
    assert frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert frame(b"", 0x80) == b"\x80\x00\x00\x00\x00"
