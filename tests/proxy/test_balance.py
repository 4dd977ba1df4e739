"""Integration: connection balancing across worker processes, through a real `pylon proxy`.

Each balancer is configured the Envoy way on the listener; the per-worker
stats (`listener.<addr>.worker_<i>.downstream_cx_active`) show where
connections went, counted by the worker that serves them.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import RunningProxy, http_listener, route, static_cluster, wait_until

DISPATCHER_TYPE = "type.googleapis.com/pylon.connection_balance.v1.Dispatcher"
DLB_TYPE = "type.googleapis.com/envoy.extensions.network.connection_balance.dlb.v3alpha.Dlb"

BALANCE_CONFIGS: dict[str, dict[str, Any] | None] = {
    "kernel": None,
    "exact": {"exact_balance": {}},
    "dispatcher": {"extend_balance": {"name": "pylon.connection_balance.dispatcher",
                                      "typed_config": {"@type": DISPATCHER_TYPE}}},
}


def _start(run_proxy, upstreams, balancer: str, concurrency: int,
           balance: dict[str, Any] | None = None) -> tuple[RunningProxy, Any, int]:
    (up,) = upstreams(1)
    port = free_port()
    listener = http_listener("main", port, [route("/", "u")])
    config = balance if balance is not None else BALANCE_CONFIGS[balancer]
    if config is not None:
        listener["connection_balance_config"] = config
    proxy = run_proxy([listener], [static_cluster("u", [up.port])], concurrency=concurrency)
    return proxy, up, port


def _read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body (what the test upstream sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def _keepalive_connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
    assert _read_response(sock).startswith(b"HTTP/1.1 200")
    return sock


def _one_shot(port: int, path: str = "/one") -> int:
    """A request on its own new connection; the status code."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        return int(_read_response(sock).split(b" ", 2)[1])


def _per_worker(proxy: RunningProxy, port: int, workers: int, stat: str = "downstream_cx_active") -> list[int]:
    stats = proxy.stats()
    return [stats.get(f"listener.127.0.0.1_{port}.worker_{i}.{stat}", 0) for i in range(workers)]


@pytest.mark.parametrize("balancer", ["exact", "dispatcher", "kernel"])
def test_twelve_long_lived_connections_on_four_workers(run_proxy, upstreams, balancer, record_property):
    proxy, _up, port = _start(run_proxy, upstreams, balancer, concurrency=4)
    conns = [_keepalive_connection(port) for _ in range(12)]
    try:
        assert wait_until(lambda: sum(_per_worker(proxy, port, 4)) == 12)
        active = _per_worker(proxy, port, 4)
        record_property("per_worker_active", active)
        print(f"{balancer}: per-worker downstream_cx_active {active}")
        assert sum(active) == 12
        assert _per_worker(proxy, port, 4, "downstream_cx_total") == active  # counted by the worker serving it
        if balancer != "kernel":  # the kernel hashes: whatever it did is reported above
            assert max(active) - min(active) <= 1
    finally:
        for sock in conns:
            sock.close()
    assert wait_until(lambda: sum(_per_worker(proxy, port, 4)) == 0)


@pytest.mark.parametrize("balancer", ["exact", "dispatcher", "kernel"])
def test_killed_worker_loses_no_new_connection(run_proxy, upstreams, balancer):
    proxy, up, port = _start(run_proxy, upstreams, balancer, concurrency=2)
    victim = proxy.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    sent = 40
    with ThreadPoolExecutor(4) as pool:  # new connections while the worker is dead and while it restarts
        codes = list(pool.map(lambda i: _one_shot(port, f"/during/{i}"), range(sent)))
    assert codes == [200] * sent
    assert wait_until(lambda: victim not in proxy.worker_pids() and proxy.admin("/ready").status_code == 200,
                      timeout=15)
    assert proxy.stats()["server.worker_restarts"] == 1
    more = [_one_shot(port, f"/after/{i}") for i in range(10)]
    assert more == [200] * 10
    served = [r for r in up.requests if r["path"].startswith(("/during/", "/after/"))]
    assert len(served) == sent + 10


@pytest.mark.parametrize("balancer", ["exact", "dispatcher", "kernel"])
def test_new_connection_per_request(run_proxy, upstreams, balancer):
    proxy, up, port = _start(run_proxy, upstreams, balancer, concurrency=2)
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: _one_shot(port, f"/n/{i}"), range(500)))
    elapsed = time.monotonic() - started
    print(f"{balancer}: 500 new connections in {elapsed:.2f}s ({500 / elapsed:.0f}/s)")
    assert codes == [200] * 500
    totals = _per_worker(proxy, port, 2, "downstream_cx_total")
    assert sum(totals) == 500
    if balancer != "kernel":
        assert min(totals) > 0  # ties rotate: short connections do not pile onto worker 0
    assert wait_until(lambda: sum(_per_worker(proxy, port, 2)) == 0)


def test_dlb_runs_on_its_fallback_with_one_warning(run_proxy, upstreams):
    balance = {"extend_balance": {"name": "envoy.network.connection_balance.dlb",
                                  "typed_config": {"@type": DLB_TYPE, "fallback_policy": "ExactConnectionBalance"}}}
    proxy, _up, port = _start(run_proxy, upstreams, "exact", concurrency=2, balance=balance)
    conns = [_keepalive_connection(port) for _ in range(4)]
    try:
        assert wait_until(lambda: _per_worker(proxy, port, 2) == [2, 2])
    finally:
        for sock in conns:
            sock.close()
    proxy.proc.send_signal(signal.SIGTERM)
    proxy.proc.wait(timeout=15)
    out = proxy.output()
    assert out.count("no DLB device") == 1, out


def test_dlb_without_fallback_refuses_to_start(launcher, tmp_path):
    from tests.proxy.conftest import proxy_args, write_bootstrap

    listener = http_listener("main", free_port(), [route("/", "u")])
    listener["connection_balance_config"] = {"extend_balance": {
        "name": "envoy.network.connection_balance.dlb", "typed_config": {"@type": DLB_TYPE, "id": 0}}}
    config = write_bootstrap(tmp_path / "dlb.yaml", [listener], [static_cluster("u", [free_port()])], free_port())
    proc = launcher.spawn(proxy_args(config, 2, 1.0))
    out, _ = proc.communicate(timeout=20)
    text = out.decode(errors="replace")
    assert proc.returncode == 1
    assert ("static_resources.listeners[0].connection_balance_config.extend_balance.typed_config.fallback_policy"
            in text), text
    assert "no DLB device" in text
