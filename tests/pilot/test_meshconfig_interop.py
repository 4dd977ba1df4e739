"""Interop: MeshConfig fields whose effect a proxy shows, through real Envoy 1.40 and `pylon proxy`.

- Access logs: `pylon pilot --mesh-config` with accessLogFile configures a gateway (bootstrap as Istio's
  agent writes it, ADS to pilot); a request through it leaves the line the format says in the file.
  Istio's default formats and custom ones run through both.
- Trust domain: pilot's CA with `trustDomain: example.org` issues `spiffe://example.org/...` certificates,
  and an AuthorizationPolicy naming `cluster.local/ns/default/sa/client` (Istio's "this mesh") lets that
  client through an mTLS listener guarded by pilot's RBAC filter, and refuses another service account.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pylon.agent.keys import AgentKeySource
from pylon.identity.client import create_certificate
from pylon.identity.spiffe import SpiffeId
from pylon.pilot.gen.accesslog import ISTIO_JSON_FORMAT
from pylon.pilot.gen.authz import http_rbac_filters, policies_for
from pylon.pilot.gen.types import HCM, ROUTER
from pylon.pilot.istio.mesh import load_mesh_config
from pylon.pilot.snapshot import build_snapshot
from tests.conftest import free_port, pylon_cmd, wait_for_port
from tests.pilot.builders import doc, gateway, resources, service_entry, sidecar_proxy, virtual_service
from tests.pilot.harness import eventually, gateway_on_pilot, needs_envoy, pilot_cmd
from tests.proxy.conftest import ProxyLauncher
from tests.proxy.upstreams import Upstream

pytestmark = needs_envoy

HOST = "echo.example.com"
CUSTOM_TEXT = '%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %RESPONSE_CODE% "%UPSTREAM_HOST%"'
CUSTOM_JSON = '{"method": "%REQ(:METHOD)%", "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "code": "%RESPONSE_CODE%"}'


@dataclass
class Logged:
    lines: list[str]
    upstream_port: int


def _gateway_request_log(tmp_path: Path, implementation: str, mesh_config: dict[str, Any]) -> Logged:
    """Pilot (with `mesh_config`) and a gateway proxy; one GET /x through it; the access log's lines."""
    log = tmp_path / "access.log"
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump({"accessLogFile": str(log), **mesh_config}))
    upstream = Upstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        gateway_port = free_port()
        gw = gateway(gateway_port)
        gw["metadata"]["namespace"] = "default"
        docs = [gw, service_entry(HOST, [("127.0.0.1", upstream.port, {})]),
                virtual_service([{"route": [{"destination": {"host": HOST}}]}], gateways=["default/gw"])]
        gateway_on_pilot(launcher, tmp_path, docs, implementation, "--mesh-config", str(tmp_path / "mesh.yaml"))
        wait_for_port(gateway_port, timeout=10)
        reply = httpx.get(f"http://127.0.0.1:{gateway_port}/x?q=1", headers={"host": HOST}, timeout=5)
        assert reply.status_code == 200
        eventually(lambda: log.exists() and log.read_text().endswith("\n"), timeout=10)  # both flush within ~1 s
        return Logged(log.read_text().splitlines(), upstream.port)
    finally:
        launcher.close()
        upstream.close()


@pytest.mark.parametrize("implementation", ["envoy", "pylon"])
def test_istios_default_text_line(tmp_path: Path, implementation: str) -> None:
    logged = _gateway_request_log(tmp_path, implementation, {})
    [line] = logged.lines
    assert '"GET /x?q=1 HTTP/1.1" 200 - via_upstream - "-" 0 3 ' in line  # flags, details, bytes in/out
    assert f'"{HOST}" "127.0.0.1:{logged.upstream_port}" outbound|80||{HOST} 127.0.0.1:' in line


@pytest.mark.parametrize("implementation", ["envoy", "pylon"])
def test_istios_default_json_line(tmp_path: Path, implementation: str) -> None:
    logged = _gateway_request_log(tmp_path, implementation, {"accessLogEncoding": "JSON"})
    [line] = logged.lines
    fields = json.loads(line)
    assert set(fields) == set(ISTIO_JSON_FORMAT)
    assert (fields["method"], fields["path"], fields["response_code"], fields["upstream_cluster"],
            fields["upstream_host"]) == ("GET", "/x?q=1", 200, f"outbound|80||{HOST}", f"127.0.0.1:{logged.upstream_port}")


@pytest.mark.parametrize("implementation", ["envoy", "pylon"])
def test_custom_text_format_same_line_in_both(tmp_path: Path, implementation: str) -> None:
    logged = _gateway_request_log(tmp_path, implementation, {"accessLogFormat": CUSTOM_TEXT})
    assert logged.lines == [f'GET /x?q=1 HTTP/1.1 200 "127.0.0.1:{logged.upstream_port}"']


