"""Integration: the Python filter's stream hooks - each body piece transformed as it passes, nothing held.

`on_request_data` / `on_response_data` see every piece and a last call with `end_stream` (the place for a
tail); what they return replaces the piece, so the message loses its content-length and goes chunked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.proxy.conftest import ProxyLauncher
from tests.proxy.test_proxy_python_filter_bodies import proxy_with_script

SCRIPT = '''
def on_request_data(request):
    if b"boom" in request.data:
        raise RuntimeError("a bug in the filter")
    request.data = request.data.upper()
    if request.end_stream:
        request.data += b"|END"


def on_response_data(response):
    response.data = response.data.replace(b"secret", b"******")
    if response.end_stream:
        response.data += b"|TAIL"
'''


@pytest.fixture
def running(tmp_path: Path, launcher: ProxyLauncher) -> Iterator[Any]:
    with proxy_with_script(launcher, tmp_path / "streams.py", SCRIPT) as both:
        yield both


def test_each_piece_is_transformed_and_the_last_call_adds_a_tail(running: Any) -> None:
    proxy, upstream = running
    reply = httpx.post(proxy.url("main", "/echo"), content=b"a secret ping", timeout=5)
    assert reply.status_code == 200
    # The upstream echoed what it got (upper-cased, with the request's tail), then the response hook ran on it.
    assert reply.content == b"A SECRET PING|END|TAIL"
    sent = upstream.requests[-1]
    assert sent["headers"].get("transfer-encoding") == "chunked" and "content-length" not in sent["headers"]
    assert "content-length" not in reply.headers and reply.headers.get("transfer-encoding") == "chunked"


def test_a_chunked_upload_is_transformed_piece_by_piece(running: Any) -> None:
    proxy, _ = running

    def pieces() -> Iterator[bytes]:
        yield b"first secret "
        yield b"second"

    reply = httpx.post(proxy.url("main", "/echo"), content=pieces(), timeout=5)
    assert reply.content == b"FIRST SECRET SECOND|END|TAIL"


def test_a_response_without_a_body_hook_call_still_gets_its_tail(running: Any) -> None:
    proxy, _ = running
    reply = httpx.get(proxy.url("main", "/status/200"), timeout=5)
    assert reply.status_code == 200 and reply.content.endswith(b"|TAIL")


def test_a_failing_request_hook_fails_the_request_closed(running: Any) -> None:
    """The hook raises on the body: the client gets 500 and the upstream never gets a whole request. Its head
    may have gone ahead (nothing is held, so a body read apart from the head follows a head already sent); the
    upstream then sees its request reset, never its body."""
    proxy, upstream = running
    before = len(upstream.echoed)
    reply = httpx.post(proxy.url("main", "/echo"), content=b"boom", timeout=5)
    assert reply.status_code == 500 and reply.text == "python filter error"
    assert upstream.echoed[before:] == []


def test_a_head_request_and_bodiless_requests_are_left_alone(running: Any) -> None:
    proxy, upstream = running
    assert httpx.get(proxy.url("main", "/"), timeout=5).status_code == 200
    sent = upstream.requests[-1]
    assert "transfer-encoding" not in sent["headers"]  # a GET without a body is not made chunked
    head = httpx.head(proxy.url("main", "/"), timeout=5)
    assert head.status_code == 200 and head.content == b""
