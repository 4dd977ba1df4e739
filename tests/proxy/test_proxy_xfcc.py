"""Integration: x-forwarded-client-cert as `forward_client_cert_details` says, through pylon and Envoy alike.

Every mode on an mTLS listener and on a plaintext one, each request carrying a forged header
(`By=forged;Hash=0`). The default, SANITIZE, must drop it: an upstream that trusts XFCC would
otherwise take the client's word for its identity. The element this hop writes is spelled as
Envoy 1.40 writes it (By per URI SAN of the proxy's certificate, Hash, Cert, Subject, URI, DNS).
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pylon.identity.certs import KeyType, Usage, issue_leaf, make_ca, write_pem_files
from tests.conftest import free_port
from tests.proxy.conftest import DOWNSTREAM_TLS_TYPE, ProxyLauncher, http_listener, route, static_cluster
from tests.proxy.upstreams import Upstream

MODES = ("SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY")
FORGED = "By=forged;Hash=0"
PROXY_URIS = ["spiffe://cluster.local/ns/istio-system/sa/gateway", "spiffe://example.org/second"]
CLIENT_URIS = ["spiffe://cluster.local/ns/default/sa/client", "spiffe://example.org/two"]
CLIENT_DNS = ["a.example", "b.example"]


class Setup:
    def __init__(self, ports: dict[tuple[str, bool], int], up: Upstream, client_ctx: ssl.SSLContext,
                 element: str) -> None:
        self.ports, self.up, self.client_ctx, self.element = ports, up, client_ctx, element

    def forwarded(self, mode: str, mtls: bool) -> str | None:
        """The x-forwarded-client-cert the upstream got for a request carrying the forged one."""
        port = self.ports[mode, mtls]
        url = f"https://localhost:{port}/" if mtls else f"http://127.0.0.1:{port}/"
        reply = httpx.get(url, verify=self.client_ctx, headers={"x-forwarded-client-cert": FORGED}, timeout=5)
        assert reply.status_code == 200
        return self.up.requests[-1]["headers"].get("x-forwarded-client-cert")


@pytest.fixture
def setup(implementation: str, tmp_path: Path) -> Iterator[Setup]:
    ca = make_ca()
    server = issue_leaf(ca, common_name="localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"],
                        uris=PROXY_URIS)
    client = issue_leaf(ca, common_name="client one", dns_names=CLIENT_DNS, uris=CLIENT_URIS, usage=Usage.CLIENT,
                        key_type=KeyType.ECDSA_P256)
    server_pem, client_pem = write_pem_files(tmp_path, "server", server, ca), write_pem_files(tmp_path, "client", client, ca)
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS_TYPE, "require_client_certificate": True, "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(server_pem.cert)},
                                  "private_key": {"filename": str(server_pem.key)}}],
            "validation_context": {"trusted_ca": {"filename": str(server_pem.ca)}}}}}
    details = {"subject": True, "cert": True, "dns": True, "uri": True}
    up, launcher = Upstream(), ProxyLauncher(tmp_path)
    try:
        ports, listeners = {}, []
        for mode in MODES:
            for mtls in (True, False):
                ports[mode, mtls] = port = free_port()
                listener = http_listener(f"{mode.lower()}_{'mtls' if mtls else 'plain'}", port, [route("/", "a")],
                                         forward_client_cert_details=mode, set_current_client_cert_details=details)
                if mtls:
                    listener["filter_chains"][0]["transport_socket"] = tls
                listeners.append(listener)
        launcher.start(listeners, [static_cluster("a", [up.port])], implementation=implementation)
        client_ctx = ssl.create_default_context(cafile=str(client_pem.ca))
        client_ctx.load_cert_chain(str(client_pem.cert), str(client_pem.key))
        yield Setup(ports, up, client_ctx, expected_element(client_pem.cert))
    finally:
        launcher.close()
        up.close()


def expected_element(client_cert: Path) -> str:
    """This hop's element for the client certificate, spelled out as Envoy writes it."""
    pem = client_cert.read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    parts = [f"By={uri}" for uri in PROXY_URIS] + [f"Hash={hashlib.sha256(der).hexdigest()}",
                                                   f'Cert="{quote(pem.decode(), safe="")}"', 'Subject="CN=client one"']
    return ";".join(parts + [f"URI={uri}" for uri in CLIENT_URIS] + [f"DNS={name}" for name in CLIENT_DNS])


def test_every_mode_on_mtls_and_plaintext(setup: Setup) -> None:
    element = setup.element
    expected = {
        ("SANITIZE", True): None, ("SANITIZE", False): None,
        ("FORWARD_ONLY", True): FORGED, ("FORWARD_ONLY", False): None,
        ("APPEND_FORWARD", True): f"{FORGED},{element}", ("APPEND_FORWARD", False): None,
        ("SANITIZE_SET", True): element, ("SANITIZE_SET", False): None,
        ("ALWAYS_FORWARD_ONLY", True): FORGED, ("ALWAYS_FORWARD_ONLY", False): FORGED,
    }  # fmt: skip
    assert {key: setup.forwarded(*key) for key in expected} == expected
