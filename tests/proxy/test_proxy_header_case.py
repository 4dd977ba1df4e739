"""Integration: Http1ProtocolOptions.header_key_format on the HCM and on a cluster, through pylon and Envoy 1.40
alike (Envoy's docs' preserve-case.yaml sets preserve_case on both). The names are compared as they are on the wire:
what a raw upstream reads, and what a raw client reads back.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, raw_exchange, static_cluster
from tests.proxy.upstreams import TcpEcho

PRESERVE = {"stateful_formatter": {"name": "preserve_case", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig"}}}
PROPER = {"proper_case_words": {}}
RESPONSE = (b"HTTP/1.1 200 OK\r\nX-Upstream-Header: v\r\nCONTENT-type: text/plain\r\ncontent-length: 2\r\n"
            b"x-lower: l\r\n\r\nok")
REQUEST = (b"GET /path HTTP/1.1\r\nHost: example.com\r\nX-Custom-Header: 1\r\nuser-AGENT: raw\r\n"
           b"x-custom-header: 2\r\nx-plain: p\r\n\r\n")


class RawUpstream(TcpEcho):
    """Reads one request head per connection, keeps it as it came, answers `RESPONSE`."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        super().__init__()

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        with conn:
            buffered = b""
            while b"\r\n\r\n" not in buffered:
                data = conn.recv(65536)
                if not data:
                    return
                buffered += data
            self.heads.append(buffered.split(b"\r\n\r\n", 1)[0])
            conn.sendall(RESPONSE)
            try:
                conn.recv(1)  # until the proxy closes its pooled connection
            except OSError:
                pass


def names(head: bytes) -> list[bytes]:
    """The header names of a head (after the start line), as written."""
    return [line.split(b":", 1)[0] for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:] if line]


def _run(implementation: str, tmp_path: Path, hcm_format: dict[str, Any] | None,
         cluster_format: dict[str, Any] | None) -> tuple[list[bytes], list[bytes]]:
    upstream = RawUpstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        port = free_port()
        hcm: dict[str, Any] = {"http_protocol_options": {"header_key_format": hcm_format}} if hcm_format else {}
        cluster = static_cluster("up", [upstream.port])
        if cluster_format:
            cluster["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {"header_key_format": cluster_format}}}}
        launcher.start([http_listener("main", port, [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
                                      **hcm)], [cluster], implementation=implementation)
        answer = raw_exchange(port, REQUEST, timeout=5)
        assert answer.status == 200, answer.data
        [upstream_head] = upstream.heads
        return names(upstream_head), names(answer.data)
    finally:
        launcher.close()
        upstream.close()


@pytest.mark.parametrize(("hcm_format", "cluster_format", "upstream_sees", "client_sees"), [
    (PRESERVE, PRESERVE,
     [b"Host", b"user-AGENT", b"X-Custom-Header", b"X-Custom-Header", b"x-envoy-expected-rq-timeout-ms",
      b"x-forwarded-proto", b"x-plain", b"x-request-id"],
     [b"CONTENT-type", b"X-Upstream-Header", b"content-length", b"date", b"server", b"x-envoy-upstream-service-time",
      b"x-lower"]),
    (PROPER, PROPER,
     [b"Host", b"User-Agent", b"X-Custom-Header", b"X-Custom-Header", b"X-Envoy-Expected-Rq-Timeout-Ms",
      b"X-Forwarded-Proto", b"X-Plain", b"X-Request-Id"],
     [b"Content-Length", b"Content-Type", b"Date", b"Server", b"X-Envoy-Upstream-Service-Time", b"X-Lower",
      b"X-Upstream-Header"]),
    (PRESERVE, None,
     [b"Host", b"user-AGENT", b"X-Custom-Header", b"X-Custom-Header", b"x-envoy-expected-rq-timeout-ms",
      b"x-forwarded-proto", b"x-plain", b"x-request-id"],
     [b"content-length", b"content-type", b"date", b"server", b"x-envoy-upstream-service-time", b"x-lower",
      b"x-upstream-header"]),
    (None, PRESERVE,
     [b"host", b"user-agent", b"x-custom-header", b"x-custom-header", b"x-envoy-expected-rq-timeout-ms",
      b"x-forwarded-proto", b"x-plain", b"x-request-id"],
     [b"CONTENT-type", b"X-Upstream-Header", b"content-length", b"date", b"server", b"x-envoy-upstream-service-time",
      b"x-lower"]),
])
def test_header_key_format(implementation: str, tmp_path: Path, hcm_format: dict[str, Any] | None,
                           cluster_format: dict[str, Any] | None, upstream_sees: list[bytes],
                           client_sees: list[bytes]) -> None:
    upstream_names, client_names = _run(implementation, tmp_path, hcm_format, cluster_format)
    # (sorted: the two proxies order the headers they add differently)
    assert sorted(upstream_names) == sorted(upstream_sees)
    assert sorted(client_names) == sorted(client_sees)  # with the `date` both add (the upstream sends none)


def test_proper_case_on_the_proxys_own_replies(implementation: str, tmp_path: Path) -> None:
    launcher = ProxyLauncher(tmp_path)
    try:
        port = free_port()
        routes = [{"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": "no"}},
                   "response_headers_to_add": [{"header": {"key": "x-added-here", "value": "1"}}]}]
        launcher.start([http_listener("main", port, routes, http_protocol_options={"header_key_format": PROPER})], [],
                       implementation=implementation)
        answer = raw_exchange(port, REQUEST, timeout=5)
        assert answer.status == 404
        assert sorted(names(answer.data)) == [b"Content-Length", b"Content-Type", b"Date", b"Server", b"X-Added-Here"]
    finally:
        launcher.close()
