"""ServiceEntry `resolution: DYNAMIC_DNS`: istiod's dynamic forward proxy shapes (cluster_builder.go buildDFPCluster,
listener_builder.go's sidecar outbound filter, cluster_tls.go setAutoSniAndAutoSanValidation; the expectations of
istio's cluster_dfp_sidecar_test.go and listener_dfp_test.go), Istio's checks of such a ServiceEntry, and that pylon
proxy's own config model takes what is generated."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.envoy import Cluster, HttpConnectionManager, Listener, convert
from pylon.pilot.gen import generator_for
from pylon.pilot.gen.sidecar import SidecarGenerator
from pylon.pilot.gen.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources
from pylon.config.errors import ConfigError
from pylon.pilot.xds.encode import to_message
from pylon.pilot.snapshot import build_snapshot
from tests.pilot.builders import doc, gateway, gateway_proxy, resources, sidecar_proxy, snapshot, virtual_service

HOST = "*.example.localhost"
NAME = f"outbound|80||{HOST}"
CACHE = {"name": f"{HOST}_dfp_dns_cache", "dns_lookup_family": "V4_ONLY"}
DFP_TYPE = {"name": "envoy.clusters.dynamic_forward_proxy", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
    "dns_cache_config": CACHE}}
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def wildcard_entry(protocol: str = "HTTP", port: int = 80, **spec: Any) -> dict[str, Any]:
    return doc("ServiceEntry", "wild", {"hosts": [HOST], "resolution": "DYNAMIC_DNS", "location": "MESH_EXTERNAL",
                                        "ports": [{"number": port, "name": "p", "protocol": protocol}], **spec})


def rule(tls: dict[str, Any]) -> dict[str, Any]:
    return doc("DestinationRule", "wild", {"host": HOST, "trafficPolicy": {"tls": tls}})


def sidecar(*docs: dict[str, Any]) -> Resources:
    out = SidecarGenerator().generate(sidecar_proxy(), build_snapshot(resources(*docs), version="v"))
    for type_url, items in out.items():
        for item in items.values():
            to_message(type_url, item)  # every resource is valid Envoy API
    for cluster in out[CLUSTER].values():
        convert(cluster, Cluster)  # and pylon proxy takes every cluster
    return out


def outbound_hcm(out: Resources, port: int = 80) -> dict[str, Any]:
    return out[LISTENER][f"0.0.0.0_{port}"]["filter_chains"][0]["filters"][0]["typed_config"]


def test_a_wildcard_http_port_gets_a_dfp_cluster_and_the_outbound_filter() -> None:
    out = sidecar(wildcard_entry())
    assert out[CLUSTER][NAME] == {
        "name": NAME, "lb_policy": "CLUSTER_PROVIDED", "cluster_type": DFP_TYPE, "connect_timeout": "10s",
        "circuit_breakers": {"thresholds": [{"max_connections": 2**32 - 1, "max_pending_requests": 2**32 - 1,
                                             "max_requests": 2**32 - 1, "max_retries": 2**32 - 1,
                                             "track_remaining": True}]},
        "metadata": {"filter_metadata": {"istio": {"external": True}}}}
    assert NAME not in out[ENDPOINT]
    hcm = outbound_hcm(out)
    assert [f["name"] for f in hcm["http_filters"]] == [
        "envoy.filters.http.fault", "envoy.filters.http.cors", "envoy.filters.http.dynamic_forward_proxy",
        "envoy.filters.http.router"]
    assert hcm["http_filters"][2]["typed_config"]["dns_cache_config"] == CACHE  # the cluster's, by name and settings
    [vhost] = [v for v in out[ROUTE]["80"]["virtual_hosts"] if v["name"] == f"{HOST}:80"]
    assert vhost["domains"] == [HOST, f"{HOST}:80"] and vhost["routes"][0]["route"]["cluster"] == NAME
    proxy_hcm = dict(hcm)
    proxy_hcm.pop("@type")
    convert(proxy_hcm, HttpConnectionManager)  # pylon proxy takes the connection manager and its filter


def test_other_ports_get_no_filter_and_grpc_speaks_http2() -> None:
    out = sidecar(wildcard_entry("GRPC", 9090), doc("ServiceEntry", "plain", {
        "hosts": ["plain.example.com"], "resolution": "STATIC", "ports": [{"number": 80, "name": "h", "protocol": "HTTP"}],
        "endpoints": [{"address": "10.0.0.1"}]}))
    assert "envoy.filters.http.dynamic_forward_proxy" not in [f["name"] for f in outbound_hcm(out)["http_filters"]]
    grpc = out[CLUSTER][f"outbound|9090||{HOST}"]
    assert "dynamic_forward_proxy" in grpc["cluster_type"]["name"]
    options = grpc["typed_extension_protocol_options"][HTTP_OPTIONS]
    assert options["explicit_http_config"] == {"http2_protocol_options": {}}
    # typed options must bring what Envoy implies without them, or Envoy refuses the cluster (istiod's shape would)
    assert options["upstream_http_protocol_options"] == {"auto_sni": True, "auto_san_validation": True}


def test_a_wildcard_tls_port_resolves_the_sni_before_tcp_proxy_passes_the_connection_through() -> None:
    out = sidecar(wildcard_entry("TLS", 8443))
    name = f"outbound|8443||{HOST}"
    cluster = out[CLUSTER][name]
    assert cluster["cluster_type"] == DFP_TYPE and "transport_socket" not in cluster  # pass-through: no TLS
    listener = out[LISTENER]["0.0.0.0_8443"]
    assert [f["name"] for f in listener["listener_filters"]] == ["envoy.filters.listener.tls_inspector"]
    [chain] = listener["filter_chains"]
    assert chain["filter_chain_match"] == {"server_names": [HOST]}
    sni, tcp = chain["filters"]
    assert sni == {"name": "envoy.filters.network.sni_dynamic_forward_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig",
        "dns_cache_config": CACHE, "port_value": 8443}}
    assert tcp["name"] == "envoy.filters.network.tcp_proxy" and tcp["typed_config"]["cluster"] == name
    convert(listener, Listener)  # pylon proxy takes the listener and its filter


@pytest.mark.parametrize(("tls", "options", "insecure"), [
    ({"mode": "SIMPLE"}, {"auto_sni": True, "auto_san_validation": True}, False),
    ({"mode": "SIMPLE", "subjectAltNames": ["a.example.localhost"]}, {"auto_sni": True, "auto_san_validation": True},
     False),  # a DFP cluster validates the request's name even next to the rule's SANs
    ({"mode": "SIMPLE", "sni": "fixed.example.localhost"}, {"auto_san_validation": True}, True),
    ({"mode": "SIMPLE", "insecureSkipVerify": True}, {"auto_sni": True}, True),
    ({"mode": "ISTIO_MUTUAL"}, {"auto_sni": True, "auto_san_validation": True}, False),
])  # fmt: skip
def test_upstream_tls_names_each_request_host(tls: dict[str, Any], options: dict[str, Any], insecure: bool) -> None:
    cluster = sidecar(wildcard_entry(), rule(tls))[CLUSTER][NAME]
    assert cluster["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    assert cluster["transport_socket"]["typed_config"].get("sni", "") == tls.get("sni", "")  # never the mesh SNI
    assert cluster["typed_extension_protocol_options"][HTTP_OPTIONS]["upstream_http_protocol_options"] == options
    assert cluster["cluster_type"]["typed_config"].get("allow_insecure_cluster_options", False) is insecure


def test_a_mesh_internal_service_gets_auto_mtls_which_its_hosts_never_match() -> None:
    cluster = sidecar(wildcard_entry(location="MESH_INTERNAL"))[CLUSTER][NAME]
    assert [m["name"] for m in cluster["transport_socket_matches"]] == ["tlsMode-istio", "tlsMode-disabled"]
    assert "sni" not in cluster["transport_socket_matches"][0]["transport_socket"]["typed_config"]
    assert cluster["typed_extension_protocol_options"][HTTP_OPTIONS]["upstream_http_protocol_options"] == {
        "auto_sni": True, "auto_san_validation": True}
    assert "metadata" not in cluster


def test_gateways_get_the_cluster_without_the_filter() -> None:
    proxy = gateway_proxy()
    out = generator_for(proxy).generate(proxy, snapshot(
        gateway(8080), wildcard_entry(), virtual_service([{"route": [{"destination": {"host": HOST}}]}], hosts=["*"])))
    assert out[CLUSTER][NAME]["cluster_type"] == DFP_TYPE
    filters = out[LISTENER]["0.0.0.0_8080"]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    assert "envoy.filters.http.dynamic_forward_proxy" not in [f["name"] for f in filters]


@pytest.mark.parametrize(("spec", "path", "message"), [
    ({"hosts": ["a.example.localhost"]}, "spec.hosts[0]", "host must be wildcarded for resolution mode DYNAMIC_DNS"),
    ({"addresses": ["10.0.0.1"]}, "spec.addresses", "addresses cannot be set for resolution type DYNAMIC_DNS"),
    ({"endpoints": [{"address": "10.0.0.1"}]}, "spec.endpoints", "endpoints cannot be set for resolution type"),
    ({"ports": [{"number": 5432, "name": "db", "protocol": "TCP"}]}, "spec.ports[0].protocol",
     "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type DYNAMIC_DNS"),
    ({"workloadSelector": {"labels": {"app": "a"}}}, "spec.workloadSelector", "not supported by pylon pilot yet"),
])  # fmt: skip
def test_istios_checks_of_a_dynamic_dns_service_entry(spec: dict[str, Any], path: str, message: str) -> None:
    entry = wildcard_entry()
    entry["spec"].update(spec)
    with pytest.raises(ConfigError) as caught:
        resources(entry)
    assert caught.value.path == path and message in caught.value.message
