"""Interop: TLS origination by DestinationRule, TLS passthrough by SNI and TCP routes from `pylon pilot`, on a real
Envoy 1.40 gateway and on `pylon proxy`.

- Origination: a gateway HTTP server routes to HTTPS upstreams whose DestinationRules say SIMPLE (the
  upstream's CA from a `credentialName` Secret, a SAN to check) or MUTUAL (a client certificate from the Secret).
  pilot serves credential secrets to verified proxies only: Envoy takes ADS from pilot's TLS port with a mesh
  certificate, as Istio's agent would connect it; pylon proxy runs under `pylon agent`, whose xDS proxy does that.
- Passthrough and TCP (Envoy and pylon, plaintext ADS: no secret involved): a PASSTHROUGH server sends each TLS
  connection, unopened, to the backend its SNI names; a TCP server forwards bytes by a VirtualService tcp route.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pylon.identity.authority import CaMaterial
from pylon.identity.certs import Issued, Usage, issue_leaf, make_ca
from pylon.identity.spiffe import SpiffeId
from tests.conftest import free_port, pylon_cmd, wait_for_port
from tests.pilot.builders import GATEWAY_NODE, SIDECAR_NODE, doc, write_yaml
from tests.pilot.harness import ENVOY, Processes, bootstrap, eventually, needs_envoy, pilot_cmd
from tests.pilot.test_gateway_tls_envoy import envoy_bootstrap

pytestmark = needs_envoy

GATEWAY = "istio-system/gw"


def write_pem(base: Path, name: str, issued: Issued) -> tuple[Path, Path]:
    cert, key = base / f"{name}.pem", base / f"{name}-key.pem"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    return cert, key


def secret(name: str, **data: bytes) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "istio-system"},
            "data": {key.replace("_", "."): base64.b64encode(value).decode() for key, value in data.items()}}  # fmt: skip


def entry(host: str, port: int, protocol: str, upstream: int) -> dict[str, Any]:
    return doc("ServiceEntry", host.split(".")[0], {
        "hosts": [host], "resolution": "STATIC", "ports": [{"number": port, "name": protocol.lower(), "protocol": protocol}],
        "endpoints": [{"address": "127.0.0.1", "ports": {protocol.lower(): upstream}}]})  # fmt: skip


def gateway(*servers: dict[str, Any]) -> dict[str, Any]:
    return doc("Gateway", "gw", {"selector": {"istio": "ingressgateway"}, "servers": list(servers)}, namespace="istio-system")


def http_get(port: int, host: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/", headers={"host": host}, timeout=5)


# --------------------------------------------------------------------------- origination (Envoy)


@dataclass
class Origination:
    port: int
    proxy: str



def origination_docs(http_port: int, server_port: int, mutual_port: int) -> list[dict[str, Any]]:
    """Four routes to two HTTPS upstreams, one VirtualService host and one ServiceEntry + DestinationRule each."""
    upstream = {"simple": server_port, "wrong-san": server_port, "mutual": mutual_port, "no-client-cert": mutual_port}
    tls = {
        "simple": {"mode": "SIMPLE", "credentialName": "server-ca", "sni": "api.example.com",
                   "subjectAltNames": ["api.example.com"]},
        "wrong-san": {"mode": "SIMPLE", "credentialName": "server-ca", "sni": "api.example.com",
                      "subjectAltNames": ["other.example.com"]},
        "mutual": {"mode": "MUTUAL", "credentialName": "client-cred", "sni": "api.example.com",
                   "subjectAltNames": ["api.example.com"]},
        "no-client-cert": {"mode": "SIMPLE", "credentialName": "server-ca", "sni": "api.example.com",
                           "subjectAltNames": ["api.example.com"]},
    }  # fmt: skip
    return routed_docs(http_port, upstream, tls)


def routed_docs(http_port: int, upstream: dict[str, int], tls: dict[str, Any]) -> list[dict[str, Any]]:
    """A gateway HTTP server and, per name, `<name>.example.com` routed to an HTTPS upstream whose DestinationRule
    originates TLS as `tls[name]` says."""
    docs: list[dict[str, Any]] = [gateway({"port": {"number": http_port, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]})]
    for name, port in upstream.items():
        host = f"{name}.backend.example.com"
        docs += [entry(host, 443, "HTTP", port),
                 doc("DestinationRule", name, {"host": host, "trafficPolicy": {"tls": tls[name]}}),
                 doc("VirtualService", name, {"hosts": [f"{name}.example.com"], "gateways": [GATEWAY],
                                              "http": [{"route": [{"destination": {"host": host}}]}]})]  # fmt: skip
    return docs


def ready(http_port: int, probe_host: str, proxy: str) -> Origination:
    """The gateway listening and routing `probe_host` (its config has arrived)."""
    wait_for_port(http_port, timeout=30)
    eventually(lambda: http_get(http_port, probe_host).status_code == 200, timeout=20)
    return Origination(http_port, proxy)


def agent_cmd(base: Path, ca_port: int, proxy: str) -> list[str]:
    """`pylon agent` running the gateway's proxy as Istio's gateway pod: xDS relayed to pilot's TLS port with the
    pod's token (so credential secrets reach a proxy whose own xDS client has no TLS)."""
    token = subprocess.run(pylon_cmd("pilot", "token", "--ca-dir", str(base / "cacerts"), "--namespace", "istio-system",
                                     "--service-account", "istio-ingressgateway"),
                           check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    (base / "token").write_text(token)
    (base / "work").mkdir()
    return pylon_cmd(
        "agent", "--type", "router", "--namespace", "istio-system", "--service-account", "istio-ingressgateway",
        "--pod-name", "gw-0", "--labels", "istio=ingressgateway", "--ca-address", f"127.0.0.1:{ca_port}",
        "--discovery-address", f"127.0.0.1:{ca_port}", "--root-cert", str(base / "cacerts" / "root-cert.pem"),
        "--token-file", str(base / "token"), "--workdir", str(base / "work"), "--proxy", proxy,
        "--envoy-binary", str(ENVOY), "--admin-port", str(free_port()), "--health-address", f"127.0.0.1:{free_port()}",
        "--status-address", f"127.0.0.1:{free_port()}", "--drain-seconds", "0.2")  # fmt: skip


@pytest.fixture(scope="module", params=["envoy", "pylon-agent"])
def origination(request: pytest.FixtureRequest) -> Iterator[Origination]:
    """Envoy connected straight to pilot's TLS port with a mesh certificate, or `pylon proxy` under `pylon agent`."""
    base = Path(tempfile.mkdtemp(prefix="po-"))  # short: the agent's Unix socket paths are limited to 108 bytes
    processes = Processes()
    try:
        server_ca, client_ca = make_ca(), make_ca()
        server_tls = write_pem(base, "server", issue_leaf(server_ca, common_name="api", dns_names=["api.example.com"]))
        plain = processes.upstream("simple-server", *server_tls)
        (base / "client-ca.pem").write_bytes(client_ca.cert_pem)
        mutual = processes.upstream("mutual-server", *server_tls, base / "client-ca.pem")
        client = issue_leaf(client_ca, common_name="gateway-client", usage=Usage.CLIENT)
        secrets_dir, config_dir = base / "secrets", base / "config"
        secrets_dir.mkdir()
        config_dir.mkdir()
        write_yaml(secrets_dir / "secrets.yaml", secret("server-ca", ca_crt=server_ca.cert_pem),
                   secret("client-cred", tls_crt=client.cert_pem, tls_key=client.key_pem, ca_crt=server_ca.cert_pem))
        http_port = free_port()
        write_yaml(config_dir / "mesh.yaml", *origination_docs(http_port, plain, mutual))
        material = CaMaterial.load_or_create(base / "cacerts")
        ca_port = free_port()
        pilot = processes.start(pilot_cmd(config_dir, base, free_port(), free_port(), free_port(), "--secrets-dir",
                                          str(secrets_dir), ca_port=ca_port))  # fmt: skip
        wait_for_port(ca_port, proc=pilot)
        if request.param == "envoy":
            path = envoy_bootstrap(base, material, SpiffeId("cluster.local", "istio-system", "ingressgateway"),
                                   free_port(), ca_port, tls=True)  # fmt: skip
            processes.start([str(ENVOY), "-c", str(path), "--disable-hot-restart", "-l", "error", "--use-dynamic-base-id"])
        else:
            processes.start(agent_cmd(base, ca_port, "pylon"))
        yield ready(http_port, "simple.example.com", request.param)
    finally:
        processes.stop()
        shutil.rmtree(base, ignore_errors=True)


def served_by_simple_server(port: int, host: str) -> bool:
    """`host` reached the TLS upstream that wants no client certificate, with the rule's SNI, and sent none."""
    answer = http_get(port, host).json()
    return answer["name"] == "simple-server" and answer["sni"] == "api.example.com" and answer["client"] is None


def test_simple_tls_origination_verifies_the_upstream_against_the_secrets_ca(origination: Origination) -> None:
    assert served_by_simple_server(origination.port, "simple.example.com")


def test_a_subject_alt_name_the_upstream_certificate_lacks_fails_the_request(origination: Origination) -> None:
    """The same upstream and CA as the passing route, another SAN expected: Envoy refuses the upstream."""
    response = http_get(origination.port, "wrong-san.example.com")
    assert response.status_code == 503, response.text


def test_mutual_tls_origination_presents_the_secrets_client_certificate(origination: Origination) -> None:
    answer = http_get(origination.port, "mutual.example.com").json()
    assert answer["name"] == "mutual-server" and answer["client"] == "gateway-client"


def test_without_the_client_certificate_the_upstream_refuses(origination: Origination) -> None:
    """SIMPLE (no client certificate) to the server that requires one: over TLS 1.3 the server refuses after the
    client's handshake is done (an alert, then the close), which Envoy answers with a 503."""
    assert http_get(origination.port, "no-client-cert.example.com").status_code == 503


# --------------------------------------------------------------------------- origination from files (agent SDS)

def file_origination_docs(http_port: int, server_port: int, mutual_port: int, files: dict[str, Path]) -> list[dict[str, Any]]:
    """DestinationRules naming files on the gateway's host (no credentialName): pilot writes Istio's
    `file-cert:`/`file-root:` SDS names, which the gateway's agent serves from those files."""
    upstream = {"file-simple": server_port, "file-mutual": mutual_port, "file-wrong-ca": server_port}
    tls = {
        "file-simple": {"mode": "SIMPLE", "caCertificates": str(files["server_ca"]), "sni": "api.example.com",
                        "subjectAltNames": ["api.example.com"]},
        "file-mutual": {"mode": "MUTUAL", "caCertificates": str(files["server_ca"]), "sni": "api.example.com",
                        "clientCertificate": str(files["client_cert"]), "privateKey": str(files["client_key"]),
                        "subjectAltNames": ["api.example.com"]},
        "file-wrong-ca": {"mode": "SIMPLE", "caCertificates": str(files["other_ca"]), "sni": "api.example.com",
                          "subjectAltNames": ["api.example.com"]},
    }  # fmt: skip
    return routed_docs(http_port, upstream, tls)


@pytest.fixture(scope="module", params=["envoy", "pylon"])
def file_origination(request: pytest.FixtureRequest) -> Iterator[Origination]:
    """The gateway's proxy (real Envoy or pylon proxy) under `pylon agent`, which serves the files over SDS."""
    base = Path(tempfile.mkdtemp(prefix="pf-"))
    processes = Processes()
    try:
        server_ca, client_ca, other_ca = make_ca(), make_ca(), make_ca()
        server_tls = write_pem(base, "server", issue_leaf(server_ca, common_name="api", dns_names=["api.example.com"]))
        plain = processes.upstream("simple-server", *server_tls)
        (base / "client-ca.pem").write_bytes(client_ca.cert_pem)
        mutual = processes.upstream("mutual-server", *server_tls, base / "client-ca.pem")
        client_cert, client_key = write_pem(base, "client", issue_leaf(client_ca, common_name="gateway-client",
                                                                        usage=Usage.CLIENT))  # fmt: skip
        files = {"server_ca": base / "server-ca.pem", "other_ca": base / "other-ca.pem",
                 "client_cert": client_cert, "client_key": client_key}  # fmt: skip
        files["server_ca"].write_bytes(server_ca.cert_pem)
        files["other_ca"].write_bytes(other_ca.cert_pem)
        config_dir = base / "config"
        config_dir.mkdir()
        http_port = free_port()
        write_yaml(config_dir / "mesh.yaml", *file_origination_docs(http_port, plain, mutual, files))
        CaMaterial.load_or_create(base / "cacerts")
        ca_port = free_port()
        pilot = processes.start(pilot_cmd(config_dir, base, free_port(), free_port(), free_port(), ca_port=ca_port))
        wait_for_port(ca_port, proc=pilot)
        processes.start(agent_cmd(base, ca_port, request.param))
        yield ready(http_port, "file-simple.example.com", request.param)
    finally:
        processes.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_simple_origination_trusts_the_ca_file_the_rule_names(file_origination: Origination) -> None:
    assert served_by_simple_server(file_origination.port, "file-simple.example.com")


def test_mutual_origination_presents_the_certificate_in_the_files(file_origination: Origination) -> None:
    answer = http_get(file_origination.port, "file-mutual.example.com").json()
    assert answer["name"] == "mutual-server" and answer["client"] == "gateway-client"


def test_an_upstream_the_named_ca_did_not_sign_is_refused(file_origination: Origination) -> None:
    assert http_get(file_origination.port, "file-wrong-ca.example.com").status_code == 503


# --------------------------------------------------------------------------- passthrough and TCP (Envoy and pylon)


@dataclass
class L4:
    tls_port: int
    tcp_port: int
    backend_ca: Issued

    def tls_get(self, server_name: str) -> dict[str, Any] | None:
        """GET / over TLS to the gateway's passthrough port with `server_name` as SNI: the backend's answer, or None
        when the connection is refused or closed."""
        context = ssl.create_default_context(cadata=self.backend_ca.cert_pem.decode())
        try:
            with socket.create_connection(("127.0.0.1", self.tls_port), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=server_name) as tls:
                tls.sendall(f"GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        except (ssl.SSLError, OSError):
            return None
        head, _, body = data.partition(b"\r\n\r\n")
        return json.loads(body) if head.startswith(b"HTTP/1.1 200") else None


def l4_docs(tls_port: int, tcp_port: int, a: int, b: int, plain: int) -> list[dict[str, Any]]:
    servers = [{"port": {"number": tls_port, "name": "tls", "protocol": "TLS"}, "hosts": ["*.pass.example.com"],
                "tls": {"mode": "PASSTHROUGH"}},
               {"port": {"number": tcp_port, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]}]  # fmt: skip
    routes = [{"match": [{"sniHosts": [f"{name}.pass.example.com"]}],
               "route": [{"destination": {"host": f"{name}.backend.example.com"}}]} for name in ("a", "b")]  # fmt: skip
    return [gateway(*servers),
            entry("a.backend.example.com", 8443, "TLS", a), entry("b.backend.example.com", 8443, "TLS", b),
            entry("plain.backend.example.com", 7000, "TCP", plain),
            doc("VirtualService", "pass", {"hosts": ["*.pass.example.com"], "gateways": [GATEWAY], "tls": routes}),
            doc("VirtualService", "tcp", {"hosts": ["*"], "gateways": [GATEWAY], "tcp": [
                {"match": [{"port": tcp_port}], "route": [{"destination": {"host": "plain.backend.example.com"}}]}]})]


def start_l4(processes: Processes, base: Path, proxy: str, docs: list[dict[str, Any]], node: str, cluster: str,
             metadata: dict[str, Any], port: int) -> None:
    """pilot on `docs` (plaintext ADS) and the proxy (`envoy` or `pylon`) for `node`, listening on `port`."""
    (base / "config").mkdir()
    write_yaml(base / "config" / "mesh.yaml", *docs)
    xds_port = free_port()
    pilot = processes.start(pilot_cmd(base / "config", base, xds_port, free_port(), free_port()))
    wait_for_port(xds_port, proc=pilot)
    (base / "proxy.yaml").write_text(yaml.safe_dump(bootstrap(node, cluster, metadata, free_port(), xds_port)))
    if proxy == "envoy":
        command = [str(ENVOY), "-c", str(base / "proxy.yaml"), "--disable-hot-restart", "-l", "error",
                   "--use-dynamic-base-id"]  # fmt: skip
    else:
        command = [sys.executable, "-m", "pylon.cli", "proxy", "-c", str(base / "proxy.yaml"), "-l", "error"]
    wait_for_port(port, proc=processes.start(command), timeout=20)


def tcp_get(port: int, path: str) -> dict[str, Any]:
    """GET `path` as raw bytes over a TCP connection to `port` (a tcp_proxy listener): the upstream's answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: anything\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(body)


def backends(processes: Processes, base: Path, zone: str) -> tuple[Issued, int, int, int]:
    """Two HTTPS backends `a` and `b` whose certificate (of a CA of their own) names `a.<zone>.example.com` and
    `b.<zone>.example.com`, and a plain HTTP one: the CA and their ports."""
    ca = make_ca()
    names = [f"a.{zone}.example.com", f"b.{zone}.example.com"]
    a, b = (processes.upstream(n, *write_pem(base, n, issue_leaf(ca, common_name=n, dns_names=names))) for n in "ab")
    return ca, a, b, processes.upstream("plain")


def run_l4(base: Path, proxy: str, zone: str, docs: Callable[[int, int, int, int, int], list[dict[str, Any]]],
           node: str, cluster: str, metadata: dict[str, Any]) -> Iterator[L4]:
    """The backends, pilot on `docs(tls_port, tcp_port, a, b, plain)` and the proxy; stopped when done."""
    processes = Processes()
    try:
        backend_ca, a, b, plain = backends(processes, base, zone)
        mesh = L4(tls_port=free_port(), tcp_port=free_port(), backend_ca=backend_ca)
        start_l4(processes, base, proxy, docs(mesh.tls_port, mesh.tcp_port, a, b, plain), node, cluster, metadata,
                 mesh.tcp_port)  # fmt: skip
        eventually(lambda: mesh.tls_get(f"a.{zone}.example.com") is not None, timeout=20)
        yield mesh
    finally:
        processes.stop()


@pytest.fixture(scope="module", params=["envoy", "pylon"])
def l4(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[L4]:
    """A gateway: PASSTHROUGH on the TLS port, a TCP server on the other."""
    yield from run_l4(tmp_path_factory.mktemp("l4"), request.param, "pass", l4_docs, GATEWAY_NODE,
                      "istio-ingressgateway.istio-system", {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}})


def test_passthrough_routes_each_tls_connection_by_its_sni_unopened(l4: L4) -> None:
    """The client's handshake reaches the backend (its certificate verifies, the backend sees the SNI)."""
    for name in ("a", "b"):
        answer = l4.tls_get(f"{name}.pass.example.com")
        assert answer is not None and (answer["name"], answer["sni"]) == (name, f"{name}.pass.example.com")
    assert l4.tls_get("c.pass.example.com") is None  # no route for that name: no filter chain matches


def test_tcp_route_forwards_bytes_to_its_destination(l4: L4) -> None:
    answer = tcp_get(l4.tcp_port, "/through-tcp")
    assert (answer["name"], answer["path"]) == ("plain", "/through-tcp")


# --------------------------------------------------------------------------- a sidecar's TCP and TLS ports


def sidecar_docs(tls_port: int, tcp_port: int, a: int, b: int, plain: int) -> list[dict[str, Any]]:
    """Two TLS services on one port (told apart by SNI, `b` routed to `a`'s backend by a tls route) and a TCP
    service whose tcp route sends it elsewhere."""
    return [entry("a.tls.example.com", tls_port, "TLS", a), entry("b.tls.example.com", tls_port, "TLS", b),
            entry("db.example.com", tcp_port, "TCP", 1), entry("plain.backend.example.com", tcp_port, "TCP", plain),
            doc("VirtualService", "b", {"hosts": ["b.tls.example.com"], "tls": [
                {"match": [{"sniHosts": ["b.tls.example.com"]}], "route": [{"destination": {"host": "a.tls.example.com"}}]}]}),
            doc("VirtualService", "db", {"hosts": ["db.example.com"], "tcp": [
                {"match": [{"port": tcp_port}], "route": [{"destination": {"host": "plain.backend.example.com"}}]}]})]


@pytest.fixture(scope="module", params=["envoy", "pylon"])
def sidecar_l4(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[L4]:
    """A sidecar in interception mode NONE: its outbound listeners bound on 127.0.0.1 per service port."""
    yield from run_l4(tmp_path_factory.mktemp("sidecar-l4"), request.param, "tls", sidecar_docs, SIDECAR_NODE,
                      "client.default", {"NAMESPACE": "default", "LABELS": {"app": "client"}, "INTERCEPTION_MODE": "NONE"})


def test_sidecar_tls_port_routes_by_sni_and_tls_routes(sidecar_l4: L4) -> None:
    answer = sidecar_l4.tls_get("a.tls.example.com")
    assert answer is not None and answer["name"] == "a"
    answer = sidecar_l4.tls_get("b.tls.example.com")  # the tls route sends b's name to a's backend
    assert answer is not None and (answer["name"], answer["sni"]) == ("a", "b.tls.example.com")


def test_sidecar_tcp_port_follows_the_tcp_route(sidecar_l4: L4) -> None:
    assert tcp_get(sidecar_l4.tcp_port, "/db")["name"] == "plain"


# --------------------------------------------------------------------------- a weighted tcp route (Envoy and pylon)


def weighted_docs(tls_port: int, tcp_port: int, a: int, b: int, plain: int) -> list[dict[str, Any]]:
    """The gateway's TCP server split 1:1 between the TLS backends `a` and `b` (relayed unopened), whose
    DestinationRules ask for source-IP hashing and a maximum connection duration: a `weighted_clusters` tcp_proxy
    with `hash_policy` and `max_downstream_connection_duration`."""
    docs = [d for d in l4_docs(tls_port, tcp_port, a, b, plain) if d["metadata"]["name"] != "tcp"]
    rules = [doc("DestinationRule", f"{name}-tcp", {"host": f"{name}-tcp.backend.example.com", "trafficPolicy": {
        "loadBalancer": {"consistentHash": {"useSourceIp": True}},
        "connectionPool": {"tcp": {"maxConnectionDuration": "30s"}}}}) for name in ("a", "b")]
    return [*docs, entry("a-tcp.backend.example.com", 7001, "TCP", a), entry("b-tcp.backend.example.com", 7001, "TCP", b),
            *rules, doc("VirtualService", "tcp", {"hosts": ["*"], "gateways": [GATEWAY], "tcp": [
                {"match": [{"port": tcp_port}], "route": [{"destination": {"host": "a-tcp.backend.example.com"}, "weight": 50},
                                                          {"destination": {"host": "b-tcp.backend.example.com"}, "weight": 50}]}]})]  # fmt: skip


@pytest.fixture(scope="module", params=["envoy", "pylon"])
def weighted_l4(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[L4]:
    yield from run_l4(tmp_path_factory.mktemp("weighted-l4"), request.param, "pass", weighted_docs, GATEWAY_NODE,
                      "istio-ingressgateway.istio-system", {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}})


def test_weighted_tcp_route_splits_connections_between_its_destinations(weighted_l4: L4) -> None:
    """The pylon proxy takes pilot's weighted tcp_proxy (it refused weighted_clusters, hash_policy and
    max_downstream_connection_duration before) and splits connections as Envoy does."""
    tcp = L4(tls_port=weighted_l4.tcp_port, tcp_port=weighted_l4.tcp_port, backend_ca=weighted_l4.backend_ca)
    names = [answer["name"] for answer in (tcp.tls_get("a.pass.example.com") for _ in range(30)) if answer]
    assert len(names) == 30 and set(names) == {"a", "b"}, names
