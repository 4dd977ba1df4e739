"""Integration: `upstream_rq_retry_success` and the retry counters beside it, through pylon and Envoy 1.40 alike.

Envoy counts a retry success when an attempt made after a retry ends in something the route's policy does not
retry: an answer it would not retry (a 404 too, not only a 2xx), or a reset the policy does not cover (`5xx` covers
an unanswered attempt, `retriable-status-codes` does not). A retried attempt that fails again with nothing left to
retry is `upstream_rq_retry_limit_exceeded` instead.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.upstreams import TcpEcho, request_heads

#: scenario -> what the upstream does with the request's attempts in turn (a status, or "close": no answer)
SCRIPTS: dict[str, list[int | str]] = {
    "ok": [200],
    "then-ok": [503, 200],
    "then-404": [503, 404],
    "then-503": [503, 503],
    "then-close": [503, "close"],
    "codes-then-close": [503, "close"],
    "codes-then-refused": [503],  # OneShot503: its retry finds nothing listening
}
#: the route's retry policy: one retry on 5xx (an unanswered attempt included), or on the status 503 alone
POLICIES = {scenario: {"retry_on": "5xx", "num_retries": 1} for scenario in SCRIPTS} | {
    "codes-then-close": {"retry_on": "retriable-status-codes", "retriable_status_codes": [503], "num_retries": 1},
    "codes-then-refused": {"retry_on": "retriable-status-codes", "retriable_status_codes": [503], "num_retries": 1}}
#: scenario -> (the client's status, the cluster counters that moved; every other retry counter stays 0)
EXPECTED: dict[str, tuple[int, dict[str, int]]] = {
    "ok": (200, {}),
    "then-ok": (200, {"upstream_rq_retry": 1, "upstream_rq_retry_success": 1}),
    "then-404": (404, {"upstream_rq_retry": 1, "upstream_rq_retry_success": 1}),
    "then-503": (503, {"upstream_rq_retry": 1, "upstream_rq_retry_limit_exceeded": 1}),
    "then-close": (503, {"upstream_rq_retry": 1, "upstream_rq_retry_limit_exceeded": 1}),
    "codes-then-close": (503, {"upstream_rq_retry": 1, "upstream_rq_retry_success": 1}),  # a reset it would not retry
    "codes-then-refused": (503, {"upstream_rq_retry": 1, "upstream_rq_retry_success": 1}),  # a connect failure too
}
NAMES = ("upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_limit_exceeded")


class ScriptedUpstream(TcpEcho):
    """Answers the requests of each path in the order of its script (a status, or "close" to close unanswered), the
    last entry again past its end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.turns: dict[str, int] = {}
        super().__init__()

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        with conn:
            for head in request_heads(conn):
                scenario = head.split(b" ", 2)[1].decode().strip("/")
                with self.lock:
                    turn = self.turns.get(scenario, 0)
                    self.turns[scenario] = turn + 1
                script = SCRIPTS[scenario]
                action = script[min(turn, len(script) - 1)]  # pylon resends a GET a reused connection lost, once
                if action == "close":
                    return
                conn.sendall(f"HTTP/1.1 {action} X\r\ncontent-length: 2\r\n\r\nok".encode())


class OneShot503:
    """Answers one request with a 503 that closes the connection, then stops listening: a retry's connect fails."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            conn, _ = self.listener.accept()
        with conn:
            while b"\r\n\r\n" not in conn.recv(65536):
                pass
            conn.sendall(b"HTTP/1.1 503 X\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    upstream, one_shot = ScriptedUpstream(), OneShot503()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"retry-stats-{request.param}"))
    try:
        routes = [route(f"/{scenario}", scenario, retry_policy=POLICIES[scenario]) for scenario in SCRIPTS]
        clusters = [static_cluster(scenario, [one_shot.port if scenario == "codes-then-refused" else upstream.port])
                    for scenario in SCRIPTS]
        yield launcher.start([http_listener("main", free_port(), routes)], clusters, implementation=request.param)
    finally:
        launcher.close()
        upstream.close()
        one_shot.close()


@pytest.mark.parametrize("scenario", list(SCRIPTS))
def test_retries_are_counted_as_envoy_counts_them(proxy: RunningProxy, scenario: str) -> None:
    status, moved = EXPECTED[scenario]
    assert httpx.get(proxy.url("main", f"/{scenario}"), timeout=5).status_code == status
    expected = {name: moved.get(name, 0) for name in NAMES}

    def counters() -> dict[str, int]:
        stats = proxy.stats()
        return {name: stats.get(f"cluster.{scenario}.{name}", 0) for name in NAMES}

    assert wait_until(lambda: counters() == expected), counters()
