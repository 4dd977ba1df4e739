"""Integration: retries, timeouts, local replies with response flags, circuit breaking,
active health checks and outlier detection, through a real `pylon proxy`.
"""

from __future__ import annotations

import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    RunningProxy, http_listener, json_access_log, raw_exchange, read_json_lines, route, static_cluster, wait_until,
)


def _retry(retry_on: str, num_retries: int, **extra: Any) -> dict[str, Any]:
    return {"retry_policy": {"retry_on": retry_on, "num_retries": num_retries, **extra}}


@pytest.fixture(scope="module")
def env(run_proxy_module, upstreams_module, tmp_path_factory) -> dict[str, Any]:
    up, up2 = upstreams_module(2)
    dead = free_port()
    log = tmp_path_factory.mktemp("log") / "access.json"
    routes = [
        route("/r/5xx/", "u", prefix_rewrite="/", **_retry("5xx", 2)),
        route("/r/gw/", "u", prefix_rewrite="/", **_retry("gateway-error", 2)),
        route("/r/codes/", "u", prefix_rewrite="/", **_retry("retriable-status-codes", 2, retriable_status_codes=[409])),
        route("/r/reset/", "u", prefix_rewrite="/", **_retry("reset", 1)),
        route("/r/none/", "u", prefix_rewrite="/"),
        route("/r/pertry/", "u", prefix_rewrite="/", timeout="5s", **_retry("5xx", 1, per_try_timeout="0.3s")),
        route("/r/connect/", "mixed", prefix_rewrite="/", **_retry("connect-failure", 2)),
        route("/noretry-connect/", "mixed", prefix_rewrite="/"),
        route("/timeout/", "u", prefix_rewrite="/", timeout="0.3s"),
        route("/dead/", "dead", prefix_rewrite="/"),
        route("/empty/", "empty", prefix_rewrite="/"),
        route("/", "u"),
    ]
    empty = static_cluster("empty", [])
    proxy = run_proxy_module(
        [http_listener("main", free_port(), routes, access_log=json_access_log(log))],
        [static_cluster("u", [up.port]), static_cluster("mixed", [dead, up2.port]),
         static_cluster("dead", [dead], connect_timeout="0.5s"), empty])
    return {"proxy": proxy, "up": up, "up2": up2, "log": log}


