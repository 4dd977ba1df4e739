"""Integration: envoy.filters.http.rbac and envoy.filters.network.rbac through pylon and Envoy 1.40 alike.

An mTLS listener whose RBAC lets only the URI SAN spiffe://cluster.local/ns/default/sa/allowed reach
/public, behind a header-based DENY filter, with shadow rules and a route that turns the ALLOW filter
off; remote_ip against direct_remote_ip behind x-forwarded-for; the filters pylon's own pilot
generates for AuthorizationPolicies (HTTP and TCP), loaded and enforced. Each request's status,
body, access-log flags and details, and the stats are compared with what Envoy 1.40 does.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pylon.identity.certs import KeyType, PemFiles, Usage, issue_leaf, make_ca, write_pem_files
from pylon.pilot.gen.authz import http_rbac_filters, network_rbac_filters, policies_for
from tests.conftest import free_port
from tests.pilot.builders import doc, sidecar_proxy, snapshot
from tests.proxy.conftest import (
    DOWNSTREAM_TLS_TYPE, ProxyLauncher, RunningProxy, http_listener, json_access_log, read_json_lines, route,
    static_cluster, tcp_listener, wait_until,
)
from tests.proxy.upstreams import TcpEcho, Upstream

RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
SANS = {
    "allowed": "spiffe://cluster.local/ns/default/sa/allowed",
    "other": "spiffe://cluster.local/ns/default/sa/other",
    "outsider": "spiffe://cluster.local/ns/elsewhere/sa/x",
}
ANY = [{"any": True}]


@dataclass
class Pki:
    server: PemFiles
    clients: dict[str, PemFiles]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    server = write_pem_files(directory, "server", issue_leaf(
        ca, common_name="localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"]), ca)
    clients = {name: write_pem_files(directory, name, issue_leaf(ca, uris=[san], usage=Usage.CLIENT,
                                                                 key_type=KeyType.ECDSA_P256), ca)
               for name, san in SANS.items()}  # fmt: skip
    return Pki(server, clients)


def mtls(listener: dict[str, Any], pki: Pki) -> dict[str, Any]:
    listener["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS_TYPE, "require_client_certificate": True, "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(pki.server.cert)},
                                  "private_key": {"filename": str(pki.server.key)}}],
            "validation_context": {"trusted_ca": {"filename": str(pki.server.ca)}}}}}
    return listener


def with_filters(listener: dict[str, Any], filters: list[dict[str, Any]]) -> dict[str, Any]:
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [*filters, ROUTER]
    return listener


def client_context(pki: Pki, who: str) -> ssl.SSLContext:
    pem = pki.clients[who]
    ctx = ssl.create_default_context(cafile=str(pem.ca))
    ctx.load_cert_chain(str(pem.cert), str(pem.key))
    return ctx


def rbac_stats(proxy: RunningProxy) -> dict[str, int]:
    return {name: value for name, value in proxy.stats().items() if ".rbac." in name or name.startswith("tcp.rbac")}


def policy(permissions: list[dict[str, Any]], principals: list[dict[str, Any]]) -> dict[str, Any]:
    return {"permissions": permissions, "principals": principals}


def path_prefix(prefix: str) -> dict[str, Any]:
    return {"url_path": {"path": {"prefix": prefix}}}


@dataclass
class Gateway:
    proxy: RunningProxy
    port: int
    log: Path
    pki: Pki

    def get(self, who: str, path: str, **headers: str) -> httpx.Response:
        return httpx.get(f"https://localhost:{self.port}{path}", headers=headers, verify=client_context(self.pki, who),
                         timeout=5)

    def logged(self, count: int) -> list[tuple[str, int, str, str]]:
        lines = read_json_lines(self.log, count)
        return [(line["path"], line["code"], line["flags"], line["details"]) for line in lines]


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


def start(implementation: str, tmp_path: Path, pki: Pki, upstream: Upstream, filters: list[dict[str, Any]],
          routes: list[dict[str, Any]] | None = None) -> tuple[ProxyLauncher, Gateway]:
    port, log = free_port(), tmp_path / f"{implementation}-access.log"
    listener = mtls(with_filters(http_listener("main", port, [*(routes or []), route("/", "a")],
                                               access_log=json_access_log(log)), filters), pki)
    launcher = ProxyLauncher(tmp_path)
    try:
        proxy = launcher.start([listener], [static_cluster("a", [upstream.port])], implementation=implementation)
    except BaseException:
        launcher.close()
        raise
    return launcher, Gateway(proxy, port, log, pki)


def test_mtls_rbac_allows_only_the_spiffe_id_on_public(implementation: str, tmp_path: Path, pki: Pki,
                                                        upstream: Upstream) -> None:
    deny = {"name": "deny", "typed_config": {"@type": RBAC_TYPE, "rules_stat_prefix": "deny", "rules": {
        "action": "DENY", "policies": {"blocked-header": policy([{"header": {"name": "x-block", "present_match": True}}],
                                                                ANY)}}}}  # fmt: skip
    allow = {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": RBAC_TYPE, "track_per_rule_stats": True,
        "rules": {"action": "ALLOW", "policies": {"allowed-public": policy(
            [path_prefix("/public")], [{"authenticated": {"principal_name": {"exact": SANS["allowed"]}}}])}},
        "shadow_rules": {"action": "DENY", "policies": {"shadow-public-b": policy([path_prefix("/public/b")], ANY)}},
        "shadow_rules_stat_prefix": "audit_"}}
    open_route = route("/open", "a")
    open_route["typed_per_filter_config"] = {"envoy.filters.http.rbac": {"@type": PER_ROUTE_TYPE}}
    launcher, gateway = start(implementation, tmp_path, pki, upstream, [deny, allow], [open_route])
    try:
        cases = [
            ("allowed", "/public/a", {}, 200),
            ("other", "/public/a", {}, 403),  # another SAN
            ("allowed", "/private", {}, 403),  # no policy for the path
            ("allowed", "/public/a", {"x-block": "1"}, 403),  # the DENY filter
            ("allowed", "/public/b", {}, 200),  # the shadow DENY only counts
            ("other", "/open/x", {}, 200),  # the route turns the ALLOW filter off
            ("other", "/open/x", {"x-block": "1"}, 403),  # ... not the DENY filter
        ]
        replies = [gateway.get(who, path, **headers) for who, path, headers, _ in cases]
        assert [r.status_code for r in replies] == [status for *_, status in cases]
        denied = replies[1]
        assert (denied.text, denied.headers["content-type"]) == ("RBAC: access denied", "text/plain")
        assert gateway.logged(len(cases)) == [
            ("/public/a", 200, "-", "via_upstream"),
            ("/public/a", 403, "-", "rbac_access_denied_matched_policy[none]"),
            ("/private", 403, "-", "rbac_access_denied_matched_policy[none]"),
            ("/public/a", 403, "-", "rbac_access_denied_matched_policy[blocked-header]"),
            ("/public/b", 200, "-", "via_upstream"),
            ("/open/x", 200, "-", "via_upstream"),
            ("/open/x", 403, "-", "rbac_access_denied_matched_policy[blocked-header]"),
        ]
        assert rbac_stats(gateway.proxy) == {
            "http.main.rbac.deny.allowed": 5, "http.main.rbac.deny.denied": 2,
            "http.main.rbac.shadow_allowed": 0, "http.main.rbac.shadow_denied": 0,  # the DENY filter's, unused
            "http.main.rbac.allowed": 2, "http.main.rbac.denied": 2,
            "http.main.rbac.policy.allowed-public.allowed": 2,
            "http.main.rbac.audit_.shadow_allowed": 3, "http.main.rbac.audit_.shadow_denied": 1,
            "http.main.rbac.audit_.policy.shadow-public-b.shadow_denied": 1,
        }
        assert [r["path"] for r in upstream.requests] == ["/public/a", "/public/b", "/open/x"]
    finally:
        launcher.close()


def test_remote_ip_is_the_trusted_client_direct_remote_ip_the_peer(implementation: str, tmp_path: Path,
                                                                   upstream: Upstream) -> None:
    rules = {"action": "DENY", "policies": {
        "by-client": policy([path_prefix("/remote")], [{"remote_ip": {"address_prefix": "10.9.9.9", "prefix_len": 32}}]),
        "by-peer": policy([path_prefix("/direct")], [{"direct_remote_ip": {"address_prefix": "127.0.0.1",
                                                                           "prefix_len": 32}}]),
    }}  # fmt: skip
    filters = [{"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC_TYPE, "rules": rules}}]
    ports = {"edge": free_port(), "inner": free_port(), "hops": free_port()}
    listeners = [
        with_filters(http_listener("edge", ports["edge"], [route("/", "a")], use_remote_address=True), filters),
        with_filters(http_listener("inner", ports["inner"], [route("/", "a")]), filters),
        with_filters(http_listener("hops", ports["hops"], [route("/", "a")], xff_num_trusted_hops=1), filters),
    ]
    launcher = ProxyLauncher(tmp_path)
    try:
        launcher.start(listeners, [static_cluster("a", [upstream.port])], implementation=implementation)

        def status(listener: str, path: str, xff: str | None = None) -> int:
            headers = {"x-forwarded-for": xff} if xff is not None else {}
            return httpx.get(f"http://127.0.0.1:{ports[listener]}{path}", headers=headers, timeout=5).status_code

        assert [
            status("inner", "/remote", "10.9.9.9"),  # behind a proxy: the last x-forwarded-for entry
            status("inner", "/remote", "10.9.9.9, 1.2.3.4"),
            status("inner", "/remote", "10.9.9.9:1234"),  # not an IP: the peer
            status("edge", "/remote", "10.9.9.9"),  # at the edge only the peer counts
            status("hops", "/remote", "10.9.9.9"),  # one trusted hop needs two entries
            status("hops", "/remote", "10.9.9.9, 1.2.3.4"),
            status("inner", "/direct", "10.9.9.9"),  # direct_remote_ip: always the socket peer
            status("edge", "/direct"),
        ] == [403, 200, 200, 200, 200, 403, 403, 403]
    finally:
        launcher.close()


def authorization_policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return doc("AuthorizationPolicy", name, spec, namespace="default", api_version="security.istio.io/v1")


PILOT_POLICIES = [
    authorization_policy("allow", {"rules": [
        {"from": [{"source": {"principals": ["cluster.local/ns/default/sa/allowed"]}}],
         "to": [{"operation": {"paths": ["/public*"]}}]},
        {"when": [{"key": "request.headers[x-token]", "values": ["secret"]}]},
        {"to": [{"operation": {"paths": ["/jwt"]}}], "when": [{"key": "request.auth.principal", "values": ["*"]}]},
    ]}),
    authorization_policy("deny", {"action": "DENY", "rules": [{"from": [{"source": {"notNamespaces": ["default"]}}]}]}),
    authorization_policy("audit", {"action": "AUDIT", "rules": [{}]}),
]  # fmt: skip


def test_filters_pilot_generates_for_authorization_policies(implementation: str, tmp_path: Path, pki: Pki,
                                                            upstream: Upstream) -> None:
    filters = http_rbac_filters(policies_for(sidecar_proxy(), snapshot(*PILOT_POLICIES)))
    assert [f["typed_config"]["rules"]["action"] for f in filters] == ["LOG", "DENY", "ALLOW"]
    launcher, gateway = start(implementation, tmp_path, pki, upstream, filters)
    try:
        cases = [
            ("allowed", "/public/a", {}, 200),
            ("other", "/public/a", {}, 403),  # only sa/allowed may reach /public
            ("other", "/x", {"x-token": "secret"}, 200),
            ("outsider", "/x", {"x-token": "secret"}, 403),  # DENY: not from namespace default
            ("allowed", "/jwt", {}, 403),  # request.auth.*: no RequestAuthentication, never matches
        ]
        assert [gateway.get(who, path, **headers).status_code for who, path, headers, _ in cases] == [
            status for *_, status in cases]
        assert [details for *_, details in gateway.logged(len(cases))] == [
            "via_upstream", "rbac_access_denied_matched_policy[none]", "via_upstream",
            "rbac_access_denied_matched_policy[ns[default]-policy[deny]-rule[0]]",
            "rbac_access_denied_matched_policy[none]"]
        # The three filters share their stats: LOG allowed 5; DENY allowed 4, denied 1; ALLOW allowed 2, denied 2.
        assert rbac_stats(gateway.proxy) == {"http.main.rbac.allowed": 11, "http.main.rbac.denied": 3,
                                             "http.main.rbac.shadow_allowed": 0, "http.main.rbac.shadow_denied": 0}
    finally:
        launcher.close()


# --------------------------------------------------------------------------- the network filter


@dataclass
class Exchange:
    data: bytes
    ended: str  # "complete", "eof", "reset", "ssl: ...", "handshake: ...", "timeout"


def tls_exchange(port: int, pki: Pki, who: str, payload: bytes, timeout: float = 3.0) -> Exchange:
    """Send `payload` over mTLS as `who`; read until it came back or the connection ended."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            sock = client_context(pki, who).wrap_socket(raw, server_hostname="localhost")
        except (ssl.SSLError, OSError) as exc:
            return Exchange(b"", f"handshake: {type(exc).__name__}")
        with sock:
            data = b""
            try:
                sock.sendall(payload)
                while len(data) < len(payload):
                    chunk = sock.recv(65536)
                    if not chunk:
                        return Exchange(data, "eof")
                    data += chunk
            except socket.timeout:
                return Exchange(data, "timeout")
            except ssl.SSLError as exc:
                return Exchange(data, f"ssl: {exc}")
            except (ConnectionResetError, BrokenPipeError):
                return Exchange(data, "reset")
            return Exchange(data, "complete")
    finally:
        raw.close()


