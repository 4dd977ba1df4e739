"""Interop: HTTPS gateway servers from `pylon pilot` on a real Envoy 1.40, their keys served over ADS.

Istio's shape: the Gateway's `credentialName` names a Kubernetes Secret (here a manifest in pilot's
`--secrets-dir`); pilot serves it as `kubernetes://NAME` over ADS, but only on its TLS port and only to
a proxy that proved (with a mesh client certificate) that it belongs to the secret's namespace. The
gateway's Envoy connects there as Istio's agent would connect it, with the certificate pilot's CA issued.
"""

from __future__ import annotations

import base64
import datetime as dt
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pylon.identity.certs import build_csr
from pylon.identity.authority import CaMaterial
from pylon.identity.certs import Issued, KeyType, Usage, generate_key, issue_leaf, make_ca
from pylon.identity.spiffe import SpiffeId
from tests.conftest import free_port, stop_process_group, wait_for_port
from tests.pilot.builders import GATEWAY_NODE, doc, service_entry, virtual_service, write_yaml
from tests.pilot.harness import ENVOY, Processes, bootstrap, eventually, needs_envoy, pilot_cmd

pytestmark = needs_envoy

HOST = "gw.example.com"
BACKEND = "echo.example.com"


@dataclass
class TlsMesh:
    base: Path
    simple_port: int
    mutual_port: int
    public_ca: Issued
    client_ca: Issued
    secrets_dir: Path
    procs: list[subprocess.Popen]

    def write_secret(self, common_name: str) -> None:
        leaf = issue_leaf(self.public_ca, common_name=common_name, dns_names=[HOST])
        data = {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": self.client_ca.cert_pem}
        (self.secrets_dir / "gw-cred.yaml").write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "gw-cred", "namespace": "istio-system"},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}))  # fmt: skip

    def get(self, port: int, client: Issued | None = None) -> tuple[str, bytes] | None:
        """(common name of the server certificate, response head) of GET / over TLS; None if the handshake fails."""
        context = ssl.create_default_context(cadata=self.public_ca.cert_pem.decode())
        if client is not None:
            cert, key = self.base / "client.pem", self.base / "client-key.pem"
            cert.write_bytes(client.cert_pem)
            key.write_bytes(client.key_pem)
            context.load_cert_chain(cert, key)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=HOST) as tls:
                tls.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                head = tls.recv(65536)
                if not head:
                    return None  # TLS 1.3: a refused client certificate shows as a close after the handshake
                subject = dict(item[0] for item in tls.getpeercert()["subject"])
                return subject["commonName"], head
        except (ssl.SSLError, OSError):
            return None


def gateway_docs(simple_port: int, mutual_port: int, backend_port: int) -> list[dict[str, Any]]:
    servers = [
        {"port": {"number": simple_port, "name": "https", "protocol": "HTTPS"}, "hosts": [HOST],
         "tls": {"mode": "SIMPLE", "credentialName": "gw-cred"}},
        {"port": {"number": mutual_port, "name": "https-mtls", "protocol": "HTTPS"}, "hosts": [HOST],
         "tls": {"mode": "MUTUAL", "credentialName": "gw-cred"}},
    ]  # fmt: skip
    gateway = doc("Gateway", "gw", {"selector": {"istio": "ingressgateway"}, "servers": servers},
                  namespace="istio-system")
    return [gateway, service_entry(BACKEND, [("127.0.0.1", backend_port, {})]),
            virtual_service([{"route": [{"destination": {"host": BACKEND}}]}], hosts=[HOST])]


