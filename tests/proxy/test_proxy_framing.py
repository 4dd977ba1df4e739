"""Integration: request-smuggling defences and streamed large bodies with bounded memory.

Every malformed request is written on a raw socket. The proxy must answer
with the right 4xx, close the connection, and never pass the request (or
anything after it) to the upstream.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import RunningProxy, http_listener, proc_memory_kb, raw_exchange, route, static_cluster

MB = 1024 * 1024

# Each payload is followed by a valid pipelined request for /smuggled: if any
# byte of the bad request were forwarded or re-parsed, the upstream would see it.
_SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

VECTORS: dict[str, tuple[bytes, set[int]]] = {
    "cl-and-te": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\n", {400}),
    "te-and-cl": (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n"
                  b"0\r\n\r\n", {400}),
    "duplicate-cl": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", {400}),
    "conflicting-cl": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc", {400}),
    "cl-list": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 40\r\n\r\nabc", {400}),
    "cl-not-a-number": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", {400}),
    "cl-negative": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", {400}),
    "cl-plus-sign": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", {400}),
    "cl-overflow": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", {400, 413}),
    "bad-chunk-size": (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", {400}),
    "chunk-size-overflow": (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n", {400, 413}),
    "chunk-missing-crlf": (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n", {400}),
    "te-not-chunked": (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc", {400, 501}),
    "te-obfuscated": (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                      {400, 501}),
    "obs-fold": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n", {400}),
    "obs-fold-te": (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", {400}),
    "space-before-colon": (b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n", {400}),
    "nul-in-value": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n", {400}),
    "ctl-in-name": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-B\x01ad: a\r\n\r\n", {400}),
    "space-in-name": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX Bad: a\r\n\r\n", {400}),
    "bare-lf": (b"GET /echo HTTP/1.1\nHost: x\nX-A: b\n\n", {400}),
    "bare-cr": (b"GET /echo HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n", {400}),
    "missing-host": (b"GET /echo HTTP/1.1\r\nX-A: b\r\n\r\n", {400}),
    "two-hosts": (b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", {400}),
    "bad-version": (b"GET /echo HTTP/9.1\r\nHost: x\r\n\r\n", {426}),  # as Envoy
    "space-in-target": (b"GET /ec ho HTTP/1.1\r\nHost: x\r\n\r\n", {400}),
    "oversized-headers": (b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-Big-%d: %s\r\n" % (i, b"v" * 1000) for i in range(10)) + b"\r\n", {431}),
    "one-huge-header": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"v" * 20_000 + b"\r\n\r\n", {431}),
    "too-many-headers": (b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H-%d: v\r\n" % i for i in range(30)) + b"\r\n", {431}),
    "oversized-uri": (b"GET /" + b"u" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", {414, 431}),
}


@pytest.fixture(scope="module")
def env(run_proxy_module, upstreams_module) -> dict[str, Any]:
    (up,) = upstreams_module(1)
    listener = http_listener("main", free_port(), [route("/", "a")], max_request_headers_kb=8,
                             common_http_protocol_options={"max_headers_count": 20})
    proxy = run_proxy_module([listener], [static_cluster("a", [up.port])])
    return {"proxy": proxy, "up": up}


# Vectors whose error is in the body: the head was valid and may already have
# gone upstream (streaming), so only the bytes after the error must never arrive.
BODY_ERRORS = {"bad-chunk-size", "chunk-size-overflow", "chunk-missing-crlf"}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_malformed_request_rejected_and_connection_closed(env, name):
    payload, expected = VECTORS[name]
    tag = name.encode()
    payload = payload.replace(b" /echo ", b" /echo-" + tag + b" ") + _SMUGGLED.replace(b"/smuggled", b"/smuggled-" + tag)
    up = env["up"]
    # A warm pool (an idle upstream connection) means anything wrongly forwarded leaves at once.
    assert httpx.get(env["proxy"].url("main", "/warm"), timeout=5).status_code == 200
    result = raw_exchange(env["proxy"].ports["main"], payload, timeout=2.0)
    assert result.status in expected, result.data[:300]
    assert result.statuses() == [result.status], "exactly one response, nothing for the smuggled request"
    assert result.closed, "the connection must be closed after a framing error"
    time.sleep(0.1)  # the upstream records requests on its own threads
    paths = up.paths()
    assert not any(f"/smuggled-{name}" in p for p in paths), paths
    if name not in BODY_ERRORS:
        assert not any(f"/echo-{name}" in p for p in paths), "a request with a malformed head was forwarded"


def test_protocol_errors_are_counted(env):
    proxy: RunningProxy = env["proxy"]
    before = proxy.stats()
    raw_exchange(proxy.ports["main"], VECTORS["cl-and-te"][0])
    after = proxy.stats()
    assert after["http.main.downstream_cx_protocol_error"] == before["http.main.downstream_cx_protocol_error"] + 1
    assert after["http.main.downstream_rq_4xx"] == before["http.main.downstream_rq_4xx"] + 1


def test_valid_request_after_limits_still_served(env):
    # Right at the limits: 18 extra headers (20 with Host and Connection) of modest size are fine.
    headers = b"".join(b"X-H-%d: v\r\n" % i for i in range(18))
    result = raw_exchange(env["proxy"].ports["main"],
                          b"GET /ok HTTP/1.1\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n")
    assert result.status == 200
    assert result.closed


def _worker_pid(proxy: RunningProxy) -> int:
    (pid,) = proxy.worker_pids()
    return pid


def test_100mb_chunked_upload_is_streamed_with_bounded_memory(run_proxy, upstreams):
    (up,) = upstreams(1)
    proxy = run_proxy([http_listener("main", free_port(), [route("/", "a", timeout="60s")])],
                      [static_cluster("a", [up.port])])
    pid = _worker_pid(proxy)
    httpx.get(proxy.url("main", "/warmup"))
    baseline = proc_memory_kb(pid)["VmRSS"]
    total = 100 * MB
    block = b"u" * (256 * 1024)
    seen_midway: list[int] = []

    def body():
        sent = 0
        while sent < total:
            if sent == total // 2:
                # Half the body is sent: a streaming proxy has already passed bytes upstream.
                deadline = time.monotonic() + 5
                while up.sink_bytes == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                seen_midway.append(up.sink_bytes)
            yield block
            sent += len(block)

    response = httpx.post(proxy.url("main", "/sink"), content=body(), timeout=60)
    assert response.status_code == 200
    assert response.text == str(total)
    assert seen_midway and seen_midway[0] > 0, "the upstream saw nothing before the client finished"
    peak = proc_memory_kb(pid)["VmHWM"]
    assert (peak - baseline) * 1024 < 60 * MB, f"worker RSS grew by {(peak - baseline) // 1024} MB"


def test_100mb_download_is_streamed_with_back_pressure(run_proxy, upstreams):
    (up,) = upstreams(1)
    proxy = run_proxy([http_listener("main", free_port(), [route("/", "a", timeout="60s")])],
                      [static_cluster("a", [up.port])])
    pid = _worker_pid(proxy)
    httpx.get(proxy.url("main", "/warmup"))
    baseline = proc_memory_kb(pid)["VmRSS"]
    total = 100 * MB
    received = 0
    with httpx.stream("GET", proxy.url("main", f"/bytes/{total}"), timeout=60) as response:
        assert response.status_code == 200
        chunks = response.iter_raw(65536)
        received += len(next(chunks))
        # A slow client: with back-pressure the upstream cannot finish 100 MB meanwhile.
        time.sleep(0.5)
        assert not up.bytes_done.is_set(), "the upstream finished: the proxy buffered the response"
        for chunk in chunks:
            received += len(chunk)
    assert received == total
    peak = proc_memory_kb(pid)["VmHWM"]
    assert (peak - baseline) * 1024 < 60 * MB, f"worker RSS grew by {(peak - baseline) // 1024} MB"


def test_a_bodiless_request_gets_content_length_0_upstream_where_envoy_adds_it(launcher: Any, implementation: str,
                                                                              upstreams: Any) -> None:
    """Envoy 1.40 sends `content-length: 0` with a bodiless request of any method but GET, HEAD and DELETE."""
    (upstream,) = upstreams(1)
    port = free_port()
    launcher.start([http_listener("web", port, [route("/", "up")])], [static_cluster("up", [upstream.port])],
                   implementation=implementation)
    seen = {}
    for method in ("GET", "HEAD", "DELETE", "OPTIONS", "POST"):
        raw_exchange(port, f"{method} /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        seen[method] = upstream.requests[-1]["headers"].get("content-length")
        assert upstream.requests[-1]["method"] == method
    assert seen == {"GET": None, "HEAD": None, "DELETE": None, "OPTIONS": "0", "POST": "0"}
