"""Integration: TLS certificates and trust from SDS, through pylon and real Envoy 1.40 alike.

The secrets come as Istio's agent serves them: `default` (the workload certificate) and `ROOTCA` (the mesh
root) over the Secret Discovery Service on a Unix socket, reached through a static HTTP/2 cluster
`sds-grpc` with a pipe address; the listener requires a client certificate and checks its SPIFFE SAN with a
combined validation context (SAN matchers inline, the CA from SDS). Covered: serving with SDS secrets,
rotation (new handshakes get the new certificate, an open connection carries on), a secret that never
comes (TLS refused, and never cleartext, downstream and upstream), a bad secret (NACK naming the field, the
old certificate serving), and /config_dump (private keys redacted).
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from pylon.identity.certs import Issued, KeyType, Usage, issue_leaf, make_ca
from tests.conftest import free_port
from tests.proxy.conftest import (
    DOWNSTREAM_TLS_TYPE, UPSTREAM_TLS_TYPE, ProxyLauncher, RunningProxy, http_listener, route, static_cluster,
    wait_until,
)
from tests.proxy.upstreams import Upstream
from tests.xds.management import CDS, LDS, SDS, ScriptedAds
from tests.xds.test_ads_interop import ads_bootstrap

EFFECT_S = 5.0
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"


@dataclass
class Pki:
    root: Issued
    server_a: Issued
    server_b: Issued
    client: Issued
    root_pem: Path

    def inline(self, issued: Issued) -> dict[str, Any]:
        return {"certificate_chain": {"inline_bytes": _b64(issued.cert_pem)},
                "private_key": {"inline_bytes": _b64(issued.key_pem)}}


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = make_ca("mesh root", key_type=KeyType.ECDSA_P256)

    def server(name: str) -> Issued:
        return issue_leaf(root, common_name=name, dns_names=["localhost"], ip_addresses=["127.0.0.1"],
                          key_type=KeyType.ECDSA_P256)

    client = issue_leaf(root, uris=[CLIENT_ID], usage=Usage.CLIENT, key_type=KeyType.ECDSA_P256)
    root_pem = tmp_path_factory.mktemp("sds-pki") / "root.pem"
    root_pem.write_bytes(root.cert_pem)
    return Pki(root, server("a"), server("b"), client, root_pem)


def default_secret(pki: Pki, leaf: Issued, name: str = "default") -> dict[str, Any]:
    return {"name": name, "tls_certificate": pki.inline(leaf)}


def root_secret(pki: Pki) -> dict[str, Any]:
    return {"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_bytes": _b64(pki.root.cert_pem)}}}


def sds_ref(name: str, initial_fetch_timeout: str = "0s") -> dict[str, Any]:
    """A secret from the agent over `sds-grpc`, as Istio writes the reference."""
    return {"name": name, "sds_config": {
        "api_config_source": {"api_type": "GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": True,
                              "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]},
        "initial_fetch_timeout": initial_fetch_timeout, "resource_api_version": "V3"}}  # fmt: skip


def mtls_listener(port: int, initial_fetch_timeout: str = "0s") -> dict[str, Any]:
    listener = http_listener("main", port, [route("/", "backend")])
    listener["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS_TYPE, "require_client_certificate": True, "common_tls_context": {
            "tls_certificate_sds_secret_configs": [sds_ref("default", initial_fetch_timeout)],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}]},
                "validation_context_sds_secret_config": sds_ref("ROOTCA", initial_fetch_timeout)}}}}  # fmt: skip
    return listener


def sds_cluster(socket_path: Path) -> dict[str, Any]:
    """Istio's `sds-grpc`: a static HTTP/2 cluster on the agent's Unix socket."""
    return {"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{HTTP_OPTIONS}", "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"pipe": {"path": str(socket_path)}}}}]}]}}  # fmt: skip


NODE = {"node": {"id": "sidecar~127.0.0.1~app.default~default.svc.cluster.local", "cluster": "app"}}


@dataclass
class Setup:
    proxy: RunningProxy
    sds: ScriptedAds
    upstream: Upstream
    implementation: str


@pytest.fixture
def sds_server(tmp_path: Path) -> Iterator[ScriptedAds]:
    server = ScriptedAds(unix_path=str(tmp_path / "sds.sock"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def start_proxy(implementation: str, tmp_path: Path, sds: ScriptedAds, listeners: list[dict[str, Any]],
                clusters: list[dict[str, Any]]) -> tuple[ProxyLauncher, RunningProxy]:
    launcher = ProxyLauncher(tmp_path)
    try:
        proxy = launcher.start(listeners, [*clusters, sds_cluster(Path(sds.unix_path))],
                               implementation=implementation, bootstrap_extra=NODE)
    except BaseException:
        launcher.close()
        raise
    return launcher, proxy


@pytest.fixture(params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path: Path, pki: Pki, sds_server: ScriptedAds) -> Iterator[Setup]:
    upstream = Upstream()
    sds_server.set(SDS, "1", [default_secret(pki, pki.server_a), root_secret(pki)])
    launcher, proxy = None, None
    try:
        launcher, proxy = start_proxy(request.param, tmp_path, sds_server, [mtls_listener(free_port())],
                                      [static_cluster("backend", [upstream.port])])
        yield Setup(proxy, sds_server, upstream, request.param)
    finally:
        if launcher is not None:
            launcher.close()
        upstream.close()


def client_context(pki: Pki, tmp_path: Path, *, certificate: bool = True) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=pki.root.cert_pem.decode())
    context.check_hostname = False
    if certificate:
        cert, key = tmp_path / "client.pem", tmp_path / "client.key"
        cert.write_bytes(pki.client.cert_pem)
        key.write_bytes(pki.client.key_pem)
        context.load_cert_chain(cert, key)
    return context


class TlsClient:
    """One keep-alive TLS connection: the server certificate's CN, and requests on it."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        self.server_cn = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME)[0].value
        self.buffer = b""

    def get(self) -> int:
        self.sock.sendall(b"GET /x HTTP/1.1\r\nhost: app\r\n\r\n")
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buffer = rest[length:]
        return int(head.split(b" ")[1])

    def close(self) -> None:
        self.sock.close()


