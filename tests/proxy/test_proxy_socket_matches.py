"""Integration: a cluster's transport_socket_matches (Istio's auto mTLS), through pylon and Envoy 1.40 alike.

One cluster, two hosts: the one whose endpoint metadata says `tlsMode: istio` gets the TLS transport socket
(an HTTPS upstream that checks nothing but records the SNI), the other gets `raw_buffer` by the catch-all
match (a plain upstream). Round robin sends half the requests to each; every one must be answered — a proxy
that sent cleartext to the TLS host, or TLS to the plain one, would fail half of them. A second cluster has
only the TLS match and hosts without that metadata: they get the cluster's own transport socket (none).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pylon.identity.certs import make_test_pki
from tests.conftest import free_port
from tests.proxy.conftest import UPSTREAM_TLS_TYPE, ProxyLauncher, RunningProxy, http_listener, route
from tests.proxy.upstreams import Upstream

RAW_BUFFER = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
ISTIO = {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}


def endpoint(port: int, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    lb: dict[str, Any] = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    if metadata is not None:
        lb["metadata"] = metadata
    return lb


def cluster(name: str, endpoints: list[dict[str, Any]], matches: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
            "transport_socket_matches": matches}


TLS_MATCH = {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": {
    "name": "envoy.transport_sockets.tls",
    "typed_config": {"@type": UPSTREAM_TLS_TYPE, "sni": "outbound_.80_._.reviews.default.svc.cluster.local"}}}
PLAIN_MATCH = {"name": "tlsMode-disabled", "match": {},
               "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": RAW_BUFFER}}}


@pytest.fixture(params=["pylon", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RunningProxy, Upstream, Upstream]]:
    pki = make_test_pki(tmp_path / "pki")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.server_ecdsa.cert, pki.server_ecdsa.key)
    secure, plain = Upstream(tls=server), Upstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        listener = http_listener("main", free_port(), [route("/only-tls-match", "fallback"), route("/", "mixed")])
        clusters = [cluster("mixed", [endpoint(secure.port, ISTIO), endpoint(plain.port)], [TLS_MATCH, PLAIN_MATCH]),
                    cluster("fallback", [endpoint(plain.port, {"filter_metadata": {"other": {"tlsMode": "istio"}}})],
                            [TLS_MATCH])]
        yield launcher.start([listener], clusters, implementation=request.param), secure, plain
    finally:
        launcher.close()
        secure.close()
        plain.close()


def test_each_host_gets_its_matching_transport_socket(proxy: tuple[RunningProxy, Upstream, Upstream]) -> None:
    running, secure, plain = proxy
    statuses = [httpx.get(running.url("main", "/x"), timeout=5).status_code for _ in range(6)]
    assert statuses == [200] * 6
    assert len(secure.requests) == 3 and len(plain.requests) == 3
    assert {r["sni"] for r in secure.requests} == {"outbound_.80_._.reviews.default.svc.cluster.local"}
    # Metadata under another namespace matches nothing: the cluster's own transport socket (plain TCP).
    assert httpx.get(running.url("main", "/only-tls-match"), timeout=5).status_code == 200
    assert len(plain.requests) == 4
