"""Integration: the proxy_protocol listener filter, through pylon and Envoy 1.40 alike.

A client standing in for a load balancer sends a PROXY protocol header (v1 text or v2 binary) before its HTTP
request. The header's source becomes the client: the upstream sees it in x-forwarded-for (use_remote_address), and
an RBAC network filter's `source_ip` matches it while `direct_remote_ip` still sees the socket's peer (the
balancer). Without a header, with a disallowed version or a malformed one, the connection is closed, each counted
under Envoy's stat names.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pylon.identity.certs import issue_leaf, make_ca, write_pem_files
from tests.conftest import free_port
from tests.proxy.conftest import RunningProxy, http_listener, route, static_cluster
from tests.proxy.test_proxy_filter_chains import http_chain
from tests.proxy.upstreams import Upstream

PROXY_PROTOCOL_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"
NETWORK_RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
CLIENT = ("192.0.2.7", 5555)


def v1(port: int, source: tuple[str, int] = CLIENT) -> bytes:
    return f"PROXY TCP4 {source[0]} 127.0.0.1 {source[1]} {port}\r\n".encode()


def v2(port: int, source: tuple[str, int] = CLIENT, command: int = 1, tlvs: bytes = b"") -> bytes:
    if command == 0:  # LOCAL: a balancer's own connection (a health check), no addresses
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    body = (ipaddress.IPv4Address(source[0]).packed + ipaddress.IPv4Address("127.0.0.1").packed
            + struct.pack("!HH", source[1], port) + tlvs)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def exchange(port: int, head: bytes) -> bytes:
    """Send `head` then a GET; everything the proxy answers until it closes (b"" if it closed at once)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(head + b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        except OSError:
            return b""
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def start(run_proxy: Callable[..., RunningProxy], implementation: str, upstream: Upstream,
          network_filters: list[dict[str, Any]] | None = None, **filter_config: Any) -> RunningProxy:
    listener = http_listener("main", free_port(), [route("/", "up")], use_remote_address=True)
    listener["listener_filters"] = [{"name": "envoy.filters.listener.proxy_protocol",
                                     "typed_config": {"@type": PROXY_PROTOCOL_TYPE, **filter_config}}]
    if network_filters:
        listener["filter_chains"][0]["filters"][:0] = network_filters
    return run_proxy([listener], [static_cluster("up", [upstream.port])], implementation=implementation)


def stats_of(proxy: RunningProxy, prefix: str = "proxy_proto.") -> dict[str, int]:
    return {name: value for name, value in proxy.stats().items()
            if (name.startswith(prefix) or name == "downstream_cx_proxy_proto_error") and value}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_header_s_source_is_the_client(implementation: str, run_proxy: Callable[..., RunningProxy],
                                           upstream: Upstream, version: str) -> None:
    proxy = start(run_proxy, implementation, upstream)
    port = proxy.ports["main"]
    head = v1(port) if version == "v1" else v2(port, tlvs=b"\x04\x00\x02hi")  # a TLV, skipped
    assert exchange(port, head).startswith(b"HTTP/1.1 200")
    (seen,) = upstream.requests
    assert seen["headers"]["x-forwarded-for"] == CLIENT[0] and seen["path"] == "/x"
    assert stats_of(proxy) == {f"proxy_proto.versions.{version}.found": 1}


@pytest.mark.parametrize(("head", "served"), [
    (b"PROXY UNKNOWN\r\n", True),  # the socket's own addresses stand
    (None, True),  # v2 LOCAL
])  # fmt: skip
def test_unknown_and_local_keep_the_socket_s_addresses(implementation: str, run_proxy: Callable[..., RunningProxy],
                                                       upstream: Upstream, head: bytes | None, served: bool) -> None:
    proxy = start(run_proxy, implementation, upstream)
    port = proxy.ports["main"]
    assert exchange(port, head if head is not None else v2(port, command=0)).startswith(b"HTTP/1.1 200")
    (seen,) = upstream.requests
    assert seen["headers"]["x-forwarded-for"] != CLIENT[0]


@pytest.mark.parametrize(("config", "head", "counted"), [
    ({}, b"", {"proxy_proto.not_found_disallowed": 1, "downstream_cx_proxy_proto_error": 1}),
    ({"disallowed_versions": ["V1"]}, "v1", {"proxy_proto.versions.v1.found": 1, "proxy_proto.versions.v1.disallowed": 1}),
    ({"stat_prefix": "front", "disallowed_versions": ["V2"]}, "v2",
     {"proxy_proto.front.versions.v2.found": 1, "proxy_proto.front.versions.v2.disallowed": 1}),
    ({}, b"PROXY TCP4 999.0.2.7 127.0.0.1 5555 80\r\n",
     {"proxy_proto.versions.v1.error": 1, "downstream_cx_proxy_proto_error": 1}),
    ({}, b"PROXY TCP6 192.0.2.7 127.0.0.1 5555 80\r\n",
     {"proxy_proto.versions.v1.error": 1, "downstream_cx_proxy_proto_error": 1}),
    ({}, b"PROXY TCP4 0.0.0.0 127.0.0.1 5555 80\r\n",
     {"proxy_proto.versions.v1.error": 1, "downstream_cx_proxy_proto_error": 1}),
    ({}, V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),
     {"proxy_proto.versions.v2.error": 1, "downstream_cx_proxy_proto_error": 1}),
    ({}, V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),
     {"proxy_proto.versions.v2.error": 1, "downstream_cx_proxy_proto_error": 1}),
])  # fmt: skip
def test_refused_connections_are_closed_and_counted(implementation: str, run_proxy: Callable[..., RunningProxy],
                                                    upstream: Upstream, config: dict[str, Any], head: Any,
                                                    counted: dict[str, int]) -> None:
    proxy = start(run_proxy, implementation, upstream, **config)
    port = proxy.ports["main"]
    head = v1(port) if head == "v1" else v2(port) if head == "v2" else head
    assert exchange(port, head) == b""
    assert not upstream.requests
    assert stats_of(proxy) == counted


