"""Integration: tcp_proxy's `weighted_clusters`, source-IP `hash_policy` and `max_downstream_connection_duration`,
each run through pylon and through Envoy 1.40 with the same config and the same assertions.

What pilot generates for a weighted VirtualService tcp/tls route and for a DestinationRule with
`consistentHash.useSourceIp` or `tcp.maxConnectionDuration`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    TCP_PROXY_TYPE,
    ProxyLauncher,
    RunningProxy,
    json_access_log,
    read_json_lines,
    static_cluster,
    wait_until,
)
from tests.proxy.upstreams import TcpEcho


class NamedServer(TcpEcho):
    """A TCP server that answers each connection with its name, then echoes (so a client knows who served it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        try:
            conn.sendall(self.name.encode() + b"\n")
        except OSError:
            conn.close()
            return
        super()._echo(conn)


@pytest.fixture
def servers() -> Iterator[dict[str, NamedServer]]:
    made = {name: NamedServer(name) for name in ("a", "b", "c")}
    yield made
    for server in made.values():
        server.close()


def tcp_proxy_listener(port: int, **fields: Any) -> dict[str, Any]:
    return {"name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": TCP_PROXY_TYPE, "stat_prefix": "tcp", **fields}}]}]}  # fmt: skip


def start(launcher: ProxyLauncher, implementation: str, clusters: list[dict[str, Any]], **fields: Any) -> RunningProxy:
    return launcher.start([tcp_proxy_listener(free_port(), **fields)], clusters, implementation=implementation)


