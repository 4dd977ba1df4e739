"""Integration: the `pylon proxy` process — validate mode, start-up errors, workers, drain,
admin endpoints, access logs and the TCP proxy.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, refuses_connections
from tests.proxy.conftest import (
    ProxyLauncher, RunningProxy, http_listener, json_access_log, proxy_args, read_json_lines, route, static_cluster,
    tcp_listener, wait_until, write_bootstrap,
)
from tests.proxy.upstreams import TcpEcho


def _run_to_exit(launcher: ProxyLauncher, config: Path, *extra: str, timeout: float = 20) -> tuple[int, str]:
    proc = launcher.spawn(proxy_args(config, 1, 5.0, *extra))
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace")


# --------------------------------------------------------------------------- validate and start-up errors


def test_validate_mode_ok_binds_nothing(launcher, tmp_path, upstreams):
    (up,) = upstreams(1)
    port, admin = free_port(), free_port()
    config = write_bootstrap(tmp_path / "ok.yaml", [http_listener("main", port, [route("/", "u")])],
                             [static_cluster("u", [up.port])], admin)
    code, out = _run_to_exit(launcher, config, "--mode", "validate")
    assert code == 0, out
    assert "OK" in out
    assert refuses_connections(port) and refuses_connections(admin)


BAD_ROUTE_PATH = ("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
                  ".virtual_hosts[0].routes[1].match.tls_context")


@pytest.mark.parametrize("mode", ["validate", "serve"])
def test_unsupported_field_is_an_error_naming_its_path(launcher, tmp_path, mode):
    port, admin = free_port(), free_port()
    routes = [route("/a", "u"), {"match": {"prefix": "/", "tls_context": {}}, "route": {"cluster": "u"}}]
    config = write_bootstrap(tmp_path / "bad.yaml", [http_listener("main", port, routes)],
                             [static_cluster("u", [free_port()])], admin)
    code, out = _run_to_exit(launcher, config, "--mode", mode)
    assert code == 1, out
    assert BAD_ROUTE_PATH in out
    assert refuses_connections(port) and refuses_connections(admin)


@pytest.mark.parametrize("mutate, expected", [
    (lambda l, c: l[0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
     ["routes"][0]["route"].update(cluster="nope"), "unknown cluster 'nope'"),
    (lambda l, c: c[0].update(lb_policy="MAGLEV_PLUS"), "static_resources.clusters[0].lb_policy"),
    (lambda l, c: c[0].update(connect_timeout="soon"), "static_resources.clusters[0].connect_timeout"),
    (lambda l, c: l[0]["filter_chains"][0]["filters"][0]["typed_config"].update({"@type": "type.googleapis.com/x.Y"}),
     "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"),
])
def test_config_errors_exit_1(launcher, tmp_path, mutate, expected):
    listeners = [http_listener("main", free_port(), [route("/", "u")])]
    clusters = [static_cluster("u", [free_port()])]
    mutate(listeners, clusters)
    config = write_bootstrap(tmp_path / "bad.yaml", listeners, clusters, free_port())
    code, out = _run_to_exit(launcher, config, "--mode", "validate")
    assert code == 1
    assert expected in out, out


def test_port_in_use_exits_1_and_starts_nothing(launcher, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        admin = free_port()
        config = write_bootstrap(tmp_path / "busy.yaml", [http_listener("main", port, [route("/", "u")])],
                                 [static_cluster("u", [free_port()])], admin)
        code, out = _run_to_exit(launcher, config)
        assert code == 1, out
        assert str(port) in out
        assert refuses_connections(admin)


# --------------------------------------------------------------------------- workers and draining


def test_concurrency_2_both_workers_serve(run_proxy, upstreams):
    (up,) = upstreams(1)
    port = free_port()
    proxy = run_proxy([http_listener("main", port, [route("/", "u")])], [static_cluster("u", [up.port])],
                      concurrency=2)
    assert len(set(proxy.worker_pids())) == 2
    for i in range(40):  # a new connection each time: the kernel spreads them over the workers
        assert httpx.get(proxy.url("main", f"/c{i}")).status_code == 200
    stats = proxy.stats()
    per_worker = [stats[f"listener.127.0.0.1_{port}.worker_{i}.downstream_cx_total"] for i in (0, 1)]
    assert all(n > 0 for n in per_worker), per_worker
    assert sum(per_worker) == 40
    assert stats[f"listener.127.0.0.1_{port}.downstream_cx_total"] == 40
    assert stats["http.main.downstream_rq_total"] == 40
    assert stats["http.main.downstream_rq_2xx"] == 40
    assert stats["cluster.u.upstream_rq_total"] == 40


def _in_flight(proxy: RunningProxy, count: int, path: str) -> tuple[ThreadPoolExecutor, list[Any]]:
    pool = ThreadPoolExecutor(count)
    futures = [pool.submit(httpx.get, proxy.url("main", f"{path}?{i}"), timeout=10) for i in range(count)]
    return pool, futures


def test_sigterm_drains_in_flight_requests_and_exits_0(run_proxy, upstreams):
    (up,) = upstreams(1)
    proxy = run_proxy([http_listener("main", free_port(), [route("/", "u")])], [static_cluster("u", [up.port])],
                      drain_time=5.0)
    pool, futures = _in_flight(proxy, 3, "/slow/1")
    assert wait_until(lambda: len(up.requests) == 3, timeout=3)
    start = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    codes = [f.result().status_code for f in futures]
    pool.shutdown()
    assert codes == [200, 200, 200]
    assert proxy.proc.wait(timeout=10) == 0
    assert time.monotonic() - start < 5.0
    assert refuses_connections(proxy.ports["main"])


def test_new_connections_not_served_while_draining(run_proxy, upstreams):
    (up,) = upstreams(1)
    proxy = run_proxy([http_listener("main", free_port(), [route("/", "u")])], [static_cluster("u", [up.port])],
                      drain_time=5.0)
    pool, futures = _in_flight(proxy, 1, "/slow/1.5")
    assert wait_until(lambda: len(up.requests) == 1, timeout=3)
    proxy.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.HTTPError):
        httpx.get(proxy.url("main", "/late"), timeout=0.5)
    assert futures[0].result().status_code == 200
    pool.shutdown()
    assert "/late" not in up.paths()
    assert proxy.proc.wait(timeout=10) == 0


def test_quitquitquit_drains_and_exits_0(run_proxy, upstreams):
    (up,) = upstreams(1)
    proxy = run_proxy([http_listener("main", free_port(), [route("/", "u")])], [static_cluster("u", [up.port])])
    assert proxy.admin("/quitquitquit").status_code == 405  # GET is refused: it changes server state
    pool, futures = _in_flight(proxy, 2, "/slow/0.8")
    assert wait_until(lambda: len(up.requests) == 2, timeout=3)
    response = httpx.post(f"http://127.0.0.1:{proxy.admin_port}/quitquitquit", timeout=5)
    assert response.status_code == 200
    assert [f.result().status_code for f in futures] == [200, 200]
    pool.shutdown()
    assert proxy.proc.wait(timeout=10) == 0


def test_killed_worker_is_restarted(run_proxy, upstreams):
    (up,) = upstreams(1)
    proxy = run_proxy([http_listener("main", free_port(), [route("/", "u")])], [static_cluster("u", [up.port])])
    (old,) = proxy.worker_pids()
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: proxy.worker_pids() != [old] and proxy.admin("/ready").status_code == 200, timeout=15)
    info = proxy.server_info()
    assert info["workers"][0]["restarts"] == 1
    assert httpx.get(proxy.url("main", "/after-restart")).status_code == 200
    assert proxy.stats()["server.worker_restarts"] == 1
    assert proxy.proc.poll() is None


# --------------------------------------------------------------------------- admin


@pytest.fixture
def admin_env(run_proxy, upstreams) -> dict[str, Any]:
    (up,) = upstreams(1)
    port = free_port()
    proxy = run_proxy([http_listener("main", port, [route("/", "u")])], [static_cluster("u", [up.port])])
    with httpx.Client() as client:
        for i in range(5):
            assert client.get(proxy.url("main", f"/a{i}")).status_code == 200
        assert client.get(proxy.url("main", "/status/503")).status_code == 503
    return {"proxy": proxy, "up": up, "port": port}


def test_admin_ready_and_server_info(admin_env):
    proxy: RunningProxy = admin_env["proxy"]
    ready = proxy.admin("/ready")
    assert ready.status_code == 200 and ready.text.strip() == "LIVE"
    info = proxy.server_info()
    assert info["state"] == "LIVE"
    assert info["command_line_options"]["concurrency"] == 1
    assert info["version"]
    assert proxy.admin("/no-such-endpoint").status_code == 404


def test_admin_stats_envoy_names(admin_env):
    proxy: RunningProxy = admin_env["proxy"]
    stats = proxy.stats()
    port = admin_env["port"]
    expected = {
        "http.main.downstream_rq_total": 6, "http.main.downstream_rq_2xx": 5, "http.main.downstream_rq_5xx": 1,
        "cluster.u.upstream_rq_total": 6, "cluster.u.upstream_rq_2xx": 5, "cluster.u.upstream_rq_503": 1,
        "cluster.u.upstream_cx_active": 1, "cluster.u.upstream_rq_retry": 0, "cluster.u.upstream_rq_pending_overflow": 0,
        "cluster.u.membership_healthy": 1, f"listener.127.0.0.1_{port}.downstream_cx_total": 1,
        f"listener.127.0.0.1_{port}.worker_0.downstream_cx_active": 0, "http.main.downstream_cx_active": 0,
    }
    assert {name: stats.get(name) for name in expected} == expected
    filtered = proxy.admin("/stats?filter=^cluster\\.u\\.upstream_rq_total$").text
    assert filtered.strip() == "cluster.u.upstream_rq_total: 6"


def test_admin_prometheus(admin_env):
    proxy: RunningProxy = admin_env["proxy"]
    response = proxy.admin("/stats/prometheus")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    # The parser reports every counter sample under a `_total` name; Envoy's own names are checked in the text.
    assert samples[("envoy_http_downstream_rq_total", (("envoy_http_conn_manager_prefix", "main"),))] == 6
    assert samples[("envoy_cluster_upstream_rq_total", (("envoy_cluster_name", "u"),))] == 6
    assert samples[("envoy_cluster_upstream_rq_total",
                    (("envoy_cluster_name", "u"), ("envoy_response_code", "503")))] == 1
    assert samples[("envoy_http_downstream_rq_xx_total", (("envoy_http_conn_manager_prefix", "main"),
                                                          ("envoy_response_code_class", "2")))] == 5
    lines = response.text.splitlines()
    assert 'envoy_cluster_upstream_rq{envoy_cluster_name="u",envoy_response_code="503"} 1.0' in lines
    assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="main"} 6.0' in lines


def test_admin_config_dump_and_clusters(admin_env):
    proxy: RunningProxy = admin_env["proxy"]
    dump = proxy.admin("/config_dump").json()
    bootstrap = dump["configs"][0]
    assert bootstrap["@type"] == "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"
    resources = bootstrap["bootstrap"]["static_resources"]
    assert [l["name"] for l in resources["listeners"]] == ["main"]
    assert [c["name"] for c in resources["clusters"]] == ["u"]
    clusters = proxy.clusters()
    host = f"u::127.0.0.1:{admin_env['up'].port}"
    assert clusters[f"{host}::health_flags"] == "healthy"
    assert clusters[f"{host}::rq_total"] == "6"
    assert clusters[f"{host}::rq_error"] == "1"
    assert clusters["u::default_priority::max_connections"] == "1024"


# --------------------------------------------------------------------------- access log


def test_json_access_log_fields_and_response_flags(run_proxy, upstreams, tmp_path):
    (up,) = upstreams(1)
    log = tmp_path / "access.json"
    routes = [
        route("/dead/", "dead"),
        route("/slow/", "u", timeout="0.3s"),
        route("/overflow/", "full"),
        {"name": "ok_route", **route("/ok/", "u")},
    ]
    proxy = run_proxy([http_listener("main", free_port(), routes, access_log=json_access_log(log))],
                      [static_cluster("u", [up.port]), static_cluster("dead", [free_port()]),
                       static_cluster("full", [up.port], circuit_breakers={"thresholds": [{"max_pending_requests": 0}]})])
    with httpx.Client(timeout=5) as client:
        assert client.get(proxy.url("main", "/ok/hello"), headers={"user-agent": "t"}).status_code == 200
        assert client.get(proxy.url("main", "/nowhere")).status_code == 404
        assert client.get(proxy.url("main", "/dead/x")).status_code == 503
        assert client.get(proxy.url("main", "/slow/2")).status_code == 504
        assert client.get(proxy.url("main", "/overflow/x")).status_code == 503
    entries = {e["path"]: e for e in read_json_lines(log, 5)}
    ok = entries["/ok/hello"]
    assert ok["code"] == 200 and ok["flags"] == "-" and ok["method"] == "GET" and ok["protocol"] == "HTTP/1.1"
    assert ok["cluster"] == "u"
    assert ok["upstream"] == f"127.0.0.1:{up.port}"
    assert ok["bytes_sent"] == 3 and ok["bytes_received"] == 0
    assert isinstance(ok["duration"], int)
    assert ok["downstream"].startswith("127.0.0.1:")
    assert ok["authority"] == f"127.0.0.1:{proxy.ports['main']}"
    # The id the proxy generated and sent upstream is the one logged.
    assert ok["request_id"] == [r for r in up.requests if r["path"] == "/ok/hello"][0]["headers"]["x-request-id"]
    assert (entries["/nowhere"]["code"], entries["/nowhere"]["flags"]) == (404, "NR")
    assert (entries["/dead/x"]["code"], entries["/dead/x"]["flags"]) == (503, "UF")
    assert (entries["/slow/2"]["code"], entries["/slow/2"]["flags"]) == (504, "UT")
    assert (entries["/overflow/x"]["code"], entries["/overflow/x"]["flags"]) == (503, "UO")


# --------------------------------------------------------------------------- TCP proxy


@pytest.fixture
def tcp_echo():
    echo = TcpEcho()
    yield echo
    echo.close()


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_tcp_proxy_echo_and_half_close(run_proxy, tcp_echo):
    port = free_port()
    proxy = run_proxy([tcp_listener("tcp", port, "echo")], [static_cluster("echo", [tcp_echo.port])])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"hello")
        assert _recv_exactly(sock, 5) == b"hello"
        big = os.urandom(2 * 1024 * 1024)
        sender = threading.Thread(target=sock.sendall, args=(big,))
        sender.start()
        assert _recv_exactly(sock, len(big)) == big
        sender.join()
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""  # the echo server's close reaches us through the proxy
    stats = proxy.stats()
    assert stats["tcp.tcp.downstream_cx_total"] == 1
    assert stats["tcp.tcp.downstream_cx_rx_bytes_total"] == 5 + len(big)
    assert stats["cluster.echo.upstream_cx_total"] == 1


def test_tcp_proxy_carries_http_untouched(run_proxy, upstreams):
    (up,) = upstreams(1)
    port = free_port()
    run_proxy([tcp_listener("tcp", port, "web")], [static_cluster("web", [up.port])])
    response = httpx.get(f"http://127.0.0.1:{port}/through-tcp")
    assert response.status_code == 200
    assert "x-envoy-upstream-service-time" not in response.headers  # bytes are relayed, not an HTTP hop
    assert "x-request-id" not in up.requests[-1]["headers"]


def test_tcp_proxy_idle_timeout(run_proxy, tcp_echo):
    port = free_port()
    proxy = run_proxy([tcp_listener("tcp", port, "echo", idle_timeout="0.3s")], [static_cluster("echo", [tcp_echo.port])])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"ping")
        assert _recv_exactly(sock, 4) == b"ping"
        start = time.monotonic()
        assert sock.recv(10) == b""
        assert time.monotonic() - start < 1.5
    assert proxy.stats()["tcp.tcp.idle_timeout"] == 1


def test_tcp_proxy_upstream_connect_failure_closes(run_proxy):
    port = free_port()
    run_proxy([tcp_listener("tcp", port, "dead")], [static_cluster("dead", [free_port()])])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"anyone?")
        start = time.monotonic()
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - start < 2