def _get(env: dict[str, Any], path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(env["proxy"].url("main", path), timeout=10, **kwargs)


def _log_entry(env: dict[str, Any], marker: str, timeout: float = 5.0) -> dict[str, Any]:
    path: Path = env["log"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in read_json_lines(path, 0, timeout=0):
            if marker in (entry.get("path") or ""):
                return entry
        time.sleep(0.1)
    raise AssertionError(f"no access log line for {marker}")


def _count(upstream: Any, key: str) -> int:
    return sum(1 for p in upstream.paths() if f"/{key}/" in p)


def _stat_delta(proxy: RunningProxy, before: dict[str, int], name: str) -> int:
    return proxy.stats()[name] - before.get(name, 0)


def test_retry_on_5xx_until_success(env):
    key = uuid.uuid4().hex
    before = env["proxy"].stats()
    response = _get(env, f"/r/5xx/flaky/{key}/2/503")
    assert response.status_code == 200
    assert _count(env["up"], key) == 3
    assert _stat_delta(env["proxy"], before, "cluster.u.upstream_rq_retry") == 2


def test_retries_exhausted_forward_last_response_with_urx(env):
    key = uuid.uuid4().hex
    response = _get(env, f"/r/5xx/flaky/{key}/9/503")
    assert response.status_code == 503
    assert response.text == "flaky 503\n"
    assert _count(env["up"], key) == 3  # the first try and num_retries=2
    assert _log_entry(env, key)["flags"] == "URX"


def test_gateway_error_retries_502_but_not_500(env):
    key, other = uuid.uuid4().hex, uuid.uuid4().hex
    assert _get(env, f"/r/gw/flaky/{key}/1/502").status_code == 200
    assert _count(env["up"], key) == 2
    assert _get(env, f"/r/gw/flaky/{other}/1/500").status_code == 500
    assert _count(env["up"], other) == 1


def test_retriable_status_codes(env):
    key, other = uuid.uuid4().hex, uuid.uuid4().hex
    assert _get(env, f"/r/codes/flaky/{key}/1/409").status_code == 200
    assert _count(env["up"], key) == 2
    assert _get(env, f"/r/codes/flaky/{other}/1/418").status_code == 418
    assert _count(env["up"], other) == 1


def test_retry_on_reset(env):
    key = uuid.uuid4().hex
    assert _get(env, f"/r/reset/flaky/{key}/1/reset").status_code == 200
    assert _count(env["up"], key) == 2


def test_no_retry_policy_means_one_attempt(env):
    key, reset = uuid.uuid4().hex, uuid.uuid4().hex
    assert _get(env, f"/r/none/flaky/{key}/1/503").status_code == 503
    assert _count(env["up"], key) == 1
    # A reset is not retried for a POST (not idempotent), on a reused connection or not.
    response = httpx.post(env["proxy"].url("main", f"/r/none/flaky/{reset}/1/reset"), content=b"x", timeout=10)
    assert response.status_code == 503
    assert _count(env["up"], reset) == 1
    assert _log_entry(env, reset)["flags"] == "UC"


def test_idempotent_request_reset_on_a_reused_connection_goes_again_once_on_a_new_one(env):
    """RFC 9110 9.2.2: what a reset on a pooled connection hides (a server's keep-alive close, or a crash
    after reading) cannot be told apart, and an idempotent request may be sent again."""
    warm, once, always = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    assert _get(env, f"/r/none/{warm}").status_code == 200  # the pool holds a used connection now
    assert _get(env, f"/r/none/flaky/{once}/1/reset").status_code == 200
    assert _count(env["up"], once) == 2
    assert _get(env, f"/r/none/{warm}").status_code == 200
    response = _get(env, f"/r/none/flaky/{always}/5/reset")
    assert response.status_code == 503  # sent again only once: the new connection's reset is final
    assert _count(env["up"], always) == 2


def test_post_body_is_replayed_on_retry(env):
    key = uuid.uuid4().hex
    response = httpx.post(env["proxy"].url("main", f"/r/5xx/flaky/{key}/1/503"), content=b"payload", timeout=10)
    assert response.status_code == 200
    assert _count(env["up"], key) == 2


def test_per_try_timeout_retries_a_slow_attempt(env):
    key = uuid.uuid4().hex
    before = env["proxy"].stats()
    start = time.monotonic()
    response = _get(env, f"/r/pertry/flaky/{key}/1/sleep2")
    elapsed = time.monotonic() - start
    assert response.status_code == 200
    assert response.text == "ok\n"
    assert elapsed < 1.5, elapsed
    assert _count(env["up"], key) == 2
    assert _stat_delta(env["proxy"], before, "cluster.u.upstream_rq_per_try_timeout") == 1


def test_connect_failure_retried_to_another_host(env):
    before = env["proxy"].stats()
    with httpx.Client(timeout=10) as client:
        codes = [client.get(env["proxy"].url("main", "/r/connect/ok")).status_code for _ in range(6)]
    assert codes == [200] * 6
    assert _stat_delta(env["proxy"], before, "cluster.mixed.upstream_cx_connect_fail") > 0
    assert _stat_delta(env["proxy"], before, "cluster.mixed.upstream_rq_retry") > 0


def test_connect_failure_without_retry_is_503_uf(env):
    key = uuid.uuid4().hex
    response = _get(env, f"/dead/{key}")
    assert response.status_code == 503
    assert b"connect" in response.content
    entry = _log_entry(env, key)
    assert entry["flags"] == "UF"
    assert entry["cluster"] == "dead"


def test_route_timeout_is_504_ut(env):
    key = uuid.uuid4().hex
    before = env["proxy"].stats()
    start = time.monotonic()
    response = _get(env, f"/timeout/slow/2?{key}")
    assert response.status_code == 504
    assert response.text == "upstream request timeout"
    assert time.monotonic() - start < 1.5
    assert _log_entry(env, key)["flags"] == "UT"
    assert _stat_delta(env["proxy"], before, "cluster.u.upstream_rq_timeout") == 1


def test_no_hosts_is_503_uh(env):
    key = uuid.uuid4().hex
    response = _get(env, f"/empty/{key}")
    assert response.status_code == 503
    assert response.text == "no healthy upstream"
    assert _log_entry(env, key)["flags"] == "UH"


def test_no_route_logged_as_nr(run_proxy, upstreams, tmp_path):
    (up,) = upstreams(1)
    log = tmp_path / "nr.json"
    proxy = run_proxy([http_listener("main", free_port(), [{"match": {"path": "/only"}, "route": {"cluster": "u"}}],
                                     access_log=json_access_log(log))], [static_cluster("u", [up.port])])
    assert httpx.get(proxy.url("main", "/missing")).status_code == 404
    (entry,) = read_json_lines(log, 1)
    assert entry["code"] == 404 and entry["flags"] == "NR" and entry["path"] == "/missing"


def test_circuit_breaker_overflow_is_503_uo(run_proxy, upstreams, tmp_path):
    (up,) = upstreams(1)
    log = tmp_path / "cb.json"
    breakers = {"thresholds": [{"max_connections": 1, "max_pending_requests": 1}]}
    proxy = run_proxy([http_listener("main", free_port(), [route("/", "cb")], access_log=json_access_log(log))],
                      [static_cluster("cb", [up.port], circuit_breakers=breakers)])

    def call(i: int) -> int:
        return httpx.get(proxy.url("main", f"/slow/0.5?{i}"), timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(call, range(8)))
    assert codes.count(200) >= 1, codes
    assert codes.count(503) >= 1, codes
    assert set(codes) <= {200, 503}
    stats = proxy.stats()
    assert stats["cluster.cb.upstream_rq_pending_overflow"] == codes.count(503)
    assert stats["cluster.cb.upstream_cx_total"] == 1  # never more than max_connections
    entries = read_json_lines(log, 8)
    assert sorted(e["flags"] for e in entries if e["code"] == 503) == ["UO"] * codes.count(503)


def _served_by(response: httpx.Response, hosts: dict[int, str]) -> str:
    return hosts[int(response.headers["x-served-by"])]


def test_active_health_check_ejects_and_restores_a_host(run_proxy, upstreams):
    a, b = upstreams(2)
    hosts = {a.port: "a", b.port: "b"}
    health = [{"timeout": "0.2s", "interval": "0.1s", "no_traffic_interval": "0.1s", "unhealthy_threshold": 1,
               "healthy_threshold": 1, "http_health_check": {"path": "/healthz"}}]
    proxy = run_proxy([http_listener("main", free_port(), [route("/", "hc")])],
                      [static_cluster("hc", [a.port, b.port], health_checks=health)])
    b_key = f"hc::127.0.0.1:{b.port}::health_flags"

    def served(n: int) -> set[str]:
        with httpx.Client(timeout=5) as client:
            return {_served_by(client.get(proxy.url("main", "/x")), hosts) for _ in range(n)}

    assert wait_until(lambda: proxy.stats().get("cluster.hc.membership_healthy") == 2), proxy.clusters()
    assert served(10) == {"a", "b"}
    b.health_status = 503
    assert wait_until(lambda: "/failed_active_hc" in proxy.clusters().get(b_key, "")), proxy.clusters()
    assert proxy.stats()["cluster.hc.membership_healthy"] == 1
    assert served(10) == {"a"}
    b.health_status = 200
    assert wait_until(lambda: proxy.clusters().get(b_key) == "healthy"), proxy.clusters()
    assert served(10) == {"a", "b"}
    assert any(r["headers"].get("user-agent") == "Envoy/HC" for r in b.requests if r["path"] == "/healthz")


def test_outlier_detection_ejects_consecutive_5xx_host(run_proxy, upstreams):
    a, b = upstreams(2)
    hosts = {a.port: "a", b.port: "b"}
    outlier = {"consecutive_5xx": 3, "interval": "0.1s", "base_ejection_time": "30s", "max_ejection_percent": 50}
    proxy = run_proxy([http_listener("main", free_port(), [route("/", "od")])],
                      [static_cluster("od", [a.port, b.port], outlier_detection=outlier)])
    b.override_status = 500
    with httpx.Client(timeout=5) as client:
        responses = [client.get(proxy.url("main", f"/x{i}")) for i in range(20)]
    b_served = [r for r in responses if _served_by(r, hosts) == "b"]
    assert len(b_served) == 3 and all(r.status_code == 500 for r in b_served)
    assert all(r.status_code == 200 and _served_by(r, hosts) == "a" for r in responses[-10:])
    clusters = proxy.clusters()
    assert "/failed_outlier_check" in clusters[f"od::127.0.0.1:{b.port}::health_flags"]
    assert clusters[f"od::127.0.0.1:{a.port}::health_flags"] == "healthy"
    stats = proxy.stats()
    assert stats["cluster.od.outlier_detection.ejections_active"] == 1
    assert stats["cluster.od.outlier_detection.ejections_enforced_total"] == 1


@pytest.fixture(scope="module")
def timeouts(run_proxy_module, upstreams_module) -> RunningProxy:
    (up,) = upstreams_module(1)
    listeners = [
        http_listener("rt", free_port(), [route("/", "u")], request_timeout="0.3s"),
        http_listener("si", free_port(), [route("/", "u", timeout="5s")], stream_idle_timeout="0.3s"),
        http_listener("idle", free_port(), [route("/", "u")], common_http_protocol_options={"idle_timeout": "0.3s"}),
    ]
    return run_proxy_module(listeners, [static_cluster("u", [up.port])])


def _send_and_wait(port: int, payload: bytes, wait: float = 2.0) -> tuple[bytes, bool, float]:
    """Send a partial request and read what comes back (and when the proxy closes)."""
    start = time.monotonic()
    result = raw_exchange(port, payload, timeout=wait)
    return result.data, result.closed, time.monotonic() - start


def test_request_timeout_is_408(timeouts):
    before = timeouts.stats()
    data, closed, elapsed = _send_and_wait(timeouts.ports["rt"],
                                           b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert closed and elapsed < 1.5
    assert _stat_delta(timeouts, before, "http.rt.downstream_rq_timeout") == 1


def test_stream_idle_timeout_client_stalls_is_408(timeouts):
    before = timeouts.stats()
    data, closed, elapsed = _send_and_wait(timeouts.ports["si"],
                                           b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert data.endswith(b"stream timeout")
    assert closed and elapsed < 1.5
    assert _stat_delta(timeouts, before, "http.si.downstream_rq_idle_timeout") == 1


def test_stream_idle_timeout_upstream_stalls_is_504(timeouts):
    # Envoy (since 1.23, PR 20026) answers 504 when the whole request was read and the upstream is silent; the
    # connection stays open for the next request (observed beside Envoy 1.40: test_proxy_hcm_no_filters.py).
    data, closed, _ = _send_and_wait(timeouts.ports["si"], b"GET /slow/3 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 504 "), data
    assert data.endswith(b"stream timeout")
    assert b"connection: close" not in data.lower() and not closed


def test_idle_timeout_closes_idle_connection(timeouts):
    before = timeouts.stats()
    with socket.create_connection(("127.0.0.1", timeouts.ports["idle"]), timeout=3) as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while not response.endswith(b"\r\n\r\nok\n"):
            chunk = sock.recv(65536)
            assert chunk, response
            response += chunk
        assert response.startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert sock.recv(65536) == b""  # the proxy closes the idle keep-alive connection
        assert time.monotonic() - start < 1.5
    assert _stat_delta(timeouts, before, "http.idle.downstream_cx_idle_timeout") == 1
