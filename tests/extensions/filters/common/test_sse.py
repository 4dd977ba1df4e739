"""The SSE framing and field rules sse_to_metadata reads a body with (sans-IO), split every way a stream can be."""

from __future__ import annotations

import pytest

from pylon.extensions.filters.common.sse import EventFramer, event_bounds, event_data


def _events(body: bytes, pieces: list[int] | None = None, max_event_size: int = 0) -> list[bytes | None]:
    framer = EventFramer(max_event_size)
    cuts = [0, *(pieces if pieces is not None else range(1, len(body))), len(body)]
    out: list[bytes | None] = []
    for start, end in zip(cuts, cuts[1:]):
        out.extend(event_data(event) for event in framer.feed(body[start:end], end == len(body)))
    return out


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_each_line_ending_cuts_events_byte_by_byte(newline: bytes) -> None:
    body = newline.join([b"data: one", b"", b": a comment", b"data:two", b"data:  three", b"", b""])
    assert _events(body) == [b"one", b"two\n three"]
    assert _events(body, pieces=[]) == [b"one", b"two\n three"]


def test_a_cr_last_in_a_piece_waits_for_a_possible_lf() -> None:
    framer = EventFramer(0)
    assert framer.feed(b"data: a\r", False) == []
    assert framer.feed(b"\n\r", False) == []  # CRLF ended the line; the lone CR might still be a CRLF
    assert framer.feed(b"\n", False) == [b"data: a\r\n"]
    assert framer.held == b""


def test_at_the_end_a_lone_cr_ends_its_line_and_an_unfinished_event_is_dropped() -> None:
    assert event_bounds(b"data: a\r\r", 0, True) == (0, 8, 9)
    assert event_bounds(b"data: a\r\r", 0, False) is None
    assert _events(b"data: a\n\ndata: never ended\n") == [b"a"]


def test_fields() -> None:
    assert event_data(b"data\n") == b""  # a field name alone: an empty value
    assert event_data(b"event: x\nid: 1\nretry: 5\n") is None
    assert event_data(b"datum: x\ndata-x: y\n:data: z\n") is None
    assert event_data(b"data:\ndata\ndata: c\n") == b"\n\nc"
    assert event_data(b"data: {\"a\": 1}") == b'{"a": 1}'


def test_a_byte_order_mark_is_dropped_where_an_event_starts() -> None:
    assert _events(b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n", pieces=[]) == [b"a", b"b"]


def test_max_event_size_drops_what_is_held_and_starts_again() -> None:
    framer = EventFramer(16)
    assert framer.feed(b"data: 0123456789", False) == []
    assert framer.too_large == 0
    assert framer.feed(b"abcdef", False) == []  # 22 bytes without an event: dropped
    assert (framer.too_large, framer.held) == (1, b"")
    # Framing starts again mid-event, as Envoy's: each blank line ends an (empty) event.
    assert framer.feed(b"\n\ndata: ok\n\n", False) == [b"", b"", b"data: ok\n"]
    # An event over the limit that completes within what is held is read.
    assert EventFramer(4).feed(b"data: longer than four\n\n", False) == [b"data: longer than four\n"]
