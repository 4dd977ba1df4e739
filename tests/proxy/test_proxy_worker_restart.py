"""Integration: what a worker restart must not change — the configuration served and the counters —
a clear start-up error when the admin port is taken, and listen backlogs and accepts as Envoy sizes them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.proxy.conftest import (
    ENVOY_BIN, ProxyLauncher, RunningProxy, envoy_args, http_listener, proxy_args, route, static_cluster, wait_until,
    write_bootstrap,
)


def direct(body: str) -> dict[str, Any]:
    return {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": body}}}


def restart_worker(proxy: RunningProxy) -> None:
    (old,) = proxy.worker_pids()
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: proxy.worker_pids() != [old] and proxy.admin("/ready").status_code == 200, timeout=15)


@pytest.mark.parametrize("edit", ["valid", "invalid"])
def test_restarted_worker_serves_what_the_supervisor_serves(run_proxy: Any, edit: str) -> None:
    """The -c file is edited in place, then the worker dies: the new worker must not read the file."""
    proxy = run_proxy([http_listener("main", free_port(), [direct("version one")])], [])
    url = proxy.url("main", "/")
    assert httpx.get(url).text == "version one"
    config = yaml.safe_load(proxy.config_path.read_text())
    if edit == "valid":
        routes = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        routes["route_config"]["virtual_hosts"][0]["routes"] = [direct("version two")]
        proxy.config_path.write_text(yaml.safe_dump(config))
    else:
        proxy.config_path.write_text("static_resources: {listeners: [{name: broken")
    restart_worker(proxy)
    assert httpx.get(url).text == "version one"
    assert proxy.proc.poll() is None


def test_counters_never_go_back_when_a_worker_restarts(run_proxy: Any) -> None:
    proxy = run_proxy([http_listener("main", free_port(), [direct("ok")])], [], extra_args=["--concurrency", "1"])
    url = proxy.url("main", "/")
    with httpx.Client() as client:
        for _ in range(30):
            assert client.get(url).status_code == 200
    name = "http.main.downstream_rq_total"
    before = proxy.stats()[name]
    assert before == 30
    restart_worker(proxy)
    assert proxy.stats()[name] >= before
    with httpx.Client() as client:
        for _ in range(5):
            assert client.get(url).status_code == 200
    assert proxy.stats()[name] == before + 5
    assert proxy.stats()["http.main.downstream_cx_active"] == 0  # gauges are the live workers' alone


def test_admin_port_in_use_is_one_clear_line(implementation: str, launcher: ProxyLauncher, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        admin = busy.getsockname()[1]
        config = write_bootstrap(tmp_path / "admin-busy.yaml", [http_listener("main", free_port(), [direct("ok")])],
                                 [], admin)
        if implementation == "envoy":
            if not ENVOY_BIN.exists():
                pytest.skip(f"Envoy, the reference, is not installed at {ENVOY_BIN}")
            args = envoy_args(config)
        else:
            args = proxy_args(config)
        proc = launcher.spawn(args)
        out = proc.communicate(timeout=20)[0].decode(errors="replace")
    assert proc.returncode != 0, out
    assert str(admin) in out
    if implementation == "pylon":
        assert proc.returncode == 1
        assert "Traceback" not in out
        (line,) = [line for line in out.splitlines() if line.strip()]
        assert "admin" in line and "in use" in line, line


def listen_backlogs(port: int) -> list[int]:
    """The accept-queue limit of every socket listening on 127.0.0.1:port, as the kernel reports it (ss)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return [int(line.split()[2]) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("size", [None, 333])
def test_listen_backlog_is_tcp_backlog_size_else_somaxconn(implementation: str, run_proxy: Any, tmp_path: Path,
                                                           size: int | None) -> None:
    """A flood of new connections needs Envoy's backlog: `tcp_backlog_size`, else net.core.somaxconn."""
    port = free_port()
    listener = http_listener("main", port, [direct("ok")])
    if size is not None:
        listener["tcp_backlog_size"] = size
    run_proxy([listener], [], concurrency=2, implementation=implementation)
    expected = size if size is not None else int(Path("/proc/sys/net/core/somaxconn").read_text())
    backlogs = listen_backlogs(port)
    assert backlogs and set(backlogs) == {expected}, backlogs


def test_capped_accepts_per_wakeup_still_serve_a_burst(implementation: str, run_proxy: Any) -> None:
    """`max_connections_to_accept_per_socket_event: 1` takes the burst over more wake-ups, losing none."""
    port = free_port()
    listener = http_listener("main", port, [direct("ok")])
    listener["max_connections_to_accept_per_socket_event"] = 1
    run_proxy([listener], [], concurrency=2, implementation=implementation)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    try:
        for client in clients:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for client in clients:
            client.settimeout(5)
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for client in clients:
            client.close()
