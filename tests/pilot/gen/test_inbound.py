"""A sidecar's inbound side from a Sidecar's `ingress` and connection pools: istiod's listeners and clusters."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from pylon.pilot.gen import SharedGenerations
from pylon.pilot.gen.sidecar import SidecarGenerator
from pylon.pilot.gen.types import CLUSTER, LISTENER, Json
from pylon.pilot.proxy import parse_node
from pylon.pilot.snapshot import build_snapshot
from pylon.pilot.xds.encode import to_message
from tests.pilot.builders import SIDECAR_NODE, doc, resources
from tests.pilot.gen.test_sidecar import mesh_docs
from tests.pilot.harness import ENVOY, needs_envoy, validate_static

CLIENT = "client.default.svc.cluster.local"
HTTP_9090 = {"number": 9090, "name": "web", "protocol": "HTTP"}
TLS_FILES = {"serverCertificate": "/etc/certs/cert.pem", "privateKey": "/etc/certs/key.pem"}
DISABLE = doc("PeerAuthentication", "off", {"mtls": {"mode": "DISABLE"}}, api_version="security.istio.io/v1")


def with_ingress(*ingress: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return doc("Sidecar", "client", {"workloadSelector": {"labels": {"app": "client"}}, "ingress": list(ingress), **spec})


def generate(*extra: dict[str, Any], ip: str = "127.0.0.1", **metadata: str) -> dict[str, Any]:
    proxy = parse_node(SIDECAR_NODE.replace("127.0.0.1", ip), {"NAMESPACE": "default", "LABELS": {"app": "client"},
                                                                **metadata})  # fmt: skip
    out = SidecarGenerator().generate(proxy, build_snapshot(resources(*mesh_docs(), *extra), version="v"))
    for type_url, items in out.items():
        for item in items.values():
            to_message(type_url, item)  # every resource is valid Envoy API
    return out


def chains(listener: Json) -> list[str]:
    return [c["name"] for c in listener["filter_chains"]]


def endpoint_address(cluster: Json) -> Json:
    return cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]


def test_ingress_ports_replace_the_service_ports_on_virtual_inbound() -> None:
    out = generate(with_ingress({"port": HTTP_9090, "defaultEndpoint": "127.0.0.1:8081"}))
    inbound = out[LISTENER]["virtualInbound"]
    # the services' 8080 and 5432 are gone: ingress listeners take their place (PERMISSIVE: TLS and plaintext)
    assert chains(inbound) == ["virtualInbound-blackhole", "0.0.0.0_9090", "0.0.0.0_9090", "virtualInbound-catchall-tcp",
                               "virtualInbound-catchall-tcp"]  # fmt: skip
    chain = inbound["filter_chains"][2]
    assert chain["filter_chain_match"] == {"destination_port": 9090, "transport_protocol": "raw_buffer"}
    assert chain["metadata"] == {"filter_metadata": {"istio": {
        "config": "/apis/networking.istio.io/v1/namespaces/default/sidecar/client"}}}  # fmt: skip
    manager = chain["filters"][0]["typed_config"]
    assert manager["stat_prefix"] == "inbound_0.0.0.0_9090"
    [vhost] = manager["route_config"]["virtual_hosts"]
    assert (manager["route_config"]["name"], vhost["name"]) == ("inbound|9090||", "inbound|http|9090")
    assert vhost["routes"][0]["route"]["cluster"] == "inbound|9090||"
    assert vhost["routes"][0]["decorator"] == {"operation": "client.default:9090/*"}  # the Sidecar's name, not a host
    assert not {"inbound|8080||", "inbound|5432||"} & set(out[CLUSTER])
    cluster = out[CLUSTER]["inbound|9090||"]
    assert (cluster["type"], "upstream_bind_config" in cluster, "metadata" in cluster) == ("STATIC", False, False)
    assert endpoint_address(cluster) == {"socket_address": {"address": "127.0.0.1", "port_value": 8081}}


def test_an_ingress_port_that_is_a_service_target_port_keeps_the_services_metadata() -> None:
    out = generate(with_ingress({"port": {"number": 8080, "protocol": "HTTP"}}))
    cluster = out[CLUSTER]["inbound|8080||"]
    # no defaultEndpoint: the original destination, from 127.0.0.6
    assert (cluster["type"], cluster["upstream_bind_config"]["source_address"]["address"]) == ("ORIGINAL_DST", "127.0.0.6")
    assert cluster["metadata"]["filter_metadata"]["istio"]["services"][0]["host"] == CLIENT


def test_bind_default_endpoints_and_the_proxys_own_ip() -> None:
    sidecar = with_ingress({"port": HTTP_9090, "defaultEndpoint": "0.0.0.0:8081"},
                           {"port": {"number": 9091, "protocol": "TCP"}, "bind": "10.9.9.9", "defaultEndpoint": "[::1]:8082"},
                           {"port": {"number": 9092, "protocol": "TCP"}, "defaultEndpoint": "unix:///var/run/app.sock"},
                           {"port": {"number": 9093, "protocol": "TCP"}, "defaultEndpoint": "[::]:8083"})  # fmt: skip
    out = generate(sidecar, ip="10.1.2.3")
    # no bind: the proxy's global unicast IP names (and in NONE capture mode binds) the chains
    assert "10.1.2.3_9090" in chains(out[LISTENER]["virtualInbound"]) and "10.9.9.9_9091" in chains(out[LISTENER]["virtualInbound"])
    own_ip = out[CLUSTER]["inbound|9090||"]
    assert endpoint_address(own_ip) == {"socket_address": {"address": "10.1.2.3", "port_value": 8081}}
    assert own_ip["upstream_bind_config"]["source_address"]["address"] == "127.0.0.6"  # not localhost: bound, as istiod
    local = out[CLUSTER]["inbound|9091||"]
    assert endpoint_address(local) == {"socket_address": {"address": "127.0.0.1", "port_value": 8082}}  # IPv4 proxy
    assert "upstream_bind_config" not in local
    assert endpoint_address(out[CLUSTER]["inbound|9092||"]) == {"pipe": {"path": "/var/run/app.sock"}}
    assert endpoint_address(out[CLUSTER]["inbound|9093||"])["socket_address"]["address"] == "::1"  # no IPv6 of its own


def test_replicas_share_a_generation_unless_their_ips_are_read() -> None:
    def configs(*docs: dict[str, Any]) -> set[str]:
        shared, snapshot = SharedGenerations(), build_snapshot(resources(*mesh_docs(), *docs), version="v")
        replicas = [parse_node(SIDECAR_NODE.replace("127.0.0.1", ip), {"NAMESPACE": "default", "LABELS": {"app": "client"}})
                    for ip in ("10.1.2.3", "10.1.2.4")]  # fmt: skip
        return {str(chains(shared.generate(p, snapshot)[LISTENER]["virtualInbound"])) for p in replicas}

    assert len(configs(with_ingress({"port": HTTP_9090, "bind": "0.0.0.0"}))) == 1
    assert len(configs(with_ingress({"port": HTTP_9090}))) == 2  # 10.1.2.3_9090, 10.1.2.4_9090


def test_capture_mode_none_binds_a_listener_of_its_own() -> None:
    out = generate(with_ingress({"port": HTTP_9090, "captureMode": "NONE", "defaultEndpoint": "127.0.0.1:8081"},
                                {"port": {"number": 9091, "protocol": "TCP"}, "captureMode": "IPTABLES"}))  # fmt: skip
    assert "0.0.0.0_9090" not in chains(out[LISTENER]["virtualInbound"])
    assert "0.0.0.0_9091" in chains(out[LISTENER]["virtualInbound"])
    bound = out[LISTENER]["0.0.0.0_9090"]
    assert (bound["traffic_direction"], bound["address"]["socket_address"]["port_value"]) == ("INBOUND", 9090)
    assert "bind_to_port" not in bound and chains(bound) == ["0.0.0.0_9090", "0.0.0.0_9090"]
    assert [f["name"] for f in bound["listener_filters"]] == ["envoy.filters.listener.tls_inspector"]  # no original_dst


def test_interception_none_serves_ingress_listeners_only() -> None:
    assert not any(name.startswith("inbound|") for name in generate(INTERCEPTION_MODE="NONE")[CLUSTER])
    out = generate(with_ingress({"port": HTTP_9090, "bind": "127.0.0.1", "defaultEndpoint": "127.0.0.1:8081"}),
                   DISABLE, INTERCEPTION_MODE="NONE")  # fmt: skip
    assert "virtualInbound" not in out[LISTENER] and "InboundPassthroughCluster" not in out[CLUSTER]
    listener = out[LISTENER]["127.0.0.1_9090"]
    assert listener["traffic_direction"] == "INBOUND" and "listener_filters" not in listener  # DISABLE: no TLS
    assert out[CLUSTER]["inbound|9090||"]["type"] == "STATIC"


def test_ingress_tls_replaces_mesh_tls_when_peer_authentication_disables_it() -> None:
    tls = {"mode": "MUTUAL", **TLS_FILES, "caCertificates": "/etc/certs/ca.pem", "caCrl": "/etc/certs/crl.pem",
           "minProtocolVersion": "TLSV1_3"}
    out = generate(with_ingress({"port": {"number": 9443, "protocol": "HTTPS"}, "tls": tls}), DISABLE)
    [chain] = [c for c in out[LISTENER]["virtualInbound"]["filter_chains"] if c["name"] == "0.0.0.0_9443"]
    assert chain["filter_chain_match"] == {"destination_port": 9443, "transport_protocol": "tls"}
    assert chain["filters"][0]["name"] == "envoy.filters.network.http_connection_manager"  # HTTP behind the TLS
    context = chain["transport_socket"]["typed_config"]
    common = context["common_tls_context"]
    assert context["require_client_certificate"] is True and common["alpn_protocols"] == ["h2", "http/1.1"]
    assert common["tls_certificate_sds_secret_configs"][0]["name"] == "file-cert:/etc/certs/cert.pem~/etc/certs/key.pem"
    validation = common["combined_validation_context"]
    assert validation["validation_context_sds_secret_config"]["name"] == "file-root:/etc/certs/ca.pem"
    assert validation["default_validation_context"] == {"crl": {"filename": "/etc/certs/crl.pem"}}
    assert validation["validation_context_sds_secret_config"]["sds_config"]["api_config_source"]["grpc_services"] == [
        {"envoy_grpc": {"cluster_name": "sds-grpc"}}]  # the agent's SDS
    assert common["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_3"}
    listener_filters = [f["name"] for f in out[LISTENER]["virtualInbound"]["listener_filters"]]
    assert listener_filters == ["envoy.filters.listener.original_dst", "envoy.filters.listener.tls_inspector"]
    simple = generate(with_ingress({"port": {"number": 9443, "protocol": "TLS"}, "tls": {"mode": "SIMPLE", **TLS_FILES}}),
                      DISABLE)[LISTENER]["virtualInbound"]  # fmt: skip
    [chain] = [c for c in simple["filter_chains"] if c["name"] == "0.0.0.0_9443"]
    assert chain["filters"][0]["name"] == "envoy.filters.network.tcp_proxy"  # TCP behind the TLS
    assert "combined_validation_context" not in chain["transport_socket"]["typed_config"]["common_tls_context"]


def test_ingress_tls_is_left_out_under_mesh_mtls_as_istiod_does(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pylon.pilot.gen"):
        out = generate(with_ingress({"port": {"number": 9443, "protocol": "HTTPS"}, "tls": {"mode": "SIMPLE", **TLS_FILES}}))
    names = [c["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"]
             for c in out[LISTENER]["virtualInbound"]["filter_chains"] if c["name"] == "0.0.0.0_9443" and "transport_socket" in c]
    assert names == ["default"]  # the mesh certificate (PERMISSIVE), not the files
    assert "the tls of ingress port 9443 is not used while its PeerAuthentication mode is PERMISSIVE" in caplog.text


def test_inbound_connection_pools() -> None:
    pool = {"tcp": {"maxConnections": 7, "connectTimeout": "2s"}, "http": {"http1MaxPendingRequests": 3, "idleTimeout": "1m"}}
    out = generate(doc("Sidecar", "client", {"inboundConnectionPool": pool}))
    cluster = out[CLUSTER]["inbound|8080||"]  # a service's inbound port takes the Sidecar-wide pool
    thresholds = cluster["circuit_breakers"]["thresholds"][0]
    assert (thresholds["max_connections"], thresholds["max_pending_requests"], cluster["connect_timeout"]) == (7, 3, "2s")
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["common_http_protocol_options"] == {"idle_timeout": "60s"}
    # the ingress listener's own pool wins over the Sidecar's
    out = generate(with_ingress({"port": HTTP_9090, "connectionPool": {"tcp": {"maxConnections": 2}}},
                                {"port": {"number": 9091, "protocol": "GRPC"}}, inboundConnectionPool=pool))  # fmt: skip
    assert out[CLUSTER]["inbound|9090||"]["circuit_breakers"]["thresholds"][0]["max_connections"] == 2
    grpc = out[CLUSTER]["inbound|9091||"]
    assert grpc["circuit_breakers"]["thresholds"][0]["max_connections"] == 7
    options = grpc["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]  # gRPC to the app is HTTP/2
    # without a Sidecar pool, the DestinationRule of the service on the port (the server side of its limits)
    rule = doc("DestinationRule", "client", {"host": CLIENT, "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 11}}}})
    assert generate(rule)[CLUSTER]["inbound|8080||"]["circuit_breakers"]["thresholds"][0]["max_connections"] == 11


@needs_envoy
def test_ingress_listeners_pass_envoy_validation(tmp_path: Path) -> None:
    """Bound listeners, TLS from files, pipe and IPv6 endpoints, pools: as Envoy 1.40 loads them, and pylon proxy
    but for what it lacks (HTTP/2 upstreams, pipes but for xDS and SDS, trust_chain_verification)."""
    tls = {"mode": "OPTIONAL_MUTUAL", **TLS_FILES, "caCertificates": "/etc/certs/ca.pem",
           "cipherSuites": ["ECDHE-RSA-AES128-GCM-SHA256"], "ecdhCurves": ["P-256"]}
    ingress = [{"port": {"number": 9443, "protocol": "HTTPS"}, "captureMode": "NONE", "defaultEndpoint": "[::]:8083", "tls": tls},
               {"port": HTTP_9090, "defaultEndpoint": "0.0.0.0:8081", "connectionPool": {"http": {"maxRequestsPerConnection": 5}}}]
    envoy_only = [{"port": {"number": 9444, "protocol": "TLS"}, "tls": {**tls, "insecureSkipVerify": True}},
                  {"port": {"number": 9091, "protocol": "GRPC"}, "defaultEndpoint": "unix:///tmp/app.sock"}]  # fmt: skip
    for proxy, listeners in (([str(ENVOY)], ingress + envoy_only), ([sys.executable, "-m", "pylon.cli", "proxy"], ingress)):
        validate_static(proxy, generate(with_ingress(*listeners), DISABLE, ip="10.1.2.3"), tmp_path / "ingress.yaml")
