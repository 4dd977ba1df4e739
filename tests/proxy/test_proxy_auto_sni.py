"""Integration: a cluster's `auto_sni` and `auto_san_validation` (upstream HTTP protocol options), through pylon
and through Envoy 1.40 with the same config and the same assertions.

What pilot generates for a DestinationRule SIMPLE/MUTUAL without `sni`: the SNI of each upstream connection is
the request's host, the server certificate must name it, and connections made for one host never carry another's
requests.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pylon.identity.certs import Issued, issue_leaf, make_ca
from tests.conftest import free_port
from tests.proxy.conftest import UPSTREAM_TLS_TYPE, ProxyLauncher, RunningProxy, http_listener, static_cluster
from tests.proxy.upstreams import Upstream

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#: The upstream's certificate: these names only (b.example.com is not among them).
NAMES = ["a.example.com", "*.wild.example.com"]


@dataclass
class Backend:
    ca: Issued
    directory: Path
    server: Upstream

    @property
    def ca_file(self) -> dict[str, str]:
        path = self.directory / "ca.pem"
        path.write_bytes(self.ca.cert_pem)
        return {"filename": str(path)}


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    directory = tmp_path_factory.mktemp("auto-sni")
    ca = make_ca()
    leaf = issue_leaf(ca, common_name="a", dns_names=NAMES)
    (directory / "server.pem").write_bytes(leaf.cert_pem + leaf.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem")
    server = Upstream(tls=context)
    yield Backend(ca, directory, server)
    server.close()


def cluster(name: str, backend: Backend, options: dict[str, Any], *, ca: bool = True, sni: str = "",
            deprecated_field: bool = False) -> dict[str, Any]:
    tls: dict[str, Any] = {"@type": UPSTREAM_TLS_TYPE, "common_tls_context": {
        "validation_context": {"trusted_ca": backend.ca_file}} if ca else {}}
    if sni:
        tls["sni"] = sni
    extra: dict[str, Any] = {"transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls}}
    if deprecated_field:
        extra["upstream_http_protocol_options"] = options
    else:
        extra["typed_extension_protocol_options"] = {HTTP_OPTIONS: {
            "@type": f"type.googleapis.com/{HTTP_OPTIONS}", "explicit_http_config": {"http_protocol_options": {}},
            "upstream_http_protocol_options": options}}
    return static_cluster(name, [backend.server.port], **extra)


CLUSTERS = {
    "sni": lambda b: cluster("sni", b, {"auto_sni": True}, sni="fixed.example"),
    "both": lambda b: cluster("both", b, {"auto_sni": True, "auto_san_validation": True}),
    "san_only": lambda b: cluster("san_only", b, {"auto_san_validation": True}, sni="fixed.example"),
    "no_ca": lambda b: cluster("no_ca", b, {"auto_sni": True, "auto_san_validation": True}, ca=False),
    "override": lambda b: cluster("override", b, {"auto_sni": True, "override_auto_sni_header": "x-sni"}),
    "deprecated": lambda b: cluster("deprecated", b, {"auto_sni": True}, deprecated_field=True),
}


@dataclass
class Front:
    proxy: RunningProxy
    port: int
    backend: Backend

    def get(self, path: str, host: str, **headers: str) -> tuple[int, str | None, int | None]:
        """(status, SNI the upstream saw, the proxy's client port at the upstream) of one request."""
        before = len(self.backend.server.requests)
        response = httpx.get(f"http://127.0.0.1:{self.port}{path}", headers={"host": host, **headers}, timeout=5)
        seen = self.backend.server.requests[before:]
        if not seen:
            return response.status_code, None, None
        return response.status_code, seen[-1]["sni"], seen[-1]["client_port"]


@pytest.fixture(params=["pylon", "envoy"])
def front(request: pytest.FixtureRequest, backend: Backend, tmp_path: Path) -> Iterator[Front]:
    launcher = ProxyLauncher(tmp_path)
    try:
        routes = [{"match": {"prefix": f"/{name}"}, "route": {"cluster": name}} for name in CLUSTERS]
        routes.append({"match": {"prefix": "/rewrite"}, "route": {"cluster": "sni",
                                                                   "host_rewrite_literal": "r.wild.example.com"}})
        port = free_port()
        proxy = launcher.start([http_listener("web", port, routes)], [make(backend) for make in CLUSTERS.values()],
                               implementation=request.param)
        yield Front(proxy, port, backend)
    finally:
        launcher.close()


def test_auto_sni_sends_the_requests_host_without_its_port(front: Front) -> None:
    assert front.get("/sni", "a.example.com")[:2] == (200, "a.example.com")
    assert front.get("/sni", "x.wild.example.com:8443")[:2] == (200, "x.wild.example.com")
    assert front.get("/sni", "b.example.com")[:2] == (200, "b.example.com")  # no SAN check asked for here
    assert front.get("/deprecated", "c.example.com")[:2] == (200, "c.example.com")  # the cluster's deprecated field


def test_an_ip_address_host_sets_no_sni_the_contexts_own_stays(front: Front) -> None:
    assert front.get("/sni", "127.0.0.1:80")[:2] == (200, "fixed.example")
    assert front.get("/sni", "[::1]")[:2] == (200, "fixed.example")


def test_the_host_rewrite_and_the_override_header_name_the_sni(front: Front) -> None:
    assert front.get("/rewrite", "b.example.com")[:2] == (200, "r.wild.example.com")
    assert front.get("/override", "a.example.com", **{"x-sni": "o.example.com:99"})[:2] == (200, "o.example.com")
    assert front.get("/override", "q.example.com")[:2] == (200, "q.example.com")  # no header: the host


def test_two_hosts_never_share_a_connection(front: Front) -> None:
    """Keep-alive connections are reused per host name only: a request for b never rides a connection made (and
    named in its handshake) for a."""
    a1 = front.get("/sni", "one.wild.example.com")
    b1 = front.get("/sni", "two.wild.example.com")
    a2 = front.get("/sni", "one.wild.example.com")
    b2 = front.get("/sni", "two.wild.example.com")
    assert [r[1] for r in (a1, b1, a2, b2)] == ["one.wild.example.com", "two.wild.example.com"] * 2
    assert a1[2] == a2[2] and b1[2] == b2[2] and a1[2] != b1[2]


def test_auto_san_validation_refuses_a_certificate_without_the_host(front: Front) -> None:
    assert front.get("/both", "a.example.com")[:2] == (200, "a.example.com")
    assert front.get("/both", "x.wild.example.com")[:2] == (200, "x.wild.example.com")
    assert front.get("/both", "b.example.com") == (503, None, None)
    assert front.get("/both", "127.0.0.1") == (503, None, None)  # an IP host is required as an IP SAN
    assert front.proxy.stats()["cluster.both.upstream_cx_connect_fail"] == 2
    # With the configured SNI kept, the SAN check still follows the request's host.
    assert front.get("/san_only", "a.example.com")[:2] == (200, "fixed.example")
    assert front.get("/san_only", "b.example.com") == (503, None, None)


def test_auto_san_validation_without_a_trusted_ca_fails_every_connection(front: Front) -> None:
    assert front.get("/no_ca", "a.example.com") == (503, None, None)
