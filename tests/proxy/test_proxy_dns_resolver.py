"""Integration: `typed_dns_resolver_config` (c-ares) on DNS clusters and on the dynamic forward proxy's cache,
through pylon and Envoy 1.40 alike, against a name server this test runs on loopback.

The name `svc.pylon.test` exists only on that server, so a request that reaches the upstream proves the
configured resolver was asked; `use_tcp_for_dns_lookups` shows in the transport the server saw.
"""

from __future__ import annotations

import socketserver
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import dns.message
import dns.rdatatype
import dns.rrset
import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ROUTER_TYPE, RunningProxy, http_listener, route, wait_until
from tests.proxy.upstreams import Upstream

NAME = "svc.pylon.test"
CARES = "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
DFP_FILTER = "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig"
DFP_CLUSTER = "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig"


class NameServer:
    """Answers A queries for NAME with 127.0.0.1 (others: NXDOMAIN), over UDP and TCP on one port; `seen` lists
    (transport, name) per query."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.port = free_port()
        owner = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                sock.sendto(owner.answer("udp", data), self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                while header := self.request.recv(2):
                    (length,) = struct.unpack("!H", header)
                    data = b""
                    while len(data) < length:
                        data += self.request.recv(length - len(data))
                    reply = owner.answer("tcp", data)
                    self.request.sendall(struct.pack("!H", len(reply)) + reply)

        self.udp = socketserver.ThreadingUDPServer(("127.0.0.1", self.port), Udp)
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Tcp)
        for server in (self.udp, self.tcp):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def answer(self, transport: str, data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        question = query.question[0]
        self.seen.append((transport, str(question.name).rstrip(".")))
        reply = dns.message.make_response(query)
        if str(question.name).rstrip(".") != NAME:
            reply.set_rcode(3)  # NXDOMAIN
        elif question.rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(question.name, 30, "IN", "A", "127.0.0.1"))
        return reply.to_wire()

    def close(self) -> None:
        for server in (self.udp, self.tcp):
            server.shutdown()
            server.server_close()


@pytest.fixture
def name_server() -> Iterator[NameServer]:
    server = NameServer()
    yield server
    server.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def resolver(server: NameServer, **options: Any) -> dict[str, Any]:
    return {"name": "envoy.network.dns_resolver.cares", "typed_config": {
        "@type": CARES, "resolvers": [{"socket_address": {"address": "127.0.0.1", "port_value": server.port}}],
        **options}}


@pytest.mark.parametrize("tcp", [False, True])
def test_a_dns_cluster_asks_the_configured_resolver(implementation: str, run_proxy: Callable[..., RunningProxy],
                                                    name_server: NameServer, upstream: Upstream, tcp: bool) -> None:
    options = {"dns_resolver_options": {"use_tcp_for_dns_lookups": True, "no_default_search_domain": True}} if tcp else {}
    cluster = {"name": "named", "connect_timeout": "1s", "type": "STRICT_DNS", "dns_lookup_family": "V4_ONLY",
               "load_assignment": {"cluster_name": "named", "endpoints": [{"lb_endpoints": [{"endpoint": {
                   "address": {"socket_address": {"address": NAME, "port_value": upstream.port}}}}]}]},
               "typed_dns_resolver_config": resolver(name_server, **options)}
    proxy = run_proxy([http_listener("main", free_port(), [route("/", "named")])], [cluster],
                      implementation=implementation)
    wait_until(lambda: httpx.get(proxy.url("main", "/x")).status_code == 200, timeout=15)
    assert upstream.requests and (("tcp" if tcp else "udp"), NAME) in name_server.seen
    assert all(transport == ("tcp" if tcp else "udp") for transport, _ in name_server.seen)


def test_the_dynamic_forward_proxy_cache_asks_the_configured_resolver(
        implementation: str, run_proxy: Callable[..., RunningProxy], name_server: NameServer,
        upstream: Upstream) -> None:
    cache = {"name": "cache", "dns_lookup_family": "V4_ONLY", "typed_dns_resolver_config": resolver(name_server)}
    listener = http_listener("main", free_port(), [route("/", "dfp")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
        {"name": "envoy.filters.http.dynamic_forward_proxy", "typed_config": {
            "@type": DFP_FILTER, "dns_cache_config": cache}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
    cluster = {"name": "dfp", "connect_timeout": "1s", "lb_policy": "CLUSTER_PROVIDED", "cluster_type": {
        "name": "envoy.clusters.dynamic_forward_proxy", "typed_config": {
            "@type": DFP_CLUSTER, "dns_cache_config": cache}}}
    proxy = run_proxy([listener], [cluster], implementation=implementation)
    reply = httpx.get(proxy.url("main", "/x"), headers={"host": f"{NAME}:{upstream.port}"}, timeout=10)
    assert reply.status_code == 200 and upstream.requests
    assert ("udp", NAME) in name_server.seen
    unknown = httpx.get(proxy.url("main", "/x"), headers={"host": f"other.pylon.test:{upstream.port}"}, timeout=10)
    assert unknown.status_code == 503


def test_resolver_config_errors() -> None:
    from pylon.config.envoy import TypedDnsResolverConfig, convert

    with pytest.raises(Exception, match="udp_max_queries"):
        convert({"name": "c", "typed_config": {"@type": CARES, "udp_max_queries": 10}}, TypedDnsResolverConfig)
    with pytest.raises(Exception, match="unsupported DNS resolver"):
        convert({"name": "g", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.getaddrinfo.v3."
                     "GetAddrInfoDnsResolverConfig"}}, TypedDnsResolverConfig)


