"""Integration: the overload manager through pylon and Envoy 1.40 alike.

The global downstream connections limit (the overload manager's monitor, and Envoy 1.40's deprecated runtime
key): with two workers, a connection past the limit is closed as it is accepted, and once one closes a new one is
served. A fixed_heap monitor whose limit is one byte keeps each action saturated: stop_accepting_requests (503
"envoy overloaded"), disable_http_keepalive (connection: close), reject_incoming_connections (closed unanswered)
and stop_accepting_connections (left in the backlog); each with Envoy's stats.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, wait_until

HEAP = "envoy.resource_monitors.fixed_heap"
CONNECTIONS = "envoy.resource_monitors.global_downstream_max_connections"
REQUEST = b"GET / HTTP/1.1\r\nhost: example\r\n\r\n"
ROUTES = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]


def heap_monitor(max_bytes: int = 1) -> dict[str, Any]:
    return {"name": HEAP, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
        "max_heap_size_bytes": max_bytes}}


def connections_monitor(limit: int) -> dict[str, Any]:
    return {"name": CONNECTIONS, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
                 "DownstreamConnectionsConfig",
        "max_active_downstream_connections": limit}}


def start(launcher: ProxyLauncher, implementation: str, extra: dict[str, Any]) -> RunningProxy:
    return launcher.start([http_listener("main", free_port(), ROUTES)], [], concurrency=2,
                          implementation=implementation, bootstrap_extra=extra)


@pytest.fixture(params=["pylon", "envoy"])
def launch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ProxyLauncher, str]]:
    launcher = ProxyLauncher(tmp_path)
    try:
        yield launcher, request.param
    finally:
        launcher.close()


def exchange(port: int, sock: socket.socket | None = None, timeout: float = 5.0) -> tuple[socket.socket, bytes]:
    """One request on `sock` (else a new connection): the connection and what came back before it went quiet or
    closed (b"" when it was closed or reset unanswered)."""
    sock = sock or socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    got = b""
    try:
        sock.sendall(REQUEST)
        while b"\r\n\r\n" not in got or not got.endswith((b"ok", b"envoy overloaded")):
            piece = sock.recv(4096)
            if not piece:
                break
            got += piece
    except (ConnectionResetError, BrokenPipeError):
        pass
    return sock, got


def stats_or_none(proxy: RunningProxy) -> dict[str, int] | None:
    try:
        return proxy.stats()
    except httpx.HTTPError:
        return None


@pytest.mark.parametrize("source", ["monitor", "runtime"])
def test_connections_past_the_global_limit_are_closed(launch: tuple[ProxyLauncher, str], source: str) -> None:
    launcher, implementation = launch
    extra = ({"overload_manager": {"refresh_interval": "0.1s", "resource_monitors": [connections_monitor(2)]}}
             if source == "monitor" else
             {"layered_runtime": {"layers": [{"name": "static", "static_layer": {
                 "overload": {"global_downstream_max_connections": 2}}}]}})
    proxy = start(launcher, implementation, extra)
    port = proxy.ports["main"]
    held = [exchange(port)[0] for _ in range(2)]
    third, answer = exchange(port)
    assert answer == b""  # closed as accepted
    third.close()
    held.pop().close()
    # once the proxy has seen that close, a new connection is served
    served = wait_until(lambda: exchange(port)[1].startswith(b"HTTP/1.1 200"), timeout=10)
    assert served
    for sock in held:
        sock.close()
    stats = wait_until(lambda: stats_or_none(proxy), timeout=10)  # Envoy counts its admin's connections too
    assert stats["listener.127.0.0.1_%d.downstream_global_cx_overflow" % port] >= 1
    if source == "monitor":
        assert stats[f"overload.{CONNECTIONS}.failed_updates"] >= 1
    else:
        assert not any(name.startswith(f"overload.{CONNECTIONS}") for name in stats)


def start_saturated(launcher: ProxyLauncher, implementation: str, action: str) -> RunningProxy:
    """A proxy whose action is on (Envoy's first measurement may come after its listeners serve: waited for)."""
    proxy = start(launcher, implementation, saturated(action))
    assert wait_until(lambda: proxy.stats().get(f"overload.{action}.active") == 1, timeout=10)
    return proxy


def saturated(action: str) -> dict[str, Any]:
    return {"overload_manager": {"refresh_interval": "0.1s", "resource_monitors": [heap_monitor()], "actions": [
        {"name": action, "triggers": [{"name": HEAP, "threshold": {"value": 0.95}}]}]}}


def test_stop_accepting_requests(launch: tuple[ProxyLauncher, str]) -> None:
    launcher, implementation = launch
    proxy = start_saturated(launcher, implementation, "envoy.overload_actions.stop_accepting_requests")
    sock, answer = exchange(proxy.ports["main"])
    sock, again = exchange(proxy.ports["main"], sock)  # the connection stays open
    sock.close()
    for reply in (answer, again):
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"content-type: text/plain" in head and b"connection: close" not in head
        assert body == b"envoy overloaded"
    stats = proxy.stats()
    assert stats["http.main.downstream_rq_overload_close"] == 2
    assert stats["overload.envoy.overload_actions.stop_accepting_requests.active"] == 1
    assert stats["overload.envoy.overload_actions.stop_accepting_requests.scale_percent"] == 100
    assert stats[f"overload.{HEAP}.pressure"] > 100


def test_disable_http_keepalive(launch: tuple[ProxyLauncher, str]) -> None:
    launcher, implementation = launch
    proxy = start_saturated(launcher, implementation, "envoy.overload_actions.disable_http_keepalive")
    sock, answer = exchange(proxy.ports["main"])
    # Envoy 1.40 then keeps serving the connection until the client closes it (observed), pylon closes it after
    # the response, as after any draining response (docs/architecture.md)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close\r\n" in answer
    sock.close()
    assert proxy.stats()["http.main.downstream_cx_overload_disable_keepalive"] == 1


def test_reject_incoming_connections(launch: tuple[ProxyLauncher, str]) -> None:
    launcher, implementation = launch
    proxy = start_saturated(launcher, implementation, "envoy.overload_actions.reject_incoming_connections")
    sock, answer = exchange(proxy.ports["main"])
    sock.close()
    assert answer == b""
    assert wait_until(lambda: proxy.stats()["listener.127.0.0.1_%d.downstream_cx_overload_reject"
                                            % proxy.ports["main"]] == 1)


def test_stop_accepting_connections(launch: tuple[ProxyLauncher, str]) -> None:
    launcher, implementation = launch
    proxy = start_saturated(launcher, implementation, "envoy.overload_actions.stop_accepting_connections")
    with pytest.raises(TimeoutError):
        exchange(proxy.ports["main"], timeout=1.5)  # the kernel completes the handshake; nobody accepts it
    stats = proxy.stats()
    assert stats["listener.127.0.0.1_%d.downstream_cx_total" % proxy.ports["main"]] == 0
    assert stats["overload.envoy.overload_actions.stop_accepting_connections.active"] == 1


def test_shrink_heap_releases_free_memory_every_ten_seconds(launch: tuple[ProxyLauncher, str]) -> None:
    """shrink_heap saturated: a round every 10 s (Envoy's fixed period), counted once per round; unsaturated
    (a limit no process reaches) the counter is there and stays 0."""
    launcher, implementation = launch
    proxy = start_saturated(launcher, implementation, "envoy.overload_actions.shrink_heap")
    name = "overload.envoy.overload_actions.shrink_heap.shrink_count"
    assert proxy.stats()[name] == 0
    wait_until(lambda: proxy.stats()[name] >= 1, timeout=30)
    assert exchange(proxy.ports["main"])[1].endswith(b"ok")  # the workers serve on after their release
    idle = start(launcher, implementation, {"overload_manager": {"refresh_interval": "0.1s", "resource_monitors": [
        heap_monitor(1 << 40)], "actions": [{"name": "envoy.overload_actions.shrink_heap", "triggers": [
            {"name": HEAP, "threshold": {"value": 0.9}}]}]}})
    assert idle.stats()[name] == 0 and idle.stats()["overload.envoy.overload_actions.shrink_heap.active"] == 0


@pytest.mark.parametrize("mode", ["HOST", "CONTAINER"])
def test_cpu_utilization_monitor_reads_the_cpu(launch: tuple[ProxyLauncher, str], mode: str) -> None:
    """The monitor reads every refresh without failing (this machine's cgroup for CONTAINER) and publishes a
    pressure in percent (the host's at most 100; a cgroup v1's is not clamped, in Envoy either)."""
    launcher, implementation = launch
    cpu = "envoy.resource_monitors.cpu_utilization"
    proxy = start(launcher, implementation, {"overload_manager": {"refresh_interval": "0.1s", "resource_monitors": [
        {"name": cpu, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.cpu_utilization.v3.CpuUtilizationConfig",
            "mode": mode}}], "actions": [{"name": "envoy.overload_actions.shrink_heap", "triggers": [
                {"name": cpu, "threshold": {"value": 1.0}}]}]}})
    for _ in range(5):
        assert exchange(proxy.ports["main"])[1].endswith(b"ok")
    wait_until(lambda: f"overload.{cpu}.pressure" in proxy.stats(), timeout=10)
    stats = proxy.stats()
    assert stats[f"overload.{cpu}.failed_updates"] == 0 and stats[f"overload.{cpu}.pressure"] >= 0
    assert mode == "CONTAINER" or stats[f"overload.{cpu}.pressure"] <= 100