@pytest.mark.parametrize("implementation", ["envoy", "pylon"])
def test_custom_json_format_same_object_in_both(tmp_path: Path, implementation: str) -> None:
    logged = _gateway_request_log(tmp_path, implementation, {"accessLogEncoding": "JSON", "accessLogFormat": CUSTOM_JSON})
    assert [json.loads(line) for line in logged.lines] == [{"method": "GET", "path": "/x?q=1", "code": 200}]


# --------------------------------------------------------------------------- trust domain


@dataclass
class Identity:
    cert: Path
    key: Path
    uri: str


@pytest.fixture(scope="module")
def trust_domain_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Identity]]]:
    """Pilot with `trustDomain: example.org`; certificates from its CA for default/web, default/client, default/other."""
    work = tmp_path_factory.mktemp("td")
    launcher = ProxyLauncher(work)
    try:
        (work / "config").mkdir()
        (work / "mesh.yaml").write_text("trustDomain: example.org\n")
        ca_port = free_port()
        command = pilot_cmd(work / "config", work, free_port(), free_port(), free_port(), "--mesh-config",
                            str(work / "mesh.yaml"))  # fmt: skip
        command[command.index("--ca-address") + 1] = f"127.0.0.1:{ca_port}"
        wait_for_port(ca_port, proc=launcher.spawn(command))
        ca_dir = work / "cacerts"
        root_pem = (ca_dir / "root-cert.pem").read_bytes()
        identities = {}
        for account in ("web", "client", "other"):
            token = subprocess.run(pylon_cmd("pilot", "token", "--ca-dir", str(ca_dir), "--namespace", "default",
                                             "--service-account", account),
                                   check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
            key = AgentKeySource().new_key(SpiffeId("cluster.local", "default", account))  # the CA ignores the CSR's SAN
            chain = asyncio.run(create_certificate(f"127.0.0.1:{ca_port}", root_pem, key.csr_pem, token=token))
            leaf = x509.load_pem_x509_certificate(chain[0].encode())
            [uri] = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier)
            cert, key_path = work / f"{account}-cert.pem", work / f"{account}-key.pem"
            cert.write_text("".join(chain[:-1]))
            key_path.write_bytes(key.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))  # fmt: skip
            identities[account] = Identity(cert, key_path, uri)
        yield ca_dir / "root-cert.pem", identities
    finally:
        launcher.close()


def test_ca_issues_identities_in_the_mesh_trust_domain(trust_domain_ca: tuple[Path, dict[str, Identity]]) -> None:
    _, identities = trust_domain_ca
    assert {name: i.uri for name, i in identities.items()} == {
        name: f"spiffe://example.org/ns/default/sa/{name}" for name in ("web", "client", "other")}


@pytest.mark.parametrize("implementation", ["envoy", "pylon"])
def test_cluster_local_principal_means_the_mesh_trust_domain(tmp_path: Path, implementation: str,
                                                             trust_domain_ca: tuple[Path, dict[str, Identity]]) -> None:  # fmt: skip
    root, identities = trust_domain_ca
    (tmp_path / "mesh.yaml").write_text("trustDomain: example.org\n")
    policy = doc("AuthorizationPolicy", "only-client", {"rules": [{"from": [{"source": {
        "principals": ["cluster.local/ns/default/sa/client"]}}]}]}, api_version="security.istio.io/v1")  # fmt: skip
    snap = build_snapshot(resources(policy), version="v", mesh=load_mesh_config(tmp_path / "mesh.yaml"))
    port = free_port()
    web = identities["web"]
    listener = {
        "name": "inbound", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": True,
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": {"filename": str(web.cert)},
                                          "private_key": {"filename": str(web.key)}}],
                    "validation_context": {"trusted_ca": {"filename": str(root)}}}}},
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": HCM, "stat_prefix": "inbound",
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
                "http_filters": [*http_rbac_filters(policies_for(sidecar_proxy(), snap)),
                                 {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}}],
        }],
    }  # fmt: skip
    launcher = ProxyLauncher(tmp_path)
    try:
        launcher.start([listener], [], implementation=implementation)
        assert _status(port, root, identities["client"]) == 200
        assert _status(port, root, identities["other"]) == 403
    finally:
        launcher.close()


def _status(port: int, root: Path, identity: Identity) -> int:
    """The status of GET / over mTLS presenting `identity`'s certificate."""
    context = ssl.create_default_context(cafile=str(root))
    context.check_hostname = False  # workload certificates carry only a SPIFFE URI
    context.load_cert_chain(identity.cert, identity.key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])
