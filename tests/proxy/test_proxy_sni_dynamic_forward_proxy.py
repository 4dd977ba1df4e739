"""Integration: Envoy's SNI dynamic forward proxy network filter through pylon and Envoy 1.40 alike.

A listener with `tls_inspector` runs `envoy.filters.network.sni_dynamic_forward_proxy` before a tcp_proxy to a
dynamic forward proxy cluster: the connection's SNI is resolved through the DNS cache (the connection waits for
the answer), and the tcp_proxy connects to that name's host on the filter's `port_value`. The proxy does not
terminate TLS: the client's handshake is with the local TLS server, whose certificate it checks for the name.

Names resolved: `localhost` and `*.localhost` (c-ares answers them with loopback addresses, RFC 6761) and
`.invalid` names, which never resolve: nothing here resolves or reaches a name outside this machine. One listener
per scenario, each with a cache of its own so that its stats are its own. Every expectation holds for both proxies.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    TCP_PROXY_TYPE, ProxyLauncher, RunningProxy, json_access_log, read_json_lines,
)
from tests.proxy.upstreams import TlsServer

SNI_FILTER_CONFIG = "type.googleapis.com/envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig"
CLUSTER_CONFIG = "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig"
TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}
#: Refreshes out of the way (TTL-0 answers would otherwise be resolved again every 5 s): stats stay exact.
QUIET = {"dns_lookup_family": "V4_ONLY", "dns_min_refresh_rate": "3600s", "dns_refresh_rate": "3600s"}
SCENARIOS: dict[str, dict[str, Any]] = {
    "names": QUIET,
    "small": {**QUIET, "max_hosts": 1},
    "tight": {**QUIET, "dns_cache_circuit_breaker": {"max_pending_requests": 0}},
}
LOG_FIELDS = {"sni": "%REQUESTED_SERVER_NAME%", "details": "%CONNECTION_TERMINATION_DETAILS%"}


def scenario_listener(name: str, port: int, server_port: int, log: Path) -> dict[str, Any]:
    tcp = {"@type": TCP_PROXY_TYPE, "stat_prefix": name, "cluster": name,
           "access_log": json_access_log(log, **LOG_FIELDS)}
    sni = {"@type": SNI_FILTER_CONFIG, "dns_cache_config": {"name": name, **SCENARIOS[name]}, "port_value": server_port}
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "listener_filters": [TLS_INSPECTOR],
            "filter_chains": [{"filters": [
                {"name": "envoy.filters.network.sni_dynamic_forward_proxy", "typed_config": sni},
                {"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}]}]}


def scenario_cluster(name: str) -> dict[str, Any]:
    return {"name": name, "connect_timeout": "1s", "lb_policy": "CLUSTER_PROVIDED", "cluster_type": {
        "name": "envoy.clusters.dynamic_forward_proxy", "typed_config": {
            "@type": CLUSTER_CONFIG, "dns_cache_config": {"name": name, **SCENARIOS[name]}}}}


@dataclass
class Front:
    proxy: RunningProxy
    server: TlsServer
    logs: dict[str, Path]

    def hello(self, listener: str, sni: str | None) -> str | None:
        """A TLS connection through `listener` with `sni` (None: none), verifying the server's certificate for
        it: what the server answered, or None when the proxy closed the connection."""
        context = ssl.create_default_context(cafile=self.server.ca_file)
        context.check_hostname = sni is not None
        if sni is None:
            context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.proxy.ports[listener]), timeout=10) as raw:
            try:
                with context.wrap_socket(raw, server_hostname=sni) as tls:
                    tls.sendall(b"hello")
                    return tls.recv(1024).decode()
            except (ssl.SSLError, ConnectionError):
                return None

    def cache_stats(self, name: str) -> dict[str, int]:
        prefix = f"dns_cache.{name}."
        return {k[len(prefix):]: v for k, v in self.proxy.stats().items() if k.startswith(prefix)}

    def log(self, listener: str, count: int) -> list[dict[str, Any]]:
        return read_json_lines(self.logs[listener], count)


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def front(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    directory = tmp_path_factory.mktemp(f"sni-dfp-{request.param}")
    server = TlsServer(directory)
    launcher = ProxyLauncher(directory)
    try:
        logs = {name: directory / f"{name}.log" for name in SCENARIOS}
        listeners = [scenario_listener(name, free_port(), server.port, logs[name]) for name in SCENARIOS]
        proxy = launcher.start(listeners, [scenario_cluster(name) for name in SCENARIOS],
                               implementation=request.param)
        yield Front(proxy, server, logs)
    finally:
        launcher.close()
        server.close()


def test_the_sni_takes_the_connection_to_its_host_on_the_filters_port(front: Front) -> None:
    for sni in ("localhost", "a.localhost", "localhost"):  # the third from the cache
        assert front.hello("names", sni) == f"{sni} hello"  # the server's certificate, checked for the name
    assert [(e["sni"], e["cluster"], e["flags"]) for e in front.log("names", 3)] == [
        ("localhost", "names", "-"), ("a.localhost", "names", "-"), ("localhost", "names", "-")]
    stats = front.cache_stats("names")
    assert (stats["dns_query_attempt"], stats["dns_query_success"], stats["host_added"],
            stats["host_address_changed"], stats["num_hosts"]) == (2, 2, 2, 2, 2)
    proxy = front.proxy.stats()
    assert (proxy["cluster.names.membership_total"], proxy["cluster.names.upstream_cx_total"],
            proxy["tcp.names.downstream_cx_total"]) == (2, 3, 3)


def test_a_name_that_does_not_resolve_gets_the_connection_closed(front: Front) -> None:
    """The filter lets the connection go on once the answer is in; tcp_proxy finds no host for the name."""
    for _ in range(2):  # the second from the cache: no new query
        assert front.hello("names", "nowhere.invalid") is None
    assert [(e["sni"], e["cluster"], e["flags"]) for e in front.log("names", 5)[3:]] == [
        ("nowhere.invalid", "names", "UH")] * 2
    stats = front.cache_stats("names")
    assert (stats["dns_query_attempt"], stats["dns_query_success"], stats["dns_query_failure"],
            stats["host_added"], stats["num_hosts"]) == (3, 3, 0, 3, 3)  # no records: a completed query
    proxy = front.proxy.stats()
    assert (proxy["cluster.names.membership_total"], proxy["cluster.names.upstream_cx_none_healthy"]) == (2, 2)


def test_without_sni_the_filter_lets_the_connection_go_on_to_no_host(front: Front) -> None:
    assert front.hello("names", None) is None
    assert [(e["sni"], e["flags"]) for e in front.log("names", 6)[5:]] == [(None, "UH")]
    assert front.cache_stats("names")["dns_query_attempt"] == 3  # nothing loaded
    assert front.proxy.stats()["cluster.names.upstream_cx_none_healthy"] == 3


def test_a_full_cache_and_too_many_waiting_connections_are_closed(front: Front) -> None:
    assert front.hello("small", "localhost") == "localhost hello"
    assert front.hello("small", "b.localhost") is None
    assert front.hello("small", "localhost") == "localhost hello"  # a name in the cache still goes
    assert front.hello("tight", "localhost") is None
    assert [(e["sni"], e["flags"]) for e in front.log("small", 3)] == [
        ("localhost", "-"), ("b.localhost", "-"), ("localhost", "-")]
    assert [(e["sni"], e["flags"]) for e in front.log("tight", 1)] == [("localhost", "-")]
    small, tight = front.cache_stats("small"), front.cache_stats("tight")
    assert (small["host_overflow"], small["num_hosts"]) == (1, 1)
    assert (tight["dns_rq_pending_overflow"], tight["dns_query_attempt"], tight["circuit_breakers.rq_pending_remaining"],
            tight["circuit_breakers.rq_pending_open"]) == (1, 0, 0, 0)
    proxy = front.proxy.stats()
    assert (proxy["cluster.small.upstream_cx_none_healthy"], proxy["cluster.tight.upstream_cx_none_healthy"],
            proxy["tcp.small.downstream_cx_total"], proxy["tcp.tight.downstream_cx_total"]) == (0, 0, 3, 1)
