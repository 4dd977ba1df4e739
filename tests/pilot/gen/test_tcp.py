"""VirtualService tcp and tls routes: gateway TCP, TLS and PASSTHROUGH / AUTO_PASSTHROUGH servers, sidecar TCP and TLS
ports, in istiod's shapes; every resource goes through Envoy's API (pilot's encoder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pylon.config.errors import ConfigError
from pylon.identity.certs import make_ca
from pylon.pilot.gen import generator_for
from pylon.pilot.gen.names import subset_key_host
from pylon.pilot.gen.sidecar import SidecarGenerator
from pylon.pilot.gen.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources
from pylon.pilot.snapshot import build_snapshot
from pylon.pilot.xds.encode import to_any
from tests.conftest import free_port
from tests.pilot.builders import GATEWAY_NODE, doc, gateway_proxy, resources, sidecar_proxy
from tests.pilot.harness import ENVOY, bootstrap, needs_envoy
from tests.proxy.test_proxy_tls_crl import revocation_list

TCP_PROXY = "envoy.filters.network.tcp_proxy"


def entry(name: str, port: int, protocol: str, location: str = "MESH_EXTERNAL",
          endpoints: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    return doc("ServiceEntry", name, {
        "hosts": [f"{name}.example.com"], "location": location, "resolution": "STATIC",
        "ports": [{"number": port, "name": protocol.lower(), "protocol": protocol}],
        "endpoints": endpoints or [{"address": "10.0.0.1"}]})  # fmt: skip


def gateway(*servers: dict[str, Any]) -> dict[str, Any]:
    return doc("Gateway", "gw", {"selector": {"istio": "ingressgateway"}, "servers": list(servers)}, namespace="istio-system")


def server(port: int, protocol: str, hosts: list[str], tls: dict[str, Any] | None = None, name: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"port": {"number": port, "name": name or protocol.lower(), "protocol": protocol}, "hosts": hosts}
    if tls is not None:
        out["tls"] = tls
    return out


def vs(name: str, hosts: list[str], gateways: list[str] | None = None, **routes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"hosts": hosts, **routes}
    if gateways is not None:
        spec["gateways"] = gateways
    return doc("VirtualService", name, spec)


def dest(host: str, port: int | None = None, weight: int = 0, subset: str = "") -> dict[str, Any]:
    destination: dict[str, Any] = {"host": host}
    if port is not None:
        destination["port"] = {"number": port}
    if subset:
        destination["subset"] = subset
    return {"destination": destination, **({"weight": weight} if weight else {})}


def generate(*docs: dict[str, Any], proxy: Any = None) -> Resources:
    proxy = proxy or gateway_proxy()
    out = generator_for(proxy).generate(proxy, build_snapshot(resources(*docs), version="v"))
    for type_url, items in out.items():
        for item in items.values():
            to_any(type_url, item)  # valid Envoy API
    return out


def tcp_config(chain: dict[str, Any]) -> dict[str, Any]:
    [tcp] = [f for f in chain["filters"] if f["name"] == TCP_PROXY]
    return tcp["typed_config"]


def test_gateway_tcp_server_routes_by_the_first_matching_tcp_route() -> None:
    out = generate(gateway(server(9000, "TCP", ["*"])), entry("db", 5432, "TCP"), entry("other", 5432, "TCP"),
                   vs("wrong-port", ["*"], ["istio-system/gw"], tcp=[{"match": [{"port": 9999}], "route": [dest("other.example.com")]}]),
                   vs("db", ["*"], ["istio-system/gw"], tcp=[{"match": [{"port": 9000}], "route": [dest("db.example.com")]}]))  # fmt: skip
    listener = out[LISTENER]["0.0.0.0_9000"]
    [chain] = listener["filter_chains"]
    assert "filter_chain_match" not in chain and "listener_filters" not in listener
    assert tcp_config(chain) == {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                                 "stat_prefix": "outbound|5432||db.example.com", "cluster": "outbound|5432||db.example.com"}
    assert not out[ROUTE]


def test_weighted_tcp_route_and_destination_rule_connection_settings() -> None:
    rule = doc("DestinationRule", "db", {"host": "db.example.com", "trafficPolicy": {
        "connectionPool": {"tcp": {"idleTimeout": "30s", "maxConnectionDuration": "1h"}},
        "loadBalancer": {"consistentHash": {"useSourceIp": True}}}})  # fmt: skip
    out = generate(gateway(server(9000, "TCP", ["*"])), entry("db", 5432, "TCP"), entry("other", 5432, "TCP"), rule,
                   vs("split", ["*"], ["istio-system/gw"], tcp=[{"route": [dest("db.example.com", weight=80),
                                                                           dest("other.example.com", weight=20),
                                                                           dest("none.example.com", 1, weight=0)]}]))  # fmt: skip
    config = tcp_config(out[LISTENER]["0.0.0.0_9000"]["filter_chains"][0])
    assert config["stat_prefix"] == "split.default"
    assert config["weighted_clusters"] == {"clusters": [{"name": "outbound|5432||db.example.com", "weight": 80},
                                                        {"name": "outbound|5432||other.example.com", "weight": 20}]}
    assert (config["idle_timeout"], config["max_downstream_connection_duration"]) == ("30s", "3600s")
    assert config["hash_policy"] == [{"source_ip": {}}]


def test_gateway_passthrough_server_has_one_sni_chain_per_tls_match_without_tls() -> None:
    out = generate(gateway(server(443, "TLS", ["*.example.com"], {"mode": "PASSTHROUGH"})),
                   entry("a", 8443, "TLS"), entry("b", 8443, "TLS"),
                   vs("a", ["a.example.com"], ["istio-system/gw"], tls=[{"match": [{"sniHosts": ["a.example.com"]}],
                                                                         "route": [dest("a.example.com")]}]),
                   vs("b", ["b.example.com"], ["istio-system/gw"], tls=[{"match": [{"sniHosts": ["b.example.com"], "port": 443}],
                                                                         "route": [dest("b.example.com")]}]),
                   vs("dup", ["a.example.com"], ["istio-system/gw"], tls=[{"match": [{"sniHosts": ["a.example.com"]}],
                                                                           "route": [dest("b.example.com")]}]))  # fmt: skip
    listener = out[LISTENER]["0.0.0.0_443"]
    assert [f["name"] for f in listener["listener_filters"]] == ["envoy.filters.listener.tls_inspector"]
    chains = listener["filter_chains"]
    assert [c["filter_chain_match"] for c in chains] == [{"server_names": ["a.example.com"]},
                                                         {"server_names": ["b.example.com"]}]  # the duplicate is dropped
    assert [tcp_config(c)["cluster"] for c in chains] == ["outbound|8443||a.example.com", "outbound|8443||b.example.com"]
    assert not any("transport_socket" in c for c in chains)


def test_gateway_tls_server_ending_tls_routes_tcp_behind_its_certificate() -> None:
    out = generate(gateway(server(9443, "TLS", ["db.example.com"], {"mode": "SIMPLE", "credentialName": "db-cred"})),
                   entry("db", 5432, "TCP"),
                   vs("db", ["db.example.com"], ["istio-system/gw"], tcp=[{"route": [dest("db.example.com")]}]))  # fmt: skip
    [chain] = out[LISTENER]["0.0.0.0_9443"]["filter_chains"]
    assert chain["filter_chain_match"] == {"server_names": ["db.example.com"]}
    context = chain["transport_socket"]["typed_config"]["common_tls_context"]
    assert context["tls_certificate_sds_secret_configs"][0]["name"] == "kubernetes://db-cred"
    assert context["alpn_protocols"] == ["h2", "http/1.1"]


def test_https_and_passthrough_servers_share_a_port_and_a_tcp_server_without_route_makes_no_listener() -> None:
    out = generate(gateway(server(443, "HTTPS", ["web.example.com"], {"mode": "SIMPLE", "credentialName": "web"}, "https"),
                           server(443, "HTTPS", ["a.example.com"], {"mode": "PASSTHROUGH"}, "passthrough"),
                           server(9000, "TCP", ["*"])),
                   entry("a", 8443, "TLS"),
                   vs("a", ["a.example.com"], ["istio-system/gw"], tls=[{"match": [{"sniHosts": ["a.example.com"]}],
                                                                         "route": [dest("a.example.com")]}]))  # fmt: skip
    names = [c["filter_chain_match"]["server_names"] for c in out[LISTENER]["0.0.0.0_443"]["filter_chains"]]
    assert names == [["web.example.com"], ["a.example.com"]]
    assert "0.0.0.0_9000" not in out[LISTENER]


def test_auto_passthrough_routes_istio_sni_to_sni_dnat_clusters_of_mtls_endpoints() -> None:
    mesh_service = entry("r", 9080, "HTTP", "MESH_INTERNAL", [
        {"address": "10.0.0.1", "labels": {"security.istio.io/tlsMode": "istio", "v": "1"}},
        {"address": "10.0.0.2", "labels": {"v": "1"}}])  # fmt: skip
    rule = doc("DestinationRule", "r", {"host": "r.example.com", "subsets": [{"name": "v1", "labels": {"v": "1"}}]})
    out = generate(gateway(server(15443, "TLS", ["*.example.com"], {"mode": "AUTO_PASSTHROUGH"})),
                   mesh_service, rule, entry("ext", 443, "TLS"))
    chains = out[LISTENER]["0.0.0.0_15443"]["filter_chains"]
    assert [c["filter_chain_match"]["server_names"] for c in chains] == [["outbound_.9080_._.r.example.com"],
                                                                         ["outbound_.9080_.v1_.r.example.com"]]
    assert chains[0]["filter_chain_match"]["application_protocols"][:2] == ["istio", "istio-peer-exchange"]
    assert tcp_config(chains[1])["cluster"] == "outbound_.9080_.v1_.r.example.com"
    cluster = out[CLUSTER]["outbound_.9080_._.r.example.com"]
    assert cluster["eds_cluster_config"]["service_name"] == "outbound_.9080_._.r.example.com"
    assert "transport_socket" not in cluster and "transport_socket_matches" not in cluster
    assert "outbound_.443_._.ext.example.com" not in out[CLUSTER]  # mesh-external: no SNI-DNAT
    lb = out[ENDPOINT]["outbound_.9080_._.r.example.com"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["address"] for e in lb] == ["10.0.0.1"]  # mTLS workloads only
    assert subset_key_host("outbound_.9080_.v1_.r.example.com") == "r.example.com"


def test_sidecar_tcp_port_routes_by_tcp_routes_with_destination_subnets() -> None:
    out = generate(entry("db", 5432, "TCP"), entry("db2", 5432, "TCP"),
                   vs("db", ["db.example.com"], tcp=[
                       {"match": [{"destinationSubnets": ["10.1.0.0/16"]}], "route": [dest("db2.example.com")]},
                       {"match": [{"sourceLabels": {"app": "other"}}], "route": [dest("db2.example.com")]},
                       {"route": [dest("db.example.com", weight=50), dest("db2.example.com", weight=50)]}]),
                   proxy=sidecar_proxy(INTERCEPTION_MODE="NONE"))  # fmt: skip
    chains = out[LISTENER]["127.0.0.1_5432"]["filter_chains"]
    assert chains[0]["filter_chain_match"] == {"prefix_ranges": [{"address_prefix": "10.1.0.0", "prefix_len": 16}]}
    assert tcp_config(chains[0])["cluster"] == "outbound|5432||db2.example.com"
    assert "filter_chain_match" not in chains[1] and tcp_config(chains[1])["stat_prefix"] == "db.default"
    assert len(chains) == 2


def test_sidecar_tls_port_chains_by_sni_per_service() -> None:
    out = generate(entry("a", 443, "TLS"), entry("b", 443, "HTTPS"),
                   vs("a", ["a.example.com"], tls=[{"match": [{"sniHosts": ["a.example.com"]}],
                                                    "route": [dest("b.example.com")]}]),
                   proxy=sidecar_proxy())  # fmt: skip
    listener = out[LISTENER]["0.0.0.0_443"]
    assert [f["name"] for f in listener["listener_filters"]] == ["envoy.filters.listener.tls_inspector"]
    chains = listener["filter_chains"]
    assert [(c["filter_chain_match"]["server_names"], tcp_config(c)["cluster"]) for c in chains] == [
        (["a.example.com"], "outbound|443||b.example.com"), (["b.example.com"], "outbound|443||b.example.com")]


@pytest.mark.parametrize(("route", "path"), [
    ({"tls": [{"match": [{"sniHosts": ["other.com"]}], "route": [dest("a.example.com")]}]}, "spec.tls[0].match[0].sniHosts[0]"),
    ({"tls": [{"match": [], "route": [dest("a.example.com")]}]}, "spec.tls[0].match"),
    ({"tcp": [{"route": []}]}, "spec.tcp[0].route"),
    ({"tcp": [{"route": [dest("a.example.com"), dest("b.example.com")]}]}, "spec.tcp[0].route"),
    ({"tcp": [{"match": [{"destinationSubnets": ["nonsense"]}], "route": [dest("a.example.com")]}]},
     "spec.tcp[0].match[0].destinationSubnets[0]"),
])  # fmt: skip
def test_route_errors_name_the_field(route: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resources(vs("bad", ["*.example.com"], **route))
    assert caught.value.path == path


def test_sidecar_generator_is_unchanged_for_plain_tcp_ports() -> None:
    out = SidecarGenerator().generate(sidecar_proxy(INTERCEPTION_MODE="NONE"),
                                      build_snapshot(resources(entry("db", 5432, "TCP")), version="v"))  # fmt: skip
    [chain] = out[LISTENER]["127.0.0.1_5432"]["filter_chains"]
    assert chain == {"filters": [{"name": TCP_PROXY, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "outbound|5432||db.example.com", "cluster": "outbound|5432||db.example.com"}}]}


@needs_envoy
def test_envoy_and_pylon_proxy_accept_weighted_tcp_routes_source_ip_hashing_and_auto_sni(tmp_path: Path) -> None:
    """AUTO_PASSTHROUGH chains and SNI-DNAT clusters, a weighted tcp route with DestinationRule connection settings
    (idle timeout, maxConnectionDuration, useSourceIp) and auto SNI TLS origination with a CRL pass the `--mode
    validate` of Envoy and of pylon proxy alike."""
    mesh_service = entry("r", 9080, "HTTP", "MESH_INTERNAL", [{"address": "10.0.0.1",
                                                              "labels": {"security.istio.io/tlsMode": "istio"}}])
    ca, crl = tmp_path / "ca.pem", tmp_path / "crl.pem"
    authority = make_ca()
    ca.write_bytes(authority.cert_pem)
    crl.write_bytes(revocation_list(authority, []))
    rule = doc("DestinationRule", "db", {"host": "db.example.com", "trafficPolicy": {
        "tls": {"mode": "SIMPLE", "caCertificates": str(ca), "caCrl": str(crl)},
        "loadBalancer": {"consistentHash": {"useSourceIp": True}},
        "connectionPool": {"tcp": {"idleTimeout": "30s", "maxConnectionDuration": "1h"}}}})
    out = generate(gateway(server(15443, "TLS", ["*.example.com"], {"mode": "AUTO_PASSTHROUGH"}),
                           server(9000, "TCP", ["*"])),
                   mesh_service, entry("db", 5432, "TCP"), entry("o", 5432, "TCP"), rule,
                   vs("w", ["*"], ["istio-system/gw"], tcp=[{"route": [dest("db.example.com", weight=50),
                                                                       dest("o.example.com", weight=50)]}]))  # fmt: skip
    config = bootstrap(GATEWAY_NODE, "gw", {"NAMESPACE": "istio-system"}, free_port(), free_port())
    config["static_resources"]["listeners"] = list(out[LISTENER].values())
    for cluster in out[CLUSTER].values():
        if cluster["type"] == "EDS":  # as static clusters: no ADS here
            cluster = {**{k: v for k, v in cluster.items() if k != "eds_cluster_config"}, "type": "STATIC",
                       "load_assignment": out[ENDPOINT][cluster["name"]]}  # fmt: skip
        config["static_resources"]["clusters"].append(cluster)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    envoy = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path), "-l", "error"], capture_output=True,
                           text=True, timeout=30)  # fmt: skip
    assert envoy.returncode == 0, envoy.stdout + envoy.stderr
    pylon = subprocess.run([sys.executable, "-m", "pylon.cli", "proxy", "--mode", "validate", "-c", str(path), "-l",
                            "error"], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert pylon.returncode == 0, pylon.stdout + pylon.stderr
    text = path.read_text()
    assert all(field in text for field in ("weighted_clusters", "source_ip", "max_downstream_connection_duration",
                                           "auto_sni", "auto_san_validation", "crl"))
