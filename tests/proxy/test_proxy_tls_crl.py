"""Integration: a validation context's `crl` refuses revoked certificates, upstream and downstream, through pylon and
through Envoy 1.40 (the same configs, the same assertions); without the CRL the same certificate is accepted.

What pilot generates for a DestinationRule's `caCrl` and a gateway credential's `ca.crl`.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from pylon.identity.certs import Issued, Usage, issue_leaf, make_ca
from tests.conftest import free_port
from tests.proxy.conftest import (
    DOWNSTREAM_TLS_TYPE,
    UPSTREAM_TLS_TYPE,
    ProxyLauncher,
    http_listener,
    route,
    static_cluster,
)
from tests.proxy.upstreams import Upstream


def revocation_list(issuer: Issued, revoked: list[Issued]) -> bytes:
    """A PEM CRL signed by `issuer`, valid now, listing `revoked`."""
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.cert.subject)
               .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=1)))
    for cert in revoked:
        builder = builder.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(
            cert.cert.serial_number).revocation_date(now - dt.timedelta(minutes=5)).build())
    return builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


@dataclass
class Pki:
    directory: Path
    ca: Issued
    good: Issued
    revoked: Issued

    def path(self, name: str, data: bytes) -> dict[str, str]:
        file = self.directory / name
        file.write_bytes(data)
        return {"filename": str(file)}

    @property
    def ca_file(self) -> dict[str, str]:
        return self.path("ca.pem", self.ca.cert_pem)

    @property
    def crl_file(self) -> dict[str, str]:
        """The CA's CRL listing `revoked`, and an unrelated CA's empty one beside it (a file may hold several)."""
        other = make_ca("another CA")
        return self.path("crl.pem", revocation_list(self.ca, [self.revoked]) + revocation_list(other, []))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = make_ca()
    leaves = [issue_leaf(ca, common_name=name, dns_names=["localhost"], usage=Usage.SERVER_AND_CLIENT)
              for name in ("good", "revoked")]
    return Pki(tmp_path_factory.mktemp("crl"), ca, *leaves)


def server_context(leaf: Issued, directory: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    (directory / f"{leaf.cert.serial_number}.pem").write_bytes(leaf.cert_pem + leaf.key_pem)
    context.load_cert_chain(directory / f"{leaf.cert.serial_number}.pem")
    return context


@pytest.fixture(scope="module")
def servers(pki: Pki) -> Iterator[dict[str, Upstream]]:
    made = {"good": Upstream(tls=server_context(pki.good, pki.directory)),
            "revoked": Upstream(tls=server_context(pki.revoked, pki.directory)), "plain": Upstream()}
    yield made
    for server in made.values():
        server.close()


def tls_cluster(name: str, port: int, validation: dict[str, Any]) -> dict[str, Any]:
    return static_cluster(name, [port], transport_socket={"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": UPSTREAM_TLS_TYPE, "common_tls_context": {"validation_context": validation}}})


def test_upstream_crl_refuses_a_revoked_server_certificate(launcher: ProxyLauncher, implementation: str, pki: Pki,
                                                           servers: dict[str, Upstream]) -> None:
    with_crl = {"trusted_ca": pki.ca_file, "crl": pki.crl_file}
    leaf_only = {**with_crl, "only_verify_leaf_cert_crl": True}
    clusters = {"good_crl": ("good", with_crl), "revoked_crl": ("revoked", with_crl),
                "revoked_no_crl": ("revoked", {"trusted_ca": pki.ca_file}),
                "good_leaf_only": ("good", leaf_only), "revoked_leaf_only": ("revoked", leaf_only)}
    port = free_port()
    proxy = launcher.start([http_listener("web", port, [route(f"/{name}", name) for name in clusters])],
                           [tls_cluster(name, servers[server].port, validation)
                            for name, (server, validation) in clusters.items()], implementation=implementation)
    statuses = {name: httpx.get(f"http://127.0.0.1:{port}/{name}", timeout=5).status_code for name in clusters}
    assert statuses == {"good_crl": 200, "revoked_crl": 503, "revoked_no_crl": 200, "good_leaf_only": 200,
                        "revoked_leaf_only": 503}
    assert proxy.stats()["cluster.revoked_crl.upstream_cx_connect_fail"] == 1


def client_handshake(port: int, pki: Pki, leaf: Issued) -> int | None:
    """GET / over TLS presenting `leaf`: the status, or None when the proxy refused the handshake."""
    context = ssl.create_default_context(cadata=pki.ca.cert_pem.decode())
    context.check_hostname = False
    chain = pki.directory / f"client-{leaf.cert.serial_number}.pem"
    chain.write_bytes(leaf.cert_pem + leaf.key_pem)
    context.load_cert_chain(chain)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    except (ssl.SSLError, OSError):
        return None
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


@pytest.mark.parametrize("crl", [True, False], ids=["crl", "no-crl"])
def test_downstream_crl_refuses_a_revoked_client_certificate(launcher: ProxyLauncher, implementation: str, pki: Pki,
                                                             servers: dict[str, Upstream], crl: bool) -> None:
    validation: dict[str, Any] = {"trusted_ca": pki.ca_file, **({"crl": pki.crl_file} if crl else {})}
    listener = http_listener("mtls", free_port(), [route("/", "plain")])
    listener["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS_TYPE, "require_client_certificate": True, "common_tls_context": {
            "tls_certificates": [{"certificate_chain": pki.path("server.pem", pki.good.cert_pem),
                                  "private_key": pki.path("server-key.pem", pki.good.key_pem)}],
            "validation_context": validation}}}  # fmt: skip
    proxy = launcher.start([listener], [static_cluster("plain", [servers["plain"].port])], implementation=implementation)
    port = proxy.ports["mtls"]
    assert client_handshake(port, pki, pki.good) == 200
    assert client_handshake(port, pki, pki.revoked) == (None if crl else 200)
