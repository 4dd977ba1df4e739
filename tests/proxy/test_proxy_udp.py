"""Integration: UDP listeners and the UDP proxy through pylon and Envoy 1.40 alike.

A UDP echo server on loopback answers every datagram with its own bytes and records where each came from; clients
send datagrams to the proxy's UDP listener. Both proxies must answer alike, give each client its own session (its
own upstream socket, so the echo server sees one source port per client), end a session after its idle timeout,
drop what is longer than max_rx_datagram_size, balance per packet when asked, refuse sessions past the circuit
breaker, and count all of it with the same stats.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    FILE_LOG_TYPE, ProxyLauncher, RunningProxy, read_json_lines, static_cluster, wait_until,
)

UDP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
#: the stats both proxies must agree on after a scenario (Envoy's names)
COMPARED = ("udp.u.downstream_sess_total", "udp.u.downstream_sess_active", "udp.u.downstream_sess_rx_datagrams",
            "udp.u.downstream_sess_rx_bytes", "udp.u.downstream_sess_tx_datagrams", "udp.u.downstream_sess_tx_bytes",
            "udp.u.downstream_sess_no_route", "udp.u.idle_timeout", "cluster.echo.udp.sess_tx_datagrams",
            "cluster.echo.udp.sess_rx_datagrams", "cluster.echo.upstream_cx_tx_bytes_total",
            "cluster.echo.upstream_cx_rx_bytes_total", "cluster.echo.upstream_cx_overflow",
            "cluster.echo.upstream_cx_none_healthy")


class UdpEcho:
    """A UDP server on loopback that echoes every datagram (prefixed with its name) and records its sources."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[tuple[str, int], bytes]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, source = self.sock.recvfrom(65536)
            except OSError:
                return  # closed
            self.seen.append((source, data))
            self.sock.sendto(self.name + data, source)

    def sources(self) -> set[tuple[str, int]]:
        return {source for source, _ in self.seen}

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echoes() -> Iterator[list[UdpEcho]]:
    servers = [UdpEcho(b"a:"), UdpEcho(b"b:")]
    yield servers
    for server in servers:
        server.close()


@pytest.fixture
def clients() -> Iterator[Any]:
    made: list[socket.socket] = []

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5.0)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()


def udp_listener(port: int, udp_listener_config: dict[str, Any] | None = None, **proxy: Any) -> dict[str, Any]:
    listener: dict[str, Any] = {
        "name": "udp", "address": {"socket_address": {"protocol": "UDP", "address": "127.0.0.1", "port_value": port}},
        "listener_filters": [{"name": "envoy.filters.udp_listener.udp_proxy", "typed_config": {
            "@type": UDP_PROXY_TYPE, "stat_prefix": "u", "cluster": "echo", **proxy}}]}
    if udp_listener_config is not None:
        listener["udp_listener_config"] = udp_listener_config
    return listener


def start(launcher: ProxyLauncher, implementation: str, echoes: list[UdpEcho], *, concurrency: int = 1,
          cluster: dict[str, Any] | None = None, **listener: Any) -> tuple[RunningProxy, int]:
    port = free_port()
    cluster = cluster or static_cluster("echo", [echoes[0].port])
    proxy = launcher.start([udp_listener(port, **listener)], [cluster], implementation=implementation,
                           concurrency=concurrency)
    return proxy, port


def exchange(sock: socket.socket, port: int, data: bytes) -> bytes:
    """One datagram to the proxy and its answer, which must come from the address the client wrote to."""
    sock.sendto(data, ("127.0.0.1", port))
    answer, source = sock.recvfrom(65536)
    assert source == ("127.0.0.1", port)
    return answer