def test_network_rbac_pilot_generates_for_a_tcp_port(implementation: str, tmp_path: Path, pki: Pki) -> None:
    """Needs the network filter chain in tcp_proxy (network filters ahead of the terminal one)."""
    port = free_port()
    policies = [authorization_policy("db", {"rules": [{
        "from": [{"source": {"principals": ["cluster.local/ns/default/sa/allowed"]}}],
        "to": [{"operation": {"ports": [str(port)]}}]}]})]  # fmt: skip
    filters = network_rbac_filters(policies_for(sidecar_proxy(), snapshot(*policies)))
    assert [f["typed_config"]["stat_prefix"] for f in filters] == ["tcp."]
    log = tmp_path / "tcp.log"
    access_log = json_access_log(log)
    access_log[0]["typed_config"]["log_format"]["json_format"] = {
        "termination": "%CONNECTION_TERMINATION_DETAILS%", "sni": "%REQUESTED_SERVER_NAME%",
        "cluster": "%UPSTREAM_CLUSTER_RAW%"}  # fmt: skip
    listener = mtls(tcp_listener("tcp_in", port, "echo", access_log=access_log), pki)
    listener["filter_chains"][0]["filters"][:0] = filters
    listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]
    echo, launcher = TcpEcho(), ProxyLauncher(tmp_path)
    try:
        proxy = launcher.start([listener], [static_cluster("echo", [echo.port])], implementation=implementation)
        allowed = tls_exchange(port, pki, "allowed", b"hello")
        assert (allowed.data, allowed.ended) == (b"hello", "complete")
        refused = tls_exchange(port, pki, "other", b"secret")
        assert refused.data == b"" and refused.ended != "complete", refused
        expected = {"tcp.rbac.allowed": 1, "tcp.rbac.denied": 1, "tcp.rbac.shadow_allowed": 0,
                    "tcp.rbac.shadow_denied": 0}
        assert wait_until(lambda: rbac_stats(proxy) == expected, timeout=3), rbac_stats(proxy)
        # The access log says why the refused connection ended (Envoy's connection termination details).
        lines = read_json_lines(log, 2)
        assert sorted((line["termination"] or "", line["sni"], line["cluster"]) for line in lines) == [
            ("", "localhost", "echo"), ("rbac_access_denied_matched_policy[none]", "localhost", "echo")]
    finally:
        launcher.close()
        echo.close()
