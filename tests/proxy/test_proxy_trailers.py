"""Integration: HTTP/1.1 chunked trailers through pylon and Envoy 1.40, the reference (issue 11).

Envoy's HTTP/1 codec drops trailers unless `http_protocol_options.enable_trailers` says otherwise: the HCM's
option governs the client's side (request trailers read, response trailers written), the cluster's (in the
typed HttpProtocolOptions' explicit HTTP/1 config) the upstream's side. The upstream here is a raw socket
server the test controls: it records every request's bytes as they arrived and answers each with a chunked
response carrying trailers.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httptools
import pytest

from tests.proxy.conftest import gateway_in_front_of_upstream, http_listener, route

OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
REQUEST = (b"POST /t HTTP/1.1\r\nhost: example\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\nx-count: 2\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n"
            b"trailer: grpc-status, x-resp-trailer\r\n\r\n"
            b"3\r\nfoo\r\n3\r\nbar\r\n0\r\ngrpc-status: 0\r\nx-resp-trailer: yes\r\n\r\n")


class _Message:
    """An HTTP/1.1 message parsed from bytes by llhttp (httptools): head, body, and trailer fields."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.in_body = False
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        (self.trailers if self.in_body else self.headers).append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_body = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)


class TrailerUpstream:
    """Answers every request with `RESPONSE` once the request is whole; `requests` keeps each request as parsed
    and `raw` its bytes as they arrived."""

    def __init__(self, response: bytes = RESPONSE) -> None:
        self.response = response
        self.requests: list[_Message] = []
        self.raw: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                message = _Message()
                parser = httptools.HttpRequestParser(message)
                raw = b""
                while not message.complete:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    raw += data
                    parser.feed_data(data)
                self.requests.append(message)
                self.raw.append(raw)
                conn.sendall(self.response)

    def close(self) -> None:
        self.closing = True
        self.sock.close()


def exchange(port: int, payload: bytes, timeout: float = 5.0) -> _Message:
    """Send one request on a fresh connection and parse the response, trailers included."""
    message = _Message()
    parser = httptools.HttpResponseParser(message)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        while not message.complete:
            data = sock.recv(65536)
            if not data:
                break
            parser.feed_data(data)
    return message


def cluster_options(enable_trailers: bool) -> dict[str, Any]:
    return {"typed_extension_protocol_options": {OPTIONS_KEY: {
        "@type": f"type.googleapis.com/{OPTIONS_KEY}",
        "explicit_http_config": {"http_protocol_options": {"enable_trailers": enable_trailers}}}}}


@pytest.fixture
def gateway(implementation: str, tmp_path: Path) -> Iterator[Any]:
    """Start `implementation` with trailers enabled (or not) downstream and upstream, in front of a TrailerUpstream."""

    @contextlib.contextmanager
    def start(downstream: bool, upstream: bool) -> Iterator[Any]:
        def listener(port: int) -> dict[str, Any]:
            return http_listener("main", port, [route("/", "up", timeout="5s")],
                                 http_protocol_options={"enable_trailers": downstream})

        with gateway_in_front_of_upstream(implementation, tmp_path, listener, TrailerUpstream,
                                          **cluster_options(upstream)) as gw:
            yield gw

    return start


def test_trailers_forwarded_both_ways_when_enabled(gateway):
    with gateway(True, True) as gw:
        response = exchange(gw.port, REQUEST)
        assert response.complete and response.body == b"foobar"
        assert response.trailers == [(b"grpc-status", b"0"), (b"x-resp-trailer", b"yes")]
        assert response.header(b"transfer-encoding") == b"chunked"
        assert response.header(b"trailer") == b"grpc-status, x-resp-trailer"  # not hop-by-hop: Envoy relays it
        (request,) = gw.upstream.requests
        assert request.body == b"hello world"
        assert request.header(b"transfer-encoding") == b"chunked"
        assert request.header(b"trailer") == b"x-checksum"
        assert request.trailers == [(b"x-checksum", b"abc123"), (b"x-count", b"2")]


def test_trailers_dropped_by_default(gateway):
    with gateway(False, False) as gw:
        response = exchange(gw.port, REQUEST)
        assert response.complete and response.body == b"foobar"
        assert response.trailers == []
        (request,) = gw.upstream.requests
        assert request.body == b"hello world"
        assert request.trailers == []


def test_downstream_only_trailers_stop_at_the_cluster(gateway):
    """The HCM reads and writes trailers, the cluster neither sends nor reads them: none cross."""
    with gateway(True, False) as gw:
        response = exchange(gw.port, REQUEST)
        assert response.complete and response.body == b"foobar"
        assert response.trailers == []
        (request,) = gw.upstream.requests
        assert request.trailers == []


def test_upstream_only_trailers_never_reach_it(gateway):
    """The cluster would carry trailers, but the HCM drops the client's and writes none to it."""
    with gateway(False, True) as gw:
        response = exchange(gw.port, REQUEST)
        assert response.complete and response.body == b"foobar"
        assert response.trailers == []
        (request,) = gw.upstream.requests
        assert request.trailers == []


def test_response_trailers_on_a_request_without_body(gateway):
    """A GET with no body still gets the response's trailers (the response is chunked)."""
    with gateway(True, True) as gw:
        response = exchange(gw.port, b"GET /g HTTP/1.1\r\nhost: example\r\n\r\n")
        assert response.body == b"foobar"
        assert response.trailers == [(b"grpc-status", b"0"), (b"x-resp-trailer", b"yes")]
        (request,) = gw.upstream.requests
        assert request.header(b"transfer-encoding") is None and request.trailers == []


TRAILER_FILTER = '''
def on_request_trailers(request):
    request.trailers.set("x-checksum", request.trailers.get("x-checksum").upper())
    request.trailers.remove("x-count")


def on_response_trailers(response):
    response.trailers.add("x-seen-by", "pylon")
    response.trailers.remove("x-resp-trailer")
'''


def test_filters_see_and_change_trailers_both_ways(tmp_path: Path) -> None:
    """pylon's own Python filter (Envoy has none to compare with) edits the request's trailers before they go
    upstream and the response's before they go to the client: the HTTP filter chain's trailer hooks."""
    script = tmp_path / "trailers.py"
    script.write_text(TRAILER_FILTER)
    python_filter = {"name": "trailers", "typed_config": {
        "@type": "type.googleapis.com/pylon.filters.http.v1.Python", "path": str(script)}}

    def listener(port: int) -> dict[str, Any]:
        main = http_listener("main", port, [route("/", "up", timeout="5s")],
                             http_protocol_options={"enable_trailers": True})
        hcm = main["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [python_filter, *hcm["http_filters"]]
        return main

    with gateway_in_front_of_upstream("pylon", tmp_path, listener, TrailerUpstream, **cluster_options(True)) as gw:
        response = exchange(gw.port, REQUEST)
        (request,) = gw.upstream.requests
    assert request.trailers == [(b"x-checksum", b"ABC123")]
    assert response.body == b"foobar"
    assert response.trailers == [(b"grpc-status", b"0"), (b"x-seen-by", b"pylon")]