def served_by(port: int, source: str = "127.0.0.1") -> str:
    """Open a connection through the proxy from `source`: the name of the server that answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as conn:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(100)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


def test_weighted_clusters_split_connections_by_weight(launcher: ProxyLauncher, implementation: str,
                                                       servers: dict[str, NamedServer]) -> None:
    """Weights 1:3: about a quarter of the connections to `a` (binomial, 240 connections: 60 expected, sd 6.7;
    the bounds are 4.5 sd away). Each connection is one pick: its bytes all go to the server that greeted it."""
    clusters = [static_cluster(name, [servers[name].port]) for name in ("a", "b")]
    proxy = start(launcher, implementation, clusters,
                  weighted_clusters={"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]})
    port = proxy.ports["tcp"]
    picks = [served_by(port) for _ in range(240)]
    assert set(picks) == {"a", "b"}
    assert 30 <= picks.count("a") <= 90, picks.count("a")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        greeting = conn.recv(100)
        conn.sendall(b"one connection, one cluster")
        echoed = b""
        while len(echoed) < 27:
            echoed += conn.recv(100)
    assert greeting in (b"a\n", b"b\n") and echoed == b"one connection, one cluster"
    stats = proxy.stats()
    assert stats["cluster.a.upstream_cx_total"] + stats["cluster.b.upstream_cx_total"] == 241


def test_a_single_weighted_cluster_takes_every_connection(launcher: ProxyLauncher, implementation: str,
                                                          servers: dict[str, NamedServer]) -> None:
    clusters = [static_cluster(name, [servers[name].port]) for name in ("a", "b")]
    proxy = start(launcher, implementation, clusters, weighted_clusters={"clusters": [{"name": "b", "weight": 7}]})
    assert {served_by(proxy.ports["tcp"]) for _ in range(20)} == {"b"}


def test_weighted_pick_is_the_cluster_in_the_access_log(launcher: ProxyLauncher, implementation: str,
                                                        servers: dict[str, NamedServer], tmp_path: Path) -> None:
    log = tmp_path / "tcp.log"
    clusters = [static_cluster(name, [servers[name].port]) for name in ("a", "b")]
    proxy = start(launcher, implementation, clusters, access_log=json_access_log(log),
                  weighted_clusters={"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]})
    picks = [served_by(proxy.ports["tcp"]) for _ in range(10)]
    entries = read_json_lines(log, 10)
    assert sorted(entry["cluster"] for entry in entries) == sorted(picks)


HOSTS = ("a", "b", "c")
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")


def ring_cluster(servers: dict[str, NamedServer]) -> dict[str, Any]:
    return static_cluster("ring", [servers[name].port for name in HOSTS], lb_policy="RING_HASH")


def test_source_ip_hash_keeps_each_client_on_one_host(launcher: ProxyLauncher, implementation: str,
                                                      servers: dict[str, NamedServer]) -> None:
    proxy = start(launcher, implementation, [ring_cluster(servers)], cluster="ring", hash_policy=[{"source_ip": {}}])
    port = proxy.ports["tcp"]
    hosts = {source: {served_by(port, source) for _ in range(8)} for source in SOURCES}
    assert all(len(served) == 1 for served in hosts.values()), hosts


def test_without_a_hash_policy_one_client_is_spread_over_the_ring(launcher: ProxyLauncher, implementation: str,
                                                                  servers: dict[str, NamedServer]) -> None:
    """The control: a RING_HASH cluster without a key picks a random point per connection (12 connections all on
    one of 3 hosts: probability 3 / 3^12)."""
    proxy = start(launcher, implementation, [ring_cluster(servers)], cluster="ring")
    assert len({served_by(proxy.ports["tcp"], "127.0.0.2") for _ in range(12)}) > 1


def test_max_downstream_connection_duration_closes_a_busy_session(launcher: ProxyLauncher, implementation: str,
                                                                  tmp_path: Path) -> None:
    """Bytes flow every 0.1 s (never idle) and the session still ends at 0.6 s: counted and logged as DT."""
    echo = TcpEcho()
    log = tmp_path / "tcp.log"
    try:
        proxy = start(launcher, implementation, [static_cluster("echo", [echo.port])], cluster="echo",
                      idle_timeout="10s", max_downstream_connection_duration="0.6s", access_log=json_access_log(log))
        with socket.create_connection(("127.0.0.1", proxy.ports["tcp"]), timeout=5) as conn:
            opened = time.monotonic()
            conn.settimeout(0.1)
            closed_at = None
            while time.monotonic() - opened < 3:
                try:
                    conn.sendall(b"tick")
                    if conn.recv(100) == b"":
                        closed_at = time.monotonic() - opened
                        break
                except socket.timeout:
                    continue
                except OSError:
                    closed_at = time.monotonic() - opened
                    break
                time.sleep(0.1)
        assert closed_at is not None and 0.5 <= closed_at <= 1.6, closed_at
        assert wait_until(lambda: proxy.stats().get("tcp.tcp.max_downstream_connection_duration") == 1)
        assert proxy.stats()["tcp.tcp.idle_timeout"] == 0
        (entry,) = read_json_lines(log, 1)
        assert entry["flags"] == "DT" and entry["bytes_received"] > 0
    finally:
        echo.close()


def test_a_session_shorter_than_the_maximum_is_untouched(launcher: ProxyLauncher, implementation: str) -> None:
    echo = TcpEcho()
    try:
        proxy = start(launcher, implementation, [static_cluster("echo", [echo.port])], cluster="echo",
                      max_downstream_connection_duration="5s")
        with socket.create_connection(("127.0.0.1", proxy.ports["tcp"]), timeout=5) as conn:
            conn.sendall(b"quick")
            assert conn.recv(100) == b"quick"
        time.sleep(0.3)
        assert proxy.stats().get("tcp.tcp.max_downstream_connection_duration", 0) == 0
    finally:
        echo.close()


def test_a_session_both_sides_ended_is_closed(launcher: ProxyLauncher, implementation: str) -> None:
    """The client half-closes, the upstream answers its EOF with its own: the session is over on both sides and
    the proxy closes both connections (pylon kept them open, half-closed both ways, until the idle timeout)."""
    echo = TcpEcho()
    try:
        proxy = start(launcher, implementation, [static_cluster("echo", [echo.port])], cluster="echo")
        with socket.create_connection(("127.0.0.1", proxy.ports["tcp"]), timeout=5) as conn:
            conn.sendall(b"bye")
            conn.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := conn.recv(100):
                received += chunk
        assert received == b"bye"
        assert wait_until(lambda: proxy.stats().get("cluster.echo.upstream_cx_active") == 0
                          and proxy.stats().get("cluster.echo.upstream_cx_destroy") == 1)
    finally:
        echo.close()