def compared(stats: dict[str, int]) -> dict[str, int]:
    return {name: stats.get(name, 0) for name in COMPARED}


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_each_client_gets_its_own_session(implementation: str, echoes: list[UdpEcho], clients: Any,
                                          tmp_path: Path) -> None:
    launcher = ProxyLauncher(tmp_path)
    try:
        proxy, port = start(launcher, implementation, echoes)
        first, second = clients(), clients()
        for i in range(3):
            assert exchange(first, port, b"one-%d" % i) == b"a:one-%d" % i
            assert exchange(second, port, b"two-%d" % i) == b"a:two-%d" % i
        stats = proxy.stats()
    finally:
        launcher.close()
    # one upstream socket per client: the echo server saw two sources, each carrying one client's datagrams only
    by_source: dict[tuple[str, int], set[bytes]] = {}
    for source, data in echoes[0].seen:
        by_source.setdefault(source, set()).add(data[:3])
    assert sorted(by_source.values(), key=sorted) == [{b"one"}, {b"two"}]
    assert compared(stats) == {**dict.fromkeys(COMPARED, 0),
                               "udp.u.downstream_sess_total": 2, "udp.u.downstream_sess_active": 2,
                               "udp.u.downstream_sess_rx_datagrams": 6, "udp.u.downstream_sess_rx_bytes": 30,
                               "udp.u.downstream_sess_tx_datagrams": 6, "udp.u.downstream_sess_tx_bytes": 42,
                               "cluster.echo.udp.sess_tx_datagrams": 6, "cluster.echo.udp.sess_rx_datagrams": 6,
                               "cluster.echo.upstream_cx_tx_bytes_total": 30,
                               "cluster.echo.upstream_cx_rx_bytes_total": 42}


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_an_idle_session_ends_and_the_next_datagram_makes_a_new_one(implementation: str, echoes: list[UdpEcho],
                                                                    clients: Any, tmp_path: Path) -> None:
    launcher = ProxyLauncher(tmp_path)
    try:
        proxy, port = start(launcher, implementation, echoes, idle_timeout="0.5s")
        client = clients()
        assert exchange(client, port, b"before") == b"a:before"
        assert wait_until(lambda: proxy.stats().get("udp.u.idle_timeout") == 1, timeout=10)
        assert proxy.stats()["udp.u.downstream_sess_active"] == 0
        assert exchange(client, port, b"after") == b"a:after"
        stats = proxy.stats()
    finally:
        launcher.close()
    assert len(echoes[0].sources()) == 2  # the new session has a new upstream socket
    assert stats["udp.u.downstream_sess_total"] == 2 and stats["udp.u.downstream_sess_active"] == 1


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_datagrams_over_max_rx_datagram_size_are_dropped(implementation: str, echoes: list[UdpEcho], clients: Any,
                                                         tmp_path: Path) -> None:
    launcher = ProxyLauncher(tmp_path)
    try:
        proxy, port = start(launcher, implementation, echoes,
                            udp_listener_config={"downstream_socket_config": {"max_rx_datagram_size": 2100}},
                            upstream_socket_config={"max_rx_datagram_size": 2100, "prefer_gro": False})
        client = clients()
        client.sendto(b"x" * 2101, ("127.0.0.1", port))  # dropped by the listener
        assert exchange(client, port, b"y" * 2098) == b"a:" + b"y" * 2098  # answered in 2100 bytes: the longest
        # the answer to 2099 bytes is 2101 long: the upstream socket drops it
        client.sendto(b"z" * 2099, ("127.0.0.1", port))
        assert wait_until(lambda: proxy.stats().get("cluster.echo.udp.sess_rx_datagrams_dropped") == 1, timeout=10)
        stats = proxy.stats()
    finally:
        launcher.close()
    assert [len(data) for _, data in echoes[0].seen] == [2098, 2099]
    assert stats["listener.127.0.0.1_%d.udp.downstream_rx_datagram_dropped" % port] == 1
    assert stats["udp.u.downstream_sess_rx_datagrams"] == 2 and stats["udp.u.downstream_sess_tx_datagrams"] == 1


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_prefer_gro_lets_any_length_through(implementation: str, echoes: list[UdpEcho], clients: Any,
                                            tmp_path: Path) -> None:
    """With GRO Envoy reads into a 64 KiB buffer: max_rx_datagram_size no longer drops anything (observed). GRO is
    off by default on a listener and on by default on the UDP proxy's upstream sockets."""
    launcher = ProxyLauncher(tmp_path)
    try:
        proxy, port = start(launcher, implementation, echoes, upstream_socket_config={"max_rx_datagram_size": 2100},
                            udp_listener_config={"downstream_socket_config": {"max_rx_datagram_size": 2100,
                                                                              "prefer_gro": True}})
        client = clients()
        assert exchange(client, port, b"x" * 3000) == b"a:" + b"x" * 3000
        stats = proxy.stats()
    finally:
        launcher.close()
    assert stats["listener.127.0.0.1_%d.udp.downstream_rx_datagram_dropped" % port] == 0
    assert stats["cluster.echo.udp.sess_rx_datagrams_dropped"] == 0


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_per_packet_load_balancing_alternates_hosts(implementation: str, echoes: list[UdpEcho], clients: Any,
                                                    tmp_path: Path) -> None:
    launcher = ProxyLauncher(tmp_path)
    try:
        cluster = static_cluster("echo", [echoes[0].port, echoes[1].port])
        proxy, port = start(launcher, implementation, echoes, cluster=cluster, use_per_packet_load_balancing=True)
        client = clients()
        answers = [exchange(client, port, b"%d" % i)[:2] for i in range(4)]
        stats = proxy.stats()
    finally:
        launcher.close()
    assert sorted(answers) == [b"a:", b"a:", b"b:", b"b:"] and answers[0] != answers[1]  # round robin
    assert stats["udp.u.downstream_sess_total"] == 2  # one session per (client, host)


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_sessions_past_the_circuit_breaker_are_dropped(implementation: str, echoes: list[UdpEcho], clients: Any,
                                                       tmp_path: Path) -> None:
    launcher = ProxyLauncher(tmp_path)
    try:
        cluster = static_cluster("echo", [echoes[0].port],
                                 circuit_breakers={"thresholds": [{"max_connections": 1}]})
        proxy, port = start(launcher, implementation, echoes, cluster=cluster)
        first, second = clients(), clients()
        assert exchange(first, port, b"first") == b"a:first"
        second.sendto(b"second", ("127.0.0.1", port))
        assert wait_until(lambda: proxy.stats().get("cluster.echo.upstream_cx_overflow") == 1, timeout=10)
        assert exchange(first, port, b"again") == b"a:again"  # the session that has the slot goes on
        stats = proxy.stats()
    finally:
        launcher.close()
    assert [data for _, data in echoes[0].seen] == [b"first", b"again"]
    # Envoy counts the refused session too (observed), and not its datagram
    assert stats["udp.u.downstream_sess_total"] == 2 and stats["udp.u.downstream_sess_active"] == 1
    assert stats["udp.u.downstream_sess_rx_datagrams"] == 2


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_sessions_stay_whole_across_workers(implementation: str, echoes: list[UdpEcho], clients: Any,
                                            tmp_path: Path) -> None:
    """Two workers, many clients: every client's datagrams ride one session (the kernel's SO_REUSEPORT hash keeps
    a 4-tuple on one worker's socket), so the echo server sees one source per client, and no more sessions."""
    launcher = ProxyLauncher(tmp_path)
    try:
        proxy, port = start(launcher, implementation, echoes, concurrency=2)
        socks = [clients() for _ in range(16)]
        for round_ in range(3):
            for i, sock in enumerate(socks):
                assert exchange(sock, port, b"%02d-%d" % (i, round_)) == b"a:%02d-%d" % (i, round_)
        stats = proxy.stats()
    finally:
        launcher.close()
    by_source: dict[tuple[str, int], set[bytes]] = {}
    for source, data in echoes[0].seen:
        by_source.setdefault(source, set()).add(data[:2])
    assert len(by_source) == 16 and all(len(clients_seen) == 1 for clients_seen in by_source.values())
    assert stats["udp.u.downstream_sess_total"] == 16


