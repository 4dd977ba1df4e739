"""Integration: request lines and Host values the HTTP/1 codec must refuse or clean, as Envoy does.

Every case runs through pylon and through Envoy 1.40 (the reference) with the
same bootstrap and expectations. A refused request must be answered at once —
not after a timeout — and must never reach the upstream.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.proxy.conftest import Gateway, gateway_in_front_of_upstream, http_listener, raw_exchange, route
from tests.proxy.upstreams import Upstream

#: An answer counts as "at once" well inside any timeout the proxies have configured.
PROMPT_S = 0.5


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One proxy (pylon, then Envoy) in front of one upstream; the listener keeps Envoy's HTTP/1 defaults."""
    with gateway_in_front_of_upstream(request.param, tmp_path_factory.mktemp(request.param),
                                      lambda port: http_listener("main", port, [route("/", "up")])) as gateway:
        yield gateway


def first_reply(port: int, payload: bytes, timeout: float = 3.0) -> tuple[int | None, float]:
    """Send `payload`; the status of the first bytes that come back and how long they took (None: nothing came)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        start = time.monotonic()
        sock.sendall(payload)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return None, time.monotonic() - start
        elapsed = time.monotonic() - start
    parts = data.split(b"\r\n", 1)[0].split()
    return (int(parts[1]) if len(parts) >= 2 else None), elapsed


def reached_upstream(upstream: Upstream, marker: str) -> list[dict[str, Any]]:
    return [r for r in upstream.requests if marker in r["path"]]


@pytest.mark.parametrize("payload", [
    pytest.param(b"GET /%s\r\n", id="http-0.9-line-only"),
    pytest.param(b"GET /%s\r\n\r\n", id="http-0.9-with-blank-line"),
    pytest.param(b"GET /%s HTTP/2.0\r\nHost: a\r\n\r\n", id="http-2.0-on-http1"),
    pytest.param(b"GET /%s HTTP/1.2\r\nHost: a\r\n\r\n", id="http-1.2"),
    pytest.param(b"GET /%s HTTP/1.0\r\nHost: a\r\n\r\n", id="http-1.0-not-accepted"),
    pytest.param(b"POST /%s HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                 id="http-1.0-chunked"),
])
def test_unsupported_versions_get_426_at_once(gateway: Gateway, payload: bytes) -> None:
    marker = uuid.uuid4().hex
    status, elapsed = first_reply(gateway.port, payload.replace(b"%s", marker.encode()))
    assert status == 426 and elapsed < PROMPT_S, (status, elapsed)
    assert not reached_upstream(gateway.upstream, marker)


@pytest.mark.parametrize("payload", [
    pytest.param(b"GET /%s HTTP/1.1\r\nHost: a b/c\r\n\r\n", id="space-and-slash-in-host"),
    pytest.param(b"GET /%s HTTP/1.1\r\nHost: a\"b\r\n\r\n", id="quote-in-host"),
    pytest.param(b"GET /%s#x HTTP/1.1\r\nHost: a\r\n\r\n", id="fragment"),
    pytest.param(b"GET /%s?q=1#x HTTP/1.1\r\nHost: a\r\n\r\n", id="fragment-after-query"),
])
def test_bad_host_or_fragment_gets_400_and_close(gateway: Gateway, payload: bytes) -> None:
    marker = uuid.uuid4().hex
    result = raw_exchange(gateway.port, payload.replace(b"%s", marker.encode()), timeout=3.0)
    assert (result.status, result.closed) == (400, True), result.data[:200]
    assert not reached_upstream(gateway.upstream, marker)


@pytest.mark.parametrize("payload, host", [
    pytest.param(b"GET http://user:pw@a.example/%s HTTP/1.1\r\nHost: a.example\r\n\r\n", "a.example",
                 id="userinfo-in-absolute-uri"),
    pytest.param(b"GET http://user:pw@a.example/%s HTTP/1.1\r\n\r\n", "a.example", id="absolute-uri-without-host"),
    pytest.param(b"GET http://a.example/%s HTTP/1.1\r\nHost: b.example\r\n\r\n", "a.example",
                 id="absolute-uri-wins-over-host"),
    pytest.param(b"GET /%s HTTP/1.1\r\nHost: u@a,b\r\n\r\n", "u@a,b", id="sub-delims-and-at-are-valid"),
])
def test_authority_forwarded_as_envoy_does(gateway: Gateway, payload: bytes, host: str) -> None:
    marker = uuid.uuid4().hex
    result = raw_exchange(gateway.port, payload.replace(b"%s", marker.encode()), timeout=1.0)
    assert result.status == 200, result.data[:200]
    (seen,) = reached_upstream(gateway.upstream, marker)
    assert seen["headers"]["host"] == host
    assert "user" not in seen["path"]


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def gated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """`/admin` is refused by a route, everything else goes upstream; the paths are normalised first."""
    deny = {"match": {"prefix": "/admin"}, "direct_response": {"status": 403}}

    def listener(port: int) -> dict[str, Any]:
        return http_listener("main", port, [deny, route("/", "up")], normalize_path=True, merge_slashes=True)

    with gateway_in_front_of_upstream(request.param, tmp_path_factory.mktemp(request.param), listener) as gateway:
        yield gateway


@pytest.mark.parametrize("path", ["/public/../admin", "/public/%2e%2e/admin", "/x/..//admin", "//admin",
                                  "/public/%2E%2E\\admin", "/%61dmin", "/.//admin/"])
def test_normalised_paths_cannot_step_around_a_route(gated: Gateway, path: str) -> None:
    result = raw_exchange(gated.port, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    assert result.status == 403, result.data[:200]


def test_the_upstream_gets_the_normalised_path(gated: Gateway) -> None:
    marker = uuid.uuid4().hex
    result = raw_exchange(gated.port, f"GET /a/./{marker}/x/..//y%7e?q=/../ HTTP/1.1\r\nHost: a\r\n"
                                      "Connection: close\r\n\r\n".encode())
    assert result.status == 200
    (seen,) = reached_upstream(gated.upstream, marker)
    assert seen["path"] == f"/a/{marker}/y~?q=/../"


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def via_and_underscores(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """`via` set, headers with underscores dropped; a second listener rejects them instead."""
    direct = {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "x"}}}

    def listener(port: int) -> dict[str, Any]:
        return http_listener("main", port, [direct, route("/", "up")], via="edge-1",
                             common_http_protocol_options={"headers_with_underscores_action": "DROP_HEADER"})

    with gateway_in_front_of_upstream(request.param, tmp_path_factory.mktemp(request.param), listener) as gateway:
        yield gateway


def header_lines(data: bytes, name: bytes) -> list[bytes]:
    return [line for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if line.lower().startswith(name + b":")]


def test_via_is_appended_both_ways_and_on_local_replies(via_and_underscores: Gateway) -> None:
    gateway, marker = via_and_underscores, uuid.uuid4().hex
    result = raw_exchange(gateway.port, f"GET /respond/{marker}?via=origin HTTP/1.1\r\nHost: a\r\nVia: 1.1 client\r\n"
                                        "Connection: close\r\n\r\n".encode())
    assert header_lines(result.data, b"via") == [b"via: origin, edge-1"]
    (seen,) = reached_upstream(gateway.upstream, marker)
    assert seen["headers"]["via"] == "1.1 client, edge-1"
    direct = raw_exchange(gateway.port, b"GET /direct HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert header_lines(direct.data, b"via") == [b"via: edge-1"]


def test_headers_with_underscores_are_dropped(via_and_underscores: Gateway) -> None:
    gateway, marker = via_and_underscores, uuid.uuid4().hex
    result = raw_exchange(gateway.port, f"GET /{marker} HTTP/1.1\r\nHost: a\r\nX_User: admin\r\nX-Ok: 1\r\n"
                                        "Connection: close\r\n\r\n".encode())
    assert result.status == 200
    (seen,) = reached_upstream(gateway.upstream, marker)
    assert "x_user" not in seen["headers"] and seen["headers"]["x-ok"] == "1"
    assert gateway.proxy.stats()["http1.dropped_headers_with_underscores"] >= 1


def test_headers_with_underscores_rejected(implementation: str, tmp_path: Any) -> None:
    def listener(port: int) -> dict[str, Any]:
        return http_listener("main", port, [route("/", "up")],
                             common_http_protocol_options={"headers_with_underscores_action": "REJECT_REQUEST"})

    with gateway_in_front_of_upstream(implementation, tmp_path, listener) as gateway:
        marker = uuid.uuid4().hex
        result = raw_exchange(gateway.port, f"GET /{marker} HTTP/1.1\r\nHost: a\r\nX_User: admin\r\n\r\n".encode())
        assert (result.status, result.closed) == (400, True)
        assert not reached_upstream(gateway.upstream, marker)
        assert gateway.proxy.stats()["http1.requests_rejected_with_underscores_in_headers"] == 1


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def escaped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Gateway]]:
    """The gated routes behind each path_with_escaped_slashes_action (one proxy per action)."""
    deny = {"match": {"prefix": "/admin"}, "direct_response": {"status": 403}}
    with contextlib.ExitStack() as stack:
        gateways = {}
        for action in ("KEEP_UNCHANGED", "REJECT_REQUEST", "UNESCAPE_AND_FORWARD", "UNESCAPE_AND_REDIRECT"):
            def listener(port: int, action: str = action) -> dict[str, Any]:
                return http_listener("main", port, [deny, route("/", "up")], normalize_path=True,
                                     path_with_escaped_slashes_action=action)
            gateways[action] = stack.enter_context(gateway_in_front_of_upstream(
                request.param, tmp_path_factory.mktemp(f"{request.param}-{action.lower()}"), listener))
        yield gateways


@pytest.mark.parametrize(("action", "status", "upstream_path", "location"), [
    ("KEEP_UNCHANGED", 200, "/public/..%2Fadmin?q=%2F", None),  # an encoded slash is data: no /admin here
    ("REJECT_REQUEST", 400, None, None),
    ("UNESCAPE_AND_FORWARD", 403, None, None),  # unescaped, then normalised: /admin, which the route refuses
    ("UNESCAPE_AND_REDIRECT", 307, None, "/admin?q=%2F"),
])  # fmt: skip
def test_escaped_slashes_cannot_step_around_a_route(escaped: dict[str, Gateway], action: str, status: int,
                                                    upstream_path: str | None, location: str | None) -> None:
    gateway, marker = escaped[action], uuid.uuid4().hex
    result = raw_exchange(gateway.port, f"GET /public/..%2Fadmin?q=%2F&m={marker} HTTP/1.1\r\nHost: a\r\n"
                                        "Connection: close\r\n\r\n".encode())
    assert result.status == status, result.data[:200]
    seen = reached_upstream(gateway.upstream, marker)
    assert [r["path"].split("&m=")[0] for r in seen] == ([upstream_path] if upstream_path else [])
    if location is not None:
        assert f"location: {location}&m={marker}".lower().encode() in result.data.lower()


def test_requests_after_connection_close_are_dropped_not_answered(gateway: Gateway) -> None:
    """A client that says Connection: close and keeps sending gets its answer whole, and nothing more."""
    marker = uuid.uuid4().hex
    result = raw_exchange(gateway.port, f"GET /bytes/100000?{marker} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                                        f"GET /after/{marker} HTTP/1.1\r\nHost: a\r\n\r\n".encode() * 3)
    assert result.status == 200 and result.closed
    assert result.data.count(b"HTTP/1.1") == 1 and result.data.endswith(b"x" * 1000)
    assert len(result.data.partition(b"\r\n\r\n")[2]) == 100000
    assert not [r for r in gateway.upstream.requests if r["path"] == f"/after/{marker}"]
