"""Integration: a cluster's stats when its upstream fails, through pylon and Envoy 1.40 alike.

Operators read a cluster's stats when something goes wrong, so these must say what Envoy's say then:
- `upstream_rq_total` counts a request once it has a connection (a request whose connect failed is not in it);
- a failed connect is a destroyed connection too (`upstream_cx_destroy`), and the request queued for it is
  `upstream_rq_pending_failure_eject`;
- the code a request is charged with (`upstream_rq_<code>`, `_<N>xx`, `upstream_rq_completed`) is the response
  head's as it arrives (a response cut short is still its 200), or the proxy's own 503 / 504 for an upstream that
  failed before answering;
- an HTTP/1 response cut short by the upstream's close is an `upstream_cx_protocol_error`;
- retries: `upstream_rq_retry`, `upstream_rq_retry_backoff_exponential` for each, `upstream_rq_retry_limit_exceeded`
  when the policy had none left.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.upstreams import RecordingUpstream, TcpEcho

#: scenario (cluster and path prefix): the cluster counters its one request moves (every other stays 0)
EXPECTED: dict[str, dict[str, int]] = {
    "retry": {"upstream_cx_total": 3, "upstream_cx_connect_fail": 3, "upstream_cx_destroy": 3,
              "upstream_rq_pending_failure_eject": 3, "upstream_rq_retry": 2,
              "upstream_rq_retry_backoff_exponential": 2, "upstream_rq_retry_limit_exceeded": 1,
              "upstream_rq_503": 1, "upstream_rq_5xx": 1, "upstream_rq_completed": 1},
    "dead": {"upstream_cx_total": 1, "upstream_cx_connect_fail": 1, "upstream_cx_destroy": 1,
             "upstream_rq_pending_failure_eject": 1, "upstream_rq_503": 1, "upstream_rq_5xx": 1,
             "upstream_rq_completed": 1},
    "half": {"upstream_cx_total": 1, "upstream_cx_destroy": 1, "upstream_rq_total": 1,
             "upstream_cx_protocol_error": 1, "upstream_rq_200": 1, "upstream_rq_2xx": 1, "upstream_rq_completed": 1},
    "timeout": {"upstream_cx_total": 1, "upstream_cx_destroy": 1, "upstream_rq_total": 1, "upstream_rq_timeout": 1,
                "upstream_rq_504": 1, "upstream_rq_5xx": 1, "upstream_rq_completed": 1},
}
NAMES = sorted({name for counters in EXPECTED.values() for name in counters} | {"upstream_rq_200", "upstream_rq_2xx"})


class HalfAnswer(TcpEcho):
    """Answers each connection's request with a head promising 100 bytes, sends 7 of them, and closes."""

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
            time.sleep(0.1)


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    slow, half = RecordingUpstream(), HalfAnswer()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"cluster-failures-{request.param}"))
    nobody = free_port()  # nothing listens there: every connect is refused
    try:
        routes = [route("/retry", "retry", retry_policy={"retry_on": "connect-failure", "num_retries": 2}),
                  route("/dead", "dead"), route("/half", "half"), route("/slow", "timeout", timeout="0.5s")]
        clusters = [static_cluster("retry", [nobody]), static_cluster("dead", [nobody]),
                    static_cluster("half", [half.port]), static_cluster("timeout", [slow.port])]
        yield launcher.start([http_listener("main", free_port(), routes)], clusters, implementation=request.param)
    finally:
        launcher.close()
        slow.close()
        half.close()


def answer(proxy: RunningProxy, path: str, listener: str = "main") -> bytes:
    """The proxy's answer to one `connection: close` request (whatever it sends until it closes)."""
    with socket.create_connection(("127.0.0.1", proxy.ports[listener]), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
        return data


@pytest.mark.parametrize("scenario", list(EXPECTED))
def test_a_failed_upstream_is_counted_as_envoy_counts_it(proxy: RunningProxy, scenario: str) -> None:
    path = {"timeout": "/slow/2"}.get(scenario, f"/{scenario}")  # the upstream answers /slow/2 after 2 s
    head = answer(proxy, path).split(b"\r\n", 1)[0]
    assert head == {"retry": b"HTTP/1.1 503 Service Unavailable", "dead": b"HTTP/1.1 503 Service Unavailable",
                    "half": b"HTTP/1.1 200 OK", "timeout": b"HTTP/1.1 504 Gateway Timeout"}[scenario]
    expected = {name: EXPECTED[scenario].get(name, 0) for name in NAMES}

    def counters() -> dict[str, int]:
        stats = proxy.stats()
        return {name: stats.get(f"cluster.{scenario}.{name}", 0) for name in NAMES}

    wait_until(lambda: counters() == expected)
    assert counters() == expected