def envoy_bootstrap(base: Path, material: CaMaterial, identity: SpiffeId, admin_port: int, xds_port: int,
                    tls: bool) -> Path:
    """Istio's gateway bootstrap, ADS to pilot's TLS port with a mesh certificate for `identity` (or plaintext)."""
    config = bootstrap(GATEWAY_NODE, "istio-ingressgateway.istio-system",
                       {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}}, admin_port, xds_port)
    if tls:
        key = generate_key(KeyType.ECDSA_P256)
        chain = material.sign_csr(build_csr(key, identity), identity, dt.timedelta(hours=1))
        from cryptography.hazmat.primitives import serialization

        (base / "gw-chain.pem").write_text("".join(chain[:-1]))
        (base / "gw-key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))  # fmt: skip
        (base / "root.pem").write_text(material.root_pem)
        xds = config["static_resources"]["clusters"][0]
        xds["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "istiod.istio-system.svc",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [{"certificate_chain": {"filename": str(base / "gw-chain.pem")},
                                      "private_key": {"filename": str(base / "gw-key.pem")}}],
                "validation_context": {"trusted_ca": {"filename": str(base / "root.pem")}}}}}  # fmt: skip
    path = base / f"envoy-{admin_port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsMesh]:
    base = tmp_path_factory.mktemp("gateway-tls")
    processes = Processes()
    procs, start = processes.procs, processes.start
    try:
        backend = processes.upstream("backend")
        mesh = TlsMesh(base=base, simple_port=free_port(), mutual_port=free_port(), public_ca=make_ca(),
                       client_ca=make_ca(), secrets_dir=base / "secrets", procs=procs)  # fmt: skip
        mesh.secrets_dir.mkdir()
        mesh.write_secret("first")
        config_dir = base / "config"
        config_dir.mkdir()
        write_yaml(config_dir / "gw.yaml", *gateway_docs(mesh.simple_port, mesh.mutual_port, backend))
        material = CaMaterial.load_or_create(base / "cacerts")  # pilot loads the same CA
        xds_port, ca_port = free_port(), free_port()
        pilot = start(pilot_cmd(config_dir, base, xds_port, free_port(), free_port(), "--secrets-dir",
                                str(mesh.secrets_dir), ca_port=ca_port))  # fmt: skip
        wait_for_port(ca_port, proc=pilot)
        gateway = envoy_bootstrap(base, material, SpiffeId("cluster.local", "istio-system", "ingressgateway"),
                                  free_port(), ca_port, tls=True)  # fmt: skip
        start([str(ENVOY), "-c", str(gateway), "--disable-hot-restart", "-l", "error", "--use-dynamic-base-id"])
        eventually(lambda: mesh.get(mesh.simple_port) is not None, timeout=20)
        yield mesh
    finally:
        processes.stop()


def test_simple_tls_with_the_credential_and_routes(mesh: TlsMesh) -> None:
    answer = mesh.get(mesh.simple_port)
    assert answer is not None and answer[0] == "first" and answer[1].startswith(b"HTTP/1.1 200")


def test_mutual_tls_needs_a_client_certificate_from_the_secrets_ca(mesh: TlsMesh) -> None:
    eventually(lambda: mesh.get(mesh.mutual_port, issue_leaf(mesh.client_ca, common_name="client", usage=Usage.CLIENT)) is not None)
    assert mesh.get(mesh.mutual_port) is None
    assert mesh.get(mesh.mutual_port, issue_leaf(make_ca(), common_name="stranger", usage=Usage.CLIENT)) is None


def test_a_changed_secret_is_served_without_a_restart(mesh: TlsMesh) -> None:
    mesh.write_secret("second")
    eventually(lambda: (mesh.get(mesh.simple_port) or ("",))[0] == "second", timeout=10)
    mesh.write_secret("first")
    eventually(lambda: (mesh.get(mesh.simple_port) or ("",))[0] == "first", timeout=10)


@pytest.mark.parametrize("how", ["plaintext port", "identity of another namespace"])
def test_no_key_without_a_verified_identity_of_the_namespace(mesh: TlsMesh, tmp_path: Path, how: str) -> None:
    """The same gateway bootstrap over the plaintext port, or with a certificate of another namespace, gets
    its listeners but never the key: the HTTPS port never completes a handshake."""
    import re

    material = CaMaterial.load_or_create(mesh.base / "cacerts")
    pilot_args = mesh.procs[1].args
    xds_port = int(pilot_args[pilot_args.index("--grpc-address") + 1].rsplit(":", 1)[1])
    ca_port = int(pilot_args[pilot_args.index("--ca-address") + 1].rsplit(":", 1)[1])
    config_dir = Path(pilot_args[pilot_args.index("--config-dir") + 1])
    # A second gateway of its own: the same Gateway resource on other ports, selected by its own labels.
    simple, mutual = free_port(), free_port()
    write_yaml(config_dir / "gw2.yaml", *[
        {**d, "metadata": {**d["metadata"], "name": "gw2"},
         "spec": {**d["spec"], "selector": {"istio": "second"}}} if d["kind"] == "Gateway" else {**d, "metadata": {
             **d["metadata"], "name": d["metadata"]["name"] + "2"}}
        for d in gateway_docs(simple, mutual, 1)])  # fmt: skip
    tls = how != "plaintext port"
    identity = SpiffeId("cluster.local", "other" if tls else "istio-system", "ingressgateway")
    path = envoy_bootstrap(tmp_path, material, identity, free_port(), ca_port if tls else xds_port, tls=tls)
    text = re.sub(r"istio: ingressgateway", "istio: second", path.read_text())
    path.write_text(text)
    envoy = subprocess.Popen([str(ENVOY), "-c", str(path), "--disable-hot-restart", "-l", "error",
                              "--use-dynamic-base-id"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)  # fmt: skip
    try:
        if not tls:
            wait_for_port(simple, proc=envoy, timeout=25)  # the listener comes (after SDS's initial fetch timeout)
        else:
            import time

            time.sleep(3)  # the stream is refused: nothing is ever configured
        assert mesh.get(simple) is None
    finally:
        stop_process_group(envoy)
        (config_dir / "gw2.yaml").unlink()