#: what a session's log line may hold, as Envoy 1.40 fills it in (the fields it leaves empty included)
SESSION_LOG_FIELDS = {
    "downstream": "%DOWNSTREAM_REMOTE_ADDRESS%", "local": "%DOWNSTREAM_LOCAL_ADDRESS%", "upstream": "%UPSTREAM_HOST%",
    "upstream_local": "%UPSTREAM_LOCAL_ADDRESS%", "cluster": "%UPSTREAM_CLUSTER%", "received": "%BYTES_RECEIVED%",
    "sent": "%BYTES_SENT%", "flags": "%RESPONSE_FLAGS%", "code": "%RESPONSE_CODE%", "protocol": "%PROTOCOL%",
    "duration": "%DURATION%"}


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_session_access_log_when_a_session_ends(implementation: str, echoes: list[UdpEcho], clients: Any,
                                                tmp_path: Path) -> None:
    json_log, text_log = tmp_path / "sessions.json", tmp_path / "sessions.log"
    access_log = [
        {"name": "json", "typed_config": {"@type": FILE_LOG_TYPE, "path": str(json_log),
                                          "log_format": {"json_format": SESSION_LOG_FIELDS}}},
        {"name": "default", "typed_config": {"@type": FILE_LOG_TYPE, "path": str(text_log)}}]
    launcher = ProxyLauncher(tmp_path)
    try:
        # long enough that a stall of this busy machine between the two datagrams does not end the session
        proxy, port = start(launcher, implementation, echoes, idle_timeout="2s", access_log=access_log)
        client = clients()
        assert exchange(client, port, b"12345") == b"a:12345"
        assert exchange(client, port, b"1234567") == b"a:1234567"
        assert read_json_lines(json_log, 0, timeout=0.2) == []  # nothing while the session lives
        [line] = read_json_lines(json_log, 1, timeout=20)
        text = wait_until(lambda: text_log.read_text() if text_log.exists() else "", timeout=10)
    finally:
        launcher.close()
    assert 1900 <= int(line.pop("duration")) < 20000  # the idle timeout, give or take a timer tick
    client_port, (upstream_ip, upstream_port) = client.getsockname()[1], line.pop("upstream_local").rsplit(":", 1)
    assert [source for source, _ in echoes[0].seen] == [(upstream_ip, int(upstream_port))] * 2  # the session's socket
    assert line == {"downstream": f"127.0.0.1:{client_port}", "local": f"127.0.0.1:{port}",
                    "upstream": f"127.0.0.1:{echoes[0].port}", "cluster": None, "received": 12, "sent": 16,
                    "flags": "-", "code": 0, "protocol": None}
    assert re.fullmatch(r'\[[-0-9T:.]+Z\] "- - -" 0 - 12 16 \d+ - "-" "-" "-" "-" "127\.0\.0\.1:%d"\n'
                        % echoes[0].port, text), text


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
@pytest.mark.parametrize("policy", [{"source_ip": True}, {"key": "rtp-session"}])
def test_hash_policies_keep_sessions_on_one_host(implementation: str, policy: dict[str, Any], echoes: list[UdpEcho],
                                                 clients: Any, tmp_path: Path) -> None:
    """A RING_HASH cluster given the client's IP (every client here is 127.0.0.1) or a fixed key: every session of
    every client lands on one host, where round robin would spread them."""
    launcher = ProxyLauncher(tmp_path)
    try:
        cluster = static_cluster("echo", [echoes[0].port, echoes[1].port], lb_policy="RING_HASH")
        proxy, port = start(launcher, implementation, echoes, cluster=cluster, hash_policies=[policy])
        answers = {exchange(clients(), port, b"x")[:2] for _ in range(6)}
        stats = proxy.stats()
    finally:
        launcher.close()
    assert len(answers) == 1 and stats["udp.u.downstream_sess_total"] == 6


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_one_socket_without_reuse_port_takes_one_worker(implementation: str, echoes: list[UdpEcho],
                                                        tmp_path: Path) -> None:
    """enable_reuse_port false: one socket, which workers would take turns at, splitting sessions; with two workers
    both proxies refuse to start, with Envoy's words."""
    launcher = ProxyLauncher(tmp_path)
    try:
        listener = {**udp_listener(free_port()), "enable_reuse_port": False}
        with pytest.raises((RuntimeError, TimeoutError)) as info:
            launcher.start([listener], [static_cluster("echo", [echoes[0].port])], implementation=implementation,
                           concurrency=2)
    finally:
        launcher.close()
    assert "Listening on UDP when concurrency is > 1 without the SO_REUSEPORT socket option results in unstable " \
           "packet proxying. Configure the reuse_port listener option or set concurrency = 1." in str(info.value)


