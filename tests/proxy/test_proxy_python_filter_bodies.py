"""Integration: the Python filter's body hooks - whole request and response bodies, read and replaced.

A script that defines `on_request_body` / `on_response_body` makes the proxy buffer that direction:
the upstream sees the replaced request body with a length of its own (chunked uploads included), the
client gets the replaced response with the headers the hook set. Bodies over the connection's buffer
limit are answered 413 / 500 and counted; a failing hook fails its request closed (request side) or
leaves the response unchanged (response side).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, route, static_cluster
from tests.proxy.test_proxy_python_filter import PYTHON_TYPE, write_atomically
from tests.proxy.upstreams import Upstream

BUFFER_LIMIT = 64 * 1024

SCRIPT = '''
def on_request_body(request):
    if request.path.startswith("/boom"):
        raise RuntimeError("a bug in the filter")
    request.headers.set("x-body-seen", str(len(request.body)))
    request.body = request.body.replace(b"ping", b"pong")


def on_response_body(response):
    if response.body.startswith(b"crash"):
        raise RuntimeError("a bug in the filter")
    if b"secret" in response.body:
        response.body = response.body.replace(b"secret", b"******")
        response.headers.set("x-redacted", "1")
'''


@contextlib.contextmanager
def proxy_with_script(launcher: ProxyLauncher, path: Path, script: str, **listener_fields: Any) -> Iterator[Any]:
    """pylon in front of an `Upstream`, with a Python filter running `script` (written to `path`) before the
    router; yields (proxy, upstream)."""
    upstream = Upstream()
    write_atomically(path, script)
    python_filter = {"name": path.stem, "typed_config": {"@type": PYTHON_TYPE, "path": str(path)}}
    listener = http_listener("main", free_port(), [route("/", "up")])
    listener.update(listener_fields)
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, python_filter)
    try:
        yield launcher.start([listener], [static_cluster("up", [upstream.port])]), upstream
    finally:
        upstream.close()


@pytest.fixture
def running(tmp_path: Path, launcher: ProxyLauncher) -> Iterator[Any]:
    with proxy_with_script(launcher, tmp_path / "bodies.py", SCRIPT, per_connection_buffer_limit_bytes=BUFFER_LIMIT) as both:
        yield both


def test_request_and_response_bodies_are_replaced(running: Any) -> None:
    proxy, upstream = running
    reply = httpx.post(proxy.url("main", "/echo"), content=b"ping with a secret inside", timeout=5)
    assert reply.status_code == 200 and reply.content == b"pong with a ****** inside"
    assert reply.headers["x-redacted"] == "1" and reply.headers["content-length"] == str(len(reply.content))
    seen = upstream.requests[-1]["headers"]
    assert seen["x-body-seen"] == "25" and seen["content-length"] == "25"


def test_a_chunked_upload_goes_upstream_whole_with_a_length(running: Any) -> None:
    proxy, upstream = running

    def pieces() -> Iterator[bytes]:
        yield b"ping "
        yield b"ping"

    reply = httpx.post(proxy.url("main", "/echo"), content=pieces(), timeout=5)
    assert reply.status_code == 200 and reply.content == b"pong pong"
    seen = upstream.requests[-1]["headers"]
    assert seen["content-length"] == "9" and "transfer-encoding" not in seen


def test_a_request_without_a_body_is_not_held(running: Any) -> None:
    proxy, upstream = running
    assert httpx.get(proxy.url("main", "/plain"), timeout=5).status_code == 200
    assert "x-body-seen" not in upstream.requests[-1]["headers"]


def test_bodies_over_the_buffer_limit_are_refused_and_counted(running: Any) -> None:
    proxy, upstream = running
    before = len(upstream.requests)
    reply = httpx.post(proxy.url("main", "/echo"), content=b"p" * (BUFFER_LIMIT + 1), timeout=5)
    assert reply.status_code == 413 and len(upstream.requests) == before  # never sent upstream
    reply = httpx.get(proxy.url("main", f"/bytes/{BUFFER_LIMIT * 4}"), timeout=5)
    assert reply.status_code == 500 and reply.text == "Internal Server Error"
    stats = proxy.stats()
    assert stats["http.main.downstream_rq_too_large"] == 1 and stats["http.main.rs_too_large"] == 1


def test_failing_hooks(running: Any) -> None:
    proxy, upstream = running
    before = len(upstream.requests)
    assert httpx.post(proxy.url("main", "/boom"), content=b"x", timeout=5).status_code == 500
    assert len(upstream.requests) == before
    reply = httpx.post(proxy.url("main", "/echo"), content=b"crash secret", timeout=5)
    assert reply.status_code == 200 and reply.content == b"crash secret"  # unchanged
    assert proxy.stats()["http.main.python.errors"] == 2