def test_sds_certificate_serves_and_rotates(setup: Setup, pki: Pki, tmp_path: Path) -> None:
    port = setup.proxy.ports["main"]
    context = client_context(pki, tmp_path)
    old = TlsClient(port, context)
    assert (old.server_cn, old.get()) == ("a", 200)

    # Rotation: new handshakes get the new certificate; the open connection carries on.
    setup.sds.set(SDS, "2", [default_secret(pki, pki.server_b), root_secret(pki)])

    def new_cn() -> str:
        client = TlsClient(port, context)
        try:
            assert client.get() == 200
            return client.server_cn
        finally:
            client.close()

    assert wait_until(lambda: new_cn() == "b", timeout=EFFECT_S)
    assert old.get() == 200 and old.server_cn == "a"
    old.close()

    # The client certificate is required and checked against ROOTCA (from SDS).
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        TlsClient(port, client_context(pki, tmp_path, certificate=False)).get()
    stats = setup.proxy.stats()
    assert stats["sds.default.update_success"] == 2 and stats["sds.ROOTCA.update_success"] == 2
    assert stats["sds.default.update_rejected"] == 0


def test_config_dump_redacts_private_keys(setup: Setup, pki: Pki) -> None:
    text = setup.proxy.admin("/config_dump").text
    dump = [c for c in httpx.Response(200, content=text).json()["configs"]
            if c["@type"].endswith("SecretsConfigDump")][0]
    active = {s["name"]: s for s in dump["dynamic_active_secrets"]}
    assert set(active) == {"default", "ROOTCA"}
    key = active["default"]["secret"]["tls_certificate"]["private_key"]
    assert key == {"inline_bytes": "W3JlZGFjdGVkXQ=="}  # base64 of "[redacted]", as Envoy shows it
    assert _b64(pki.server_a.key_pem) not in text and b"PRIVATE KEY" not in text.encode()
    assert active["default"]["version_info"] == "1"


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_a_secret_that_never_comes_refuses_connections(implementation: str, tmp_path: Path, pki: Pki,
                                                        sds_server: ScriptedAds) -> None:
    """initial_fetch_timeout passes with no `default`: the listener serves, its TLS refuses every connection,
    and a cleartext request is never answered (fail closed); an upstream TLS cluster fails the same way."""
    plain = Upstream()
    sds_server.set(SDS, "1", [root_secret(pki)])
    upstream_tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": UPSTREAM_TLS_TYPE, "common_tls_context": {
            "tls_certificate_sds_secret_configs": [sds_ref("client", "0.5s")]}}}  # fmt: skip
    gateway = http_listener("gw", free_port(), [route("/", "to_tls")])
    launcher = None
    try:
        launcher, proxy = start_proxy(implementation, tmp_path, sds_server,
                                      [mtls_listener(free_port(), "0.5s"), gateway],
                                      [static_cluster("backend", [plain.port]),
                                       static_cluster("to_tls", [plain.port], transport_socket=upstream_tls)])
        port = proxy.ports["main"]
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            TlsClient(port, client_context(pki, tmp_path))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"GET /x HTTP/1.1\r\nhost: app\r\n\r\n")
            try:
                answer = raw.recv(100)
            except ConnectionResetError:
                answer = b""
        assert not answer.startswith(b"HTTP/1.1 2")  # never served in cleartext
        # The upstream TLS cluster without its certificate: no cleartext to the plain upstream either.
        reply = httpx.get(proxy.url("gw", "/x"), timeout=5)
        assert reply.status_code == 503
        assert not plain.requests
        stats = proxy.stats()
        assert stats["sds.default.init_fetch_timeout"] == 1 and stats["sds.client.init_fetch_timeout"] == 1
    finally:
        if launcher is not None:
            launcher.close()
        plain.close()


