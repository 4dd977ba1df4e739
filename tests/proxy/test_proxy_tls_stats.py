"""Integration: a listener's `ssl.*` stats, through pylon and Envoy alike.

Operators watch these to know whether mTLS works: completed handshakes with their version and cipher,
and each kind of refused peer - no certificate, a certificate from a CA the listener does not trust.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from pylon.identity.certs import TestPki, make_test_pki
from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, wait_until
from tests.proxy.test_proxy_tls import _file, _tls_listener


def handshake(port: int, context: ssl.SSLContext) -> bool:
    """One TLS connection with one request; True when the proxy answered."""
    try:
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=3),
                                 server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            return tls.recv(1024).startswith(b"HTTP/1.1")
    except (ssl.SSLError, OSError):
        return False


def client(pki: TestPki, certificate: Any = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    if certificate is not None:
        context.load_cert_chain(certificate.cert, certificate.key)
    return context


@pytest.fixture
def listener_stats(implementation: str, tmp_path: Path) -> Any:
    pki, stranger = make_test_pki(tmp_path / "pki"), make_test_pki(tmp_path / "other")
    listener = _tls_listener("mtls", pki, require_client_certificate=True,
                             common={"validation_context": {"trusted_ca": _file(pki.ca.cert)}})
    listener["address"]["socket_address"]["port_value"] = port = free_port()
    listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"] = [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]
    launcher = ProxyLauncher(tmp_path)
    try:
        proxy = launcher.start([listener], [], implementation=implementation)
        yield proxy, port, pki, stranger
    finally:
        launcher.close()


def ssl_counters(proxy: RunningProxy, port: int) -> dict[str, int]:
    prefix = f"listener.127.0.0.1_{port}.ssl."
    return {name[len(prefix):]: value for name, value in proxy.stats().items() if name.startswith(prefix) and value}


def test_handshakes_and_refusals_are_counted_by_kind(listener_stats: Any) -> None:
    proxy, port, pki, stranger = listener_stats
    assert handshake(port, client(pki, pki.client))
    assert not handshake(port, client(pki))  # no client certificate
    assert not handshake(port, client(pki, stranger.client))  # a certificate from a CA the listener does not trust

    def settled() -> bool:
        counters = ssl_counters(proxy, port)
        return counters.get("fail_verify_no_cert") == 1 and counters.get("fail_verify_error") == 1

    assert wait_until(settled), ssl_counters(proxy, port)
    counters = ssl_counters(proxy, port)
    ciphers = {name: value for name, value in counters.items() if name.startswith("ciphers.")}
    assert counters["handshake"] == 1 and counters["versions.TLSv1.3"] == 1 and list(ciphers.values()) == [1]
    assert "fail_verify_san" not in counters and "no_certificate" not in counters
