"""Integration (issue 11 item 6): a cluster's limits on its pooled upstream connections, through pylon and Envoy.

The upstream records every connection's life (`RecordingUpstream`): when it
opened, how many requests it served, and whether the proxy closed it. Envoy
1.40 runs each scenario too, as the reference for the behaviour and the stat
names (`cluster.up.upstream_cx_idle_timeout`, `upstream_cx_max_requests`,
`upstream_cx_max_duration_reached`).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.proxy.conftest import Gateway, gateway_in_front_of_upstream, http_listener, route, wait_until
from tests.proxy.upstreams import RecordingUpstream

OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
IDLE_TIMEOUT_S = 0.5
MAX_DURATION_S = 1.0


def with_options(**common: Any) -> dict[str, Any]:
    """Cluster fields: HTTP/1.1 with these common_http_protocol_options (Envoy's current place for them)."""
    return {"typed_extension_protocol_options": {OPTIONS_KEY: {
        "@type": f"type.googleapis.com/{OPTIONS_KEY}", "common_http_protocol_options": common,
        "explicit_http_config": {"http_protocol_options": {}}}}}


@pytest.fixture
def gateway_with(implementation: str, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Start `implementation` in front of a RecordingUpstream with the given cluster fields; both stop at teardown."""

    def listener(port: int) -> dict[str, Any]:
        return http_listener("main", port, [route("/", "up", timeout="10s")])

    with contextlib.ExitStack() as stack:
        yield lambda **cluster: stack.enter_context(
            gateway_in_front_of_upstream(implementation, tmp_path, listener, RecordingUpstream, **cluster))


def closed_by_proxy(upstream: RecordingUpstream, count: int) -> list[dict[str, Any]]:
    """The upstream's connection records once the proxy closed at least `count` of them (else [])."""
    history = upstream.history()
    return history if sum(1 for c in history if c["closed_by"] == "peer") >= count else []


def cluster_stat(gateway: Gateway, name: str) -> int:
    return gateway.proxy.stats().get(f"cluster.up.{name}", 0)


def prometheus_value(gateway: Gateway, name: str) -> float | None:
    """The value of a cluster counter of `up` in /stats/prometheus (Envoy prints `1`, pylon `1.0`: both parse)."""
    text = gateway.proxy.admin("/stats/prometheus").text
    prefix = f'envoy_cluster_{name}{{envoy_cluster_name="up"}} '
    return next((float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)), None)


def test_an_idle_upstream_connection_is_closed_at_the_idle_timeout(gateway_with: Callable[..., Gateway]) -> None:
    gateway = gateway_with(**with_options(idle_timeout=f"{IDLE_TIMEOUT_S}s"))
    upstream: RecordingUpstream = gateway.upstream
    with httpx.Client() as client:
        assert client.get(f"http://127.0.0.1:{gateway.port}/first").status_code == 200
        answered = time.monotonic()
        history = wait_until(lambda: closed_by_proxy(upstream, 1), timeout=10)
        assert len(history) == 1 and history[0]["requests"] == 1, history
        assert history[0]["closed"] - answered >= IDLE_TIMEOUT_S - 0.05  # closed for idleness, never early
        assert wait_until(lambda: cluster_stat(gateway, "upstream_cx_idle_timeout") == 1)
        assert prometheus_value(gateway, "upstream_cx_idle_timeout") == 1
        # The client's own connection is still open (its idle timeout is the HCM's): the next request
        # goes upstream on a new connection.
        response = client.get(f"http://127.0.0.1:{gateway.port}/second")
    assert response.status_code == 200 and response.text == "ok\n"
    history = upstream.history()
    assert [c["requests"] for c in history] == [1, 1] and history[1]["closed"] is None
    assert cluster_stat(gateway, "upstream_cx_total") == 2 and cluster_stat(gateway, "upstream_cx_destroy") == 1


def test_an_idle_timeout_in_the_deprecated_cluster_field_works_the_same(gateway_with: Callable[..., Gateway]) -> None:
    gateway = gateway_with(common_http_protocol_options={"idle_timeout": f"{IDLE_TIMEOUT_S}s"})
    with httpx.Client() as client:
        assert client.get(f"http://127.0.0.1:{gateway.port}/").status_code == 200
        assert wait_until(lambda: closed_by_proxy(gateway.upstream, 1), timeout=10)
    assert wait_until(lambda: cluster_stat(gateway, "upstream_cx_idle_timeout") == 1)


def test_max_requests_per_connection_in_the_typed_options(gateway_with: Callable[..., Gateway]) -> None:
    gateway = gateway_with(**with_options(max_requests_per_connection=2))
    with httpx.Client() as client:
        for i in range(3):
            assert client.get(f"http://127.0.0.1:{gateway.port}/{i}").status_code == 200
    history = wait_until(lambda: closed_by_proxy(gateway.upstream, 1), timeout=10)
    assert [c["requests"] for c in history] == [2, 1], history
    assert [c["closed_by"] for c in history] == ["peer", None]  # the proxy closed the first after its 2nd response
    assert cluster_stat(gateway, "upstream_cx_max_requests") == 1
    assert prometheus_value(gateway, "upstream_cx_max_requests") == 1


def test_max_connection_duration_drains_a_busy_connection_and_closes_an_idle_one(
        gateway_with: Callable[..., Gateway]) -> None:
    gateway = gateway_with(**with_options(max_connection_duration=f"{MAX_DURATION_S}s"))
    url = f"http://127.0.0.1:{gateway.port}"
    with httpx.Client() as client:
        # Busy when it comes of age: the response in flight arrives whole, then the proxy closes the connection.
        slow = client.get(f"{url}/slow/{MAX_DURATION_S + 0.5}")
        assert slow.status_code == 200 and slow.text == "ok\n"
        first = wait_until(lambda: closed_by_proxy(gateway.upstream, 1), timeout=10)
        assert [c["requests"] for c in first] == [1], first
        assert first[0]["closed"] - first[0]["opened"] >= MAX_DURATION_S + 0.5 - 0.05  # not before its response
        assert cluster_stat(gateway, "upstream_cx_max_duration_reached") == 1
        # Idle when it comes of age: closed then.
        assert client.get(f"{url}/next").status_code == 200
        history = wait_until(lambda: closed_by_proxy(gateway.upstream, 2), timeout=10)
    assert [c["requests"] for c in history] == [1, 1], history
    assert history[1]["closed"] - history[1]["opened"] >= MAX_DURATION_S - 0.05
    assert wait_until(lambda: cluster_stat(gateway, "upstream_cx_max_duration_reached") == 2)
    assert prometheus_value(gateway, "upstream_cx_max_duration_reached") == 2


MAX_STREAM_S = 0.5
EARLY_S = 0.05  # the proxy's clock starts when it accepts, a little before the client's


def test_max_stream_duration_gives_up_on_a_slow_upstream_request(gateway_with: Callable[..., Gateway]) -> None:
    """Envoy 1.40: 504 `upstream max stream duration reached` once the request is in; a quick one is untouched."""
    gateway = gateway_with(**with_options(max_stream_duration=f"{MAX_STREAM_S}s"))
    base = f"http://127.0.0.1:{gateway.port}"
    assert httpx.get(f"{base}/quick", timeout=5).status_code == 200
    started = time.monotonic()
    response = httpx.get(f"{base}/slow/3", timeout=5)
    took = time.monotonic() - started
    assert (response.status_code, response.text) == (504, "upstream max stream duration reached")
    assert MAX_STREAM_S - EARLY_S <= took < MAX_STREAM_S + 1.0
    assert cluster_stat(gateway, "upstream_rq_max_duration_reached") == 1


def test_max_stream_duration_counts_from_the_connection_even_while_the_request_arrives(implementation: str,
                                                                                      tmp_path: Path) -> None:
    """The clock starts when the request is given a connection, not when it is complete: a body still arriving
    (the upstream waits for it) gets 408 and the connection closes (as Envoy 1.40)."""
    def listener(port: int) -> dict[str, Any]:
        return http_listener("main", port, [route("/", "up", timeout="10s")])

    options = with_options(max_stream_duration=f"{MAX_STREAM_S}s")
    with gateway_in_front_of_upstream(implementation, tmp_path, listener, **options) as gateway, \
            socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
        client.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower()
    assert body == b"upstream max stream duration reached"