def test_a_bad_secret_is_nacked_naming_the_field(tmp_path: Path, pki: Pki, sds_server: ScriptedAds) -> None:
    upstream = Upstream()
    sds_server.set(SDS, "1", [default_secret(pki, pki.server_a), root_secret(pki)])
    launcher = None
    try:
        launcher, proxy = start_proxy("pylon", tmp_path, sds_server, [mtls_listener(free_port())],
                                      [static_cluster("backend", [upstream.port])])
        mismatched = {"name": "default", "tls_certificate": {
            "certificate_chain": {"inline_bytes": _b64(pki.server_b.cert_pem)},
            "private_key": {"inline_bytes": _b64(pki.server_a.key_pem)}}}
        nonce = sds_server.set(SDS, "2", [mismatched, root_secret(pki)])
        nack = wait_until(lambda: next((r for r in sds_server.requests_for(SDS) if r.response_nonce == nonce
                                        and r.error_detail.message), None), timeout=EFFECT_S)
        assert nack.version_info == "1"
        assert nack.error_detail.message == (
            "secret 'default': config error in ads: resources[0].tls_certificate: private_key does not match the "
            "first certificate of certificate_chain")
        client = TlsClient(proxy.ports["main"], client_context(pki, tmp_path))
        assert (client.server_cn, client.get()) == ("a", 200)  # the last good secret serves
        client.close()
        assert proxy.stats()["sds.default.update_rejected"] == 1
    finally:
        if launcher is not None:
            launcher.close()
        upstream.close()


def tls_listener_naming(port: int, certificate: dict[str, Any]) -> dict[str, Any]:
    """A TLS listener (no client certificate) whose certificate is the SDS secret reference `certificate`."""
    listener = http_listener("main", port, [route("/", "backend")])
    listener["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": {"tls_certificate_sds_secret_configs": [certificate]}}}
    return listener


