"""Integration: a tcp_proxy behind a TLS listener that validates client certificates by SAN.

The listener requires a client certificate from a trusted CA and accepts only the URI SAN
`ALLOWED` (`match_typed_subject_alt_names`). A client whose certificate carries it gets its
bytes relayed to a plain TCP upstream; a client with a certificate from the same CA but another
SAN must get nothing through: the connection is closed and the upstream never sees it.
Run through pylon and through Envoy 1.40, the reference.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pylon.identity.certs import KeyType, PemFiles, Usage, issue_leaf, make_ca, write_pem_files
from tests.conftest import free_port
from tests.proxy.conftest import (
    DOWNSTREAM_TLS_TYPE, ProxyLauncher, RunningProxy, static_cluster, tcp_listener, wait_until,
)
from tests.proxy.upstreams import TcpEcho

ALLOWED = "spiffe://cluster.local/ns/default/sa/allowed"
OTHER = "spiffe://cluster.local/ns/default/sa/other"


class RecordingEcho(TcpEcho):
    """A TCP echo server that also keeps every byte it received and counts the connections still open."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.active = 0
        self.lock = threading.Lock()
        super().__init__()

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        with self.lock:
            self.active += 1
        try:
            with conn:
                while True:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    with self.lock:
                        self.received += data
                    conn.sendall(data)
        finally:
            with self.lock:
                self.active -= 1


@dataclass
class Gateway:
    implementation: str
    proxy: RunningProxy
    port: int
    upstream: RecordingEcho
    clients: dict[str, PemFiles]


@pytest.fixture
def gateway(implementation: str, tmp_path: Path) -> Iterator[Gateway]:
    ca = make_ca()
    server = write_pem_files(tmp_path, "server", issue_leaf(
        ca, common_name="localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"]), ca)
    clients = {
        uri: write_pem_files(tmp_path, name, issue_leaf(ca, uris=[uri], usage=Usage.CLIENT,
                                                         key_type=KeyType.ECDSA_P256), ca)
        for name, uri in (("allowed", ALLOWED), ("other", OTHER))
    }
    port = free_port()
    listener = tcp_listener("tls_tcp", port, "echo")
    listener["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS_TYPE, "require_client_certificate": True, "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(server.cert)},
                                  "private_key": {"filename": str(server.key)}}],
            "validation_context": {
                "trusted_ca": {"filename": str(server.ca)},
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": ALLOWED}}]}}}}
    upstream, launcher = RecordingEcho(), ProxyLauncher(tmp_path)
    try:
        proxy = launcher.start([listener], [static_cluster("echo", [upstream.port])], implementation=implementation)
        yield Gateway(implementation, proxy, port, upstream, clients)
    finally:
        launcher.close()
        upstream.close()


@dataclass
class Exchange:
    handshake_error: str | None  # the client's handshake failed (TLS 1.2 style: the alert came during it)
    data: bytes  # what came back
    ended: str  # how reading stopped: "eof", "reset", "ssl: ...", or "timeout" (the peer kept it open)


def exchange(gateway: Gateway, san: str, payload: bytes, timeout: float = 3.0) -> Exchange:
    """Connect with the client certificate carrying `san`, send `payload`, read until `len(payload)` bytes
    came back or the connection ended."""
    pem = gateway.clients[san]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pem.ca)
    ctx.load_cert_chain(pem.cert, pem.key)
    raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout)
    try:
        try:
            sock = ctx.wrap_socket(raw, server_hostname="localhost")
        except (ssl.SSLError, OSError) as exc:
            return Exchange(f"{type(exc).__name__}: {exc}", b"", "handshake")
        with sock:
            data = b""
            deadline = time.monotonic() + timeout
            try:
                sock.sendall(payload)
                while len(data) < len(payload):
                    sock.settimeout(max(0.01, deadline - time.monotonic()))
                    chunk = sock.recv(65536)
                    if not chunk:
                        return Exchange(None, data, "eof")
                    data += chunk
            except socket.timeout:
                return Exchange(None, data, "timeout")
            except ssl.SSLError as exc:
                return Exchange(None, data, f"ssl: {exc}")
            except (ConnectionResetError, BrokenPipeError):
                return Exchange(None, data, "reset")
            return Exchange(None, data, "complete")
    finally:
        raw.close()


def test_allowed_san_gets_bytes_through(gateway: Gateway) -> None:
    assert exchange(gateway, ALLOWED, b"hello through tls") == Exchange(None, b"hello through tls", "complete")
    assert gateway.upstream.connections == 1
    assert bytes(gateway.upstream.received) == b"hello through tls"
    assert wait_until(lambda: gateway.proxy.stats().get("tcp.tls_tcp.downstream_cx_rx_bytes_total") == 17)


def test_other_san_gets_no_bytes_through(gateway: Gateway) -> None:
    refused = exchange(gateway, OTHER, b"smuggled bytes")
    # Closed without a byte back: Envoy sends a certificate_unknown alert (the client's TLS 1.3
    # handshake has already completed, so recv raises it), pylon closes the connection.
    assert refused.data == b""
    assert refused.handshake_error is not None or refused.ended in ("eof", "reset") or refused.ended.startswith("ssl:")
    # An allowed client afterwards still gets through: the proxy is serving, and the refused
    # connection, had it been relayed, would have reached the upstream first.
    assert exchange(gateway, ALLOWED, b"after") == Exchange(None, b"after", "complete")
    assert bytes(gateway.upstream.received) == b"after"
    # Envoy's tcp_proxy connects upstream as soon as a downstream connection is accepted (before the
    # TLS handshake, hence before the SAN check) and closes it, unused, when the check fails; pylon
    # connects only once the handshake and the SAN check have passed.
    assert gateway.upstream.connections == {"pylon": 1, "envoy": 2}[gateway.implementation]
    assert wait_until(lambda: gateway.upstream.active == 0), "an upstream connection was left open"


def test_san_failure_counted_as_fail_verify_san(gateway: Gateway) -> None:
    prefix = f"listener.127.0.0.1_{gateway.port}."
    names = [prefix + "ssl.fail_verify_san", prefix + "ssl.handshake", prefix + "downstream_cx_total",
             "tcp.tls_tcp.downstream_cx_total"]
    before = {name: gateway.proxy.stats().get(name, 0) for name in names}

    def grown() -> list[int]:
        stats = gateway.proxy.stats()
        return [stats.get(name, 0) - before[name] for name in names]

    assert exchange(gateway, OTHER, b"smuggled bytes").data == b""
    # A refused peer is a connection (counted, as Envoy counts it) whose handshake never counts as done.
    assert wait_until(lambda: grown() == [1, 0, 1, 1], timeout=2.0), grown()
    assert exchange(gateway, ALLOWED, b"ok").data == b"ok"
    assert wait_until(lambda: grown() == [1, 1, 2, 2], timeout=2.0), grown()