def test_allowed_without_a_header(implementation: str, run_proxy: Callable[..., RunningProxy],
                                  upstream: Upstream) -> None:
    proxy = start(run_proxy, implementation, upstream, allow_requests_without_proxy_protocol=True)
    port = proxy.ports["main"]
    assert exchange(port, b"").startswith(b"HTTP/1.1 200")
    assert exchange(port, v2(port)).startswith(b"HTTP/1.1 200")
    assert [r["headers"]["x-forwarded-for"] == CLIENT[0] for r in upstream.requests] == [False, True]
    assert stats_of(proxy) == {"proxy_proto.not_found_allowed": 1, "proxy_proto.versions.v2.found": 1}


@pytest.mark.parametrize(("principal", "allowed"), [
    ({"source_ip": {"address_prefix": "192.0.2.0", "prefix_len": 24}}, True),
    ({"direct_remote_ip": {"address_prefix": "192.0.2.0", "prefix_len": 24}}, False),
    ({"direct_remote_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}}, True),
    ({"source_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}}, False),
])  # fmt: skip
def test_rbac_tells_the_header_s_source_from_the_direct_peer(
        implementation: str, run_proxy: Callable[..., RunningProxy], upstream: Upstream,
        principal: dict[str, Any], allowed: bool) -> None:
    """The security check: a PROXY header must not pass for the socket's peer (direct_remote_ip), and the
    header's source is what source_ip matches."""
    rbac = {"name": "envoy.filters.network.rbac", "typed_config": {
        "@type": NETWORK_RBAC_TYPE, "stat_prefix": "pp", "rules": {"action": "ALLOW", "policies": {
            "p": {"permissions": [{"any": True}], "principals": [principal]}}}}}
    proxy = start(run_proxy, implementation, upstream, network_filters=[rbac])
    port = proxy.ports["main"]
    assert exchange(port, v1(port)).startswith(b"HTTP/1.1 200") == allowed


def test_a_tls_chain_is_chosen_after_the_header(implementation: str, run_proxy: Callable[..., RunningProxy],
                                               tmp_path: Path) -> None:
    """proxy_protocol before tls_inspector: the header is taken off the stream, so the inspector reads the
    ClientHello that follows it (its SNI picks the TLS chain) and the handshake sees no stray bytes."""
    ca = make_ca()
    pem = write_pem_files(tmp_path, "a", issue_leaf(ca, common_name="a", dns_names=["a.example"]), ca)
    port = free_port()
    listener = {"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "listener_filters": [
                    {"name": "pp", "typed_config": {"@type": PROXY_PROTOCOL_TYPE}},
                    {"name": "tls", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
                "filter_chains": [http_chain("tls-chain", {"server_names": ["a.example"]}, tls=pem),
                                  http_chain("plain-chain")]}
    run_proxy([listener], [], implementation=implementation)
    context = ssl.create_default_context(cafile=str(pem.ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(v1(port))
        with context.wrap_socket(raw, server_hostname="a.example") as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"tls-chain")
    assert exchange(port, v1(port)).endswith(b"plain-chain")