def _route(cluster: str) -> dict[str, Any]:
    return {"action": {"name": "route", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route", "cluster": cluster}}}


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_a_route_matcher_picks_the_cluster_by_source(implementation: str, echoes: list[UdpEcho], clients: Any,
                                                     launcher: ProxyLauncher) -> None:
    """Envoy's udp-proxy-router shape: source IP 127.0.0.1, then the source port picks a cluster (exact map),
    other ports take on_no_match's; a source IP no predicate matches is routed nowhere (no_route)."""
    routed_client, other_client = clients(), clients()
    routed_port = routed_client.getsockname()[1]
    matcher = {"matcher_list": {"matchers": [{
        "predicate": {"single_predicate": {"input": {"name": "envoy.matching.inputs.source_ip", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput"}},
            "value_match": {"exact": "127.0.0.1"}}},
        "on_match": {"matcher": {"matcher_tree": {
            "input": {"name": "envoy.matching.inputs.source_port", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourcePortInput"}},
            "exact_match_map": {"map": {str(routed_port): _route("b")}}},
            "on_no_match": _route("a")}}}]}}
    port = free_port()
    listener = udp_listener(port, matcher=matcher)
    del listener["listener_filters"][0]["typed_config"]["cluster"]
    proxy = launcher.start([listener], [static_cluster("a", [echoes[0].port]), static_cluster("b", [echoes[1].port])],
                           implementation=implementation)
    assert exchange(routed_client, port, b"x") == b"b:x"
    assert exchange(other_client, port, b"y") == b"a:y"
    stats = proxy.stats()
    assert stats["udp.u.downstream_sess_total"] == 2 and stats.get("udp.u.downstream_sess_no_route", 0) == 0
    unrouted = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        unrouted.bind(("127.0.0.2", 0))
        unrouted.sendto(b"z", ("127.0.0.1", port))
        wait_until(lambda: proxy.stats().get("udp.u.downstream_sess_no_route") == 1, timeout=10)
    finally:
        unrouted.close()