def server_cn(port: int, pki: Pki, tmp_path: Path) -> str:
    client = TlsClient(port, client_context(pki, tmp_path, certificate=False))
    try:
        assert client.get() == 200
        return client.server_cn
    finally:
        client.close()


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_static_secret_and_file_sds_with_rotation(implementation: str, tmp_path: Path, pki: Pki) -> None:
    """A static secret of the bootstrap (no sds_config), and a secret from a watched file (path_config_source)
    replaced by an atomic rename: the next handshakes use the new certificate."""
    upstream = Upstream()
    secret_file = tmp_path / "sds.yaml"

    def write_secret(leaf: Issued, version: str) -> None:
        staged = tmp_path / "sds.yaml.new"
        staged.write_text(json.dumps({"version_info": version, "resources": [
            {"@type": SDS, **default_secret(pki, leaf, "from_file")}]}))
        staged.replace(secret_file)

    write_secret(pki.server_a, "1")
    static = tls_listener_naming(free_port(), {"name": "static_cert"})
    static["name"] = "static"
    from_file = tls_listener_naming(free_port(), {"name": "from_file", "sds_config": {
        "path_config_source": {"path": str(secret_file)}, "resource_api_version": "V3"}})
    extra = {**NODE, "static_resources": {"secrets": [default_secret(pki, pki.server_b, "static_cert")]}}
    launcher = ProxyLauncher(tmp_path)
    try:
        proxy = launcher.start([static, from_file], [static_cluster("backend", [upstream.port])],
                               implementation=implementation, bootstrap_extra=extra)
        assert server_cn(proxy.ports["static"], pki, tmp_path) == "b"
        assert server_cn(proxy.ports["main"], pki, tmp_path) == "a"
        write_secret(pki.server_b, "2")
        assert wait_until(lambda: server_cn(proxy.ports["main"], pki, tmp_path) == "b", timeout=EFFECT_S)
        assert proxy.stats()["sds.from_file.update_success"] == 2
    finally:
        launcher.close()
        upstream.close()


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_sds_over_ads_for_an_lds_listener(implementation: str, tmp_path: Path, pki: Pki) -> None:
    """Istio's gateways: the listener comes by LDS and its certificate (`kubernetes://NAME`) over the same ADS
    stream; the listener warms until the secret is there."""
    upstream = Upstream()
    ads = ScriptedAds(free_port())
    launcher = ProxyLauncher(tmp_path)
    try:
        ads.start()
        port = free_port()
        listener = tls_listener_naming(port, {"name": "kubernetes://gw-cert", "sds_config": {
            "ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}})
        ads.set(LDS, "1", [listener])
        ads.set(CDS, "1", [static_cluster("backend", [upstream.port])])
        extra, xds = ads_bootstrap(ads.port)
        extra["dynamic_resources"]["lds_config"] = {"ads": {}, "initial_fetch_timeout": "0s",
                                                    "resource_api_version": "V3"}
        ads.set(SDS, "1", [default_secret(pki, pki.server_a, "kubernetes://gw-cert")])
        proxy = launcher.start([], [xds], implementation=implementation, bootstrap_extra=extra)
        proxy.ports["main"] = port
        assert wait_until(lambda: server_cn(port, pki, tmp_path) == "a", timeout=EFFECT_S)
        ads.set(SDS, "2", [default_secret(pki, pki.server_b, "kubernetes://gw-cert")])
        assert wait_until(lambda: server_cn(port, pki, tmp_path) == "b", timeout=EFFECT_S)
        (first, *_) = [r for r in ads.requests_for(SDS) if r.resource_names]
        assert list(first.resource_names) == ["kubernetes://gw-cert"]
    finally:
        launcher.close()
        ads.stop()
        upstream.close()
