"""Header-name case on the HTTP/1 wire (sans-IO): Envoy's proper-case words, preserved spellings, heads rewritten."""

from __future__ import annotations

import pytest

from pylon.proxy.http.header_case import PreservedCase, format_head, proper_case


@pytest.mark.parametrize(("name", "expected"), [
    (b"content-type", b"Content-Type"), (b"te", b"Te"), (b"foo$b#$are", b"Foo$B#$Are"), (b"x-1a", b"X-1a"),
    (b"already-Upper", b"Already-Upper"), (b"", b""),
])
def test_proper_case(name: bytes, expected: bytes) -> None:
    assert proper_case(name) == expected


def test_preserved_case_keeps_the_first_spelling_and_falls_back() -> None:
    case = PreservedCase()
    for name in (b"X-Custom", b"x-custom", b"USER-agent"):
        case.record(name)
    assert [case.format(n) for n in (b"x-custom", b"user-agent", b"x-added")] == [b"X-Custom", b"USER-agent", b"x-added"]
    proper = PreservedCase(fallback_proper=True)
    assert proper.format(b"x-added") == b"X-Added"


def test_format_head_rewrites_names_only() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: a:b\r\nx-y: Z\r\n\r\nbody: stays\r\n"
    assert format_head(head, proper_case) == b"HTTP/1.1 200 OK\r\nContent-Type: a:b\r\nX-Y: Z\r\n\r\nbody: stays\r\n"
    assert format_head(b"GET / HTTP/1.1\r\n\r\n", proper_case) == b"GET / HTTP/1.1\r\n\r\n"
    assert format_head(b"no end", proper_case) == b"no end"
