"""Sidecar generation: Istio's listener, route and cluster names and shapes; Sidecar scoping; MeshConfig."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pylon.config.errors import ConfigError
from pylon.pilot.gen.sidecar import SidecarGenerator
from pylon.pilot.gen.types import CLUSTER, ENDPOINT, LISTENER, ROUTE
from pylon.pilot.istio.mesh import MeshConfig, load_mesh_config
from pylon.pilot.snapshot import build_snapshot
from pylon.pilot.xds.encode import to_message
from tests.pilot.builders import doc, resources, service_entry, sidecar_proxy, subsets_rule
from tests.pilot.harness import ENVOY, needs_envoy, validate_static

REVIEWS = "reviews.default.svc.cluster.local"


def mesh_docs() -> list[dict]:
    own = doc("ServiceEntry", "client", {
        "hosts": ["client.default.svc.cluster.local"], "resolution": "STATIC", "workloadSelector": {"labels": {"app": "client"}},
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080},
                  {"number": 5432, "name": "db", "protocol": "TCP"}]})  # fmt: skip
    db = doc("ServiceEntry", "db", {"hosts": ["db.other.svc.cluster.local"], "resolution": "STATIC",
                                    "ports": [{"number": 3306, "name": "tcp", "protocol": "TCP"}],
                                    "endpoints": [{"address": "10.0.0.9"}]}, namespace="other")  # fmt: skip
    vs = doc("VirtualService", "reviews", {"hosts": ["reviews"], "http": [
        {"match": [{"headers": {"x-v": {"exact": "2"}}}], "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
        {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]})  # fmt: skip
    return [service_entry(REVIEWS, [("10.0.0.1", 9080, {"version": "v1"}), ("10.0.0.2", 9080, {"version": "v2"})],
                          port=9080, name="reviews"), subsets_rule(REVIEWS, ["v1", "v2"]), vs, own, db]


def generate(*extra: dict, mesh: MeshConfig | None = None, **metadata: str) -> dict:
    snap = build_snapshot(resources(*mesh_docs(), *extra), version="v", mesh=mesh)
    out = SidecarGenerator().generate(sidecar_proxy(**metadata), snap)
    for type_url, items in out.items():
        for item in items.values():
            to_message(type_url, item)  # every resource is valid Envoy API
    return out


def test_istio_names_and_shapes() -> None:
    out = generate()
    assert sorted(out[LISTENER]) == ["0.0.0.0_3306", "0.0.0.0_5432", "0.0.0.0_80", "0.0.0.0_9080", "virtualInbound",
                                     "virtualOutbound"]  # its own service is a destination too, as in Istio
    assert out[LISTENER]["0.0.0.0_9080"]["bind_to_port"] is False
    outbound = out[LISTENER]["virtualOutbound"]
    assert outbound["use_original_dst"] is True and outbound["address"]["socket_address"]["port_value"] == 15001
    assert outbound["filter_chains"][-1]["filters"][0]["typed_config"]["cluster"] == "PassthroughCluster"
    inbound = out[LISTENER]["virtualInbound"]
    # PERMISSIVE (no PeerAuthentication): a TLS and a plaintext chain per port
    assert [c["name"] for c in inbound["filter_chains"]] == ["virtualInbound-blackhole", "0.0.0.0_5432", "0.0.0.0_5432",
                                                             "0.0.0.0_8080", "0.0.0.0_8080", "virtualInbound-catchall-tcp",
                                                             "virtualInbound-catchall-tcp"]  # fmt: skip
    http_chain = inbound["filter_chains"][3]["filters"][0]["typed_config"]["route_config"]
    assert http_chain["virtual_hosts"][0]["name"] == "inbound|http|80"  # the service's port (istiod's cc.port.Port)
    assert http_chain["virtual_hosts"][0]["routes"][0]["route"]["cluster"] == "inbound|8080||"
    assert out[CLUSTER]["inbound|8080||"]["type"] == "ORIGINAL_DST"
    assert out[CLUSTER]["inbound|8080||"]["upstream_bind_config"]["source_address"]["address"] == "127.0.0.6"
    assert {"PassthroughCluster", "BlackHoleCluster", "InboundPassthroughCluster", f"outbound|9080|v1|{REVIEWS}",
            "outbound|3306||db.other.svc.cluster.local"} <= set(out[CLUSTER])  # fmt: skip
    route = out[ROUTE]["9080"]
    assert [v["name"] for v in route["virtual_hosts"]] == [f"{REVIEWS}:9080", "allow_any"]
    routes = route["virtual_hosts"][0]["routes"]
    assert [r["route"]["cluster"] for r in routes] == [f"outbound|9080|v2|{REVIEWS}", f"outbound|9080|v1|{REVIEWS}"]
    assert sorted(out[ENDPOINT]) == sorted(n for n, c in out[CLUSTER].items() if c["type"] == "EDS")


def test_registry_only_from_mesh_config_and_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n")
    out = generate(mesh=load_mesh_config(path))
    assert out[ROUTE]["9080"]["virtual_hosts"][-1]["name"] == "block_all"
    assert out[LISTENER]["virtualOutbound"]["filter_chains"][-1]["filters"][0]["typed_config"]["cluster"] == "BlackHoleCluster"
    allow = doc("Sidecar", "default", {"outboundTrafficPolicy": {"mode": "ALLOW_ANY"}})
    assert generate(allow, mesh=load_mesh_config(path))[ROUTE]["9080"]["virtual_hosts"][-1]["name"] == "allow_any"


def test_mesh_config_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text("enableTracing: true\n")
    with pytest.raises(ConfigError, match="enableTracing: not supported by pylon pilot yet"):
        load_mesh_config(path)
    path.write_text("outboundTrafficPolicy:\n  mode: DENY\n")
    with pytest.raises(ConfigError, match="outboundTrafficPolicy.mode"):
        load_mesh_config(path)


def test_sidecar_egress_hosts_scope_services() -> None:
    only_own_namespace = doc("Sidecar", "default", {"egress": [{"hosts": ["./*"]}]})
    out = generate(only_own_namespace)
    assert "0.0.0.0_3306" not in out[LISTENER] and "0.0.0.0_9080" in out[LISTENER]
    selected = doc("Sidecar", "client", {"workloadSelector": {"labels": {"app": "client"}},
                                         "egress": [{"hosts": ["other/db.other.svc.cluster.local"]}]})  # fmt: skip
    out = generate(only_own_namespace, selected)
    assert sorted(out[LISTENER]) == ["0.0.0.0_3306", "virtualInbound", "virtualOutbound"]
    with pytest.raises(ConfigError, match=r"spec.egress\[0\].hosts\[0\]: 'db' must be namespace/dnsName"):
        resources(doc("Sidecar", "bad", {"egress": [{"hosts": ["db"]}]}))


def test_interception_none_binds_outbound_on_localhost() -> None:
    out = generate(INTERCEPTION_MODE="NONE")
    assert sorted(out[LISTENER]) == ["127.0.0.1_3306", "127.0.0.1_5432", "127.0.0.1_80", "127.0.0.1_9080"]
    assert "bind_to_port" not in out[LISTENER]["127.0.0.1_9080"]
    with pytest.raises(ValueError, match="INTERCEPTION_MODE 'TPROXY' is not supported"):
        generate(INTERCEPTION_MODE="TPROXY")


def test_service_entry_resolution_modes() -> None:
    def entry(name: str, resolution: str, endpoints: list[dict] | None = None) -> dict:
        spec = {"hosts": [f"{name}.example.com"], "resolution": resolution,
                "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]}  # fmt: skip
        if endpoints is not None:
            spec["endpoints"] = endpoints
        return doc("ServiceEntry", name, spec)

    out = generate(entry("dns", "DNS", [{"address": "a.example.net", "labels": {"v": "1"}}, {"address": "10.0.0.7"}]),
                   entry("rr", "DNS_ROUND_ROBIN"), entry("none", "NONE"),
                   doc("DestinationRule", "dns", {"host": "dns.example.com", "subsets": [{"name": "one", "labels": {"v": "1"}}]}))
    dns = out[CLUSTER]["outbound|443||dns.example.com"]
    assert (dns["type"], dns["dns_lookup_family"], "eds_cluster_config" in dns) == ("STRICT_DNS", "V4_ONLY", False)
    addresses = [e["endpoint"]["address"]["socket_address"] for e in dns["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert addresses == [{"address": "a.example.net", "port_value": 443}, {"address": "10.0.0.7", "port_value": 443}]
    subset = out[CLUSTER]["outbound|443|one|dns.example.com"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["address"] for e in subset] == ["a.example.net"]
    rr = out[CLUSTER]["outbound|443||rr.example.com"]
    assert rr["type"] == "LOGICAL_DNS"
    assert rr["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] == {
        "address": "rr.example.com", "port_value": 443}
    none = out[CLUSTER]["outbound|443||none.example.com"]
    assert (none["type"], none["lb_policy"]) == ("ORIGINAL_DST", "CLUSTER_PROVIDED")
    assert not any(name.endswith("example.com") for name in out[ENDPOINT])  # no EDS for DNS or NONE


def test_egress_listener_on_a_port_serves_its_own_services_only() -> None:
    only_reviews = doc("Sidecar", "default", {"egress": [
        {"port": {"number": 9080, "protocol": "HTTP", "name": "web"}, "hosts": [f"./{REVIEWS}"]}]})  # fmt: skip
    out = generate(only_reviews)
    assert sorted(out[LISTENER]) == ["0.0.0.0_9080", "virtualInbound", "virtualOutbound"]  # no catch-all, no other port
    assert sorted(n for n in out[CLUSTER] if n.startswith("outbound|")) == [
        f"outbound|9080|v1|{REVIEWS}", f"outbound|9080|v2|{REVIEWS}", f"outbound|9080||{REVIEWS}"]
    assert [v["name"] for v in out[ROUTE]["9080"]["virtual_hosts"]] == [f"{REVIEWS}:9080", "allow_any"]
    # a port imports that port of a service alone: client's 80, not its 5432 (istiod's serviceMatchingListenerPort)
    own_80 = doc("Sidecar", "default", {"egress": [
        {"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["./client.default.svc.cluster.local"]}]})  # fmt: skip
    out = generate(own_80)
    assert [n for n in out[CLUSTER] if n.startswith("outbound|")] == ["outbound|80||client.default.svc.cluster.local"]
    assert list(out[ENDPOINT]) == ["outbound|80||client.default.svc.cluster.local"]


def test_several_egress_listeners_bind_and_capture_mode() -> None:
    sidecar = doc("Sidecar", "default", {"egress": [
        {"port": {"number": 9080, "protocol": "HTTP"}, "bind": "127.0.0.2", "captureMode": "NONE", "hosts": [f"./{REVIEWS}"]},
        {"port": {"number": 80, "protocol": "TCP"}, "hosts": ["./*"]},
        {"hosts": ["*/*"]}]})  # fmt: skip
    out = generate(sidecar)
    assert sorted(out[LISTENER]) == ["0.0.0.0_3306", "0.0.0.0_5432", "0.0.0.0_80", "0.0.0.0_9080", "127.0.0.2_9080",
                                     "virtualInbound", "virtualOutbound"]  # fmt: skip
    bound = out[LISTENER]["127.0.0.2_9080"]  # captureMode NONE: a real listener on its bind
    assert "bind_to_port" not in bound and bound["address"]["socket_address"] == {"address": "127.0.0.2", "port_value": 9080}
    assert out[LISTENER]["0.0.0.0_9080"]["bind_to_port"] is False  # the catch-all's, at another address
    # the port's own protocol: client's HTTP port 80 as TCP, one tcp_proxy and no route configuration
    [chain] = out[LISTENER]["0.0.0.0_80"]["filter_chains"]
    assert chain["filters"][0]["typed_config"]["cluster"] == "outbound|80||client.default.svc.cluster.local"
    assert sorted(out[ROUTE]) == ["9080"]  # of the first listener on 9080 (istiod's GetEgressListenerForRDS)
    none_mode = generate(sidecar, INTERCEPTION_MODE="NONE")
    assert sorted(none_mode[LISTENER]) == ["127.0.0.1_3306", "127.0.0.1_5432", "127.0.0.1_80", "127.0.0.1_9080",
                                           "127.0.0.2_9080"]  # fmt: skip


def test_egress_proxy_takes_passthroughs_place() -> None:
    egress = doc("ServiceEntry", "egress", {"hosts": ["egress.istio-system.svc.cluster.local"], "resolution": "STATIC",
                                            "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                                            "endpoints": [{"address": "10.0.0.50"}]}, namespace="istio-system")  # fmt: skip
    sidecar = doc("Sidecar", "default", {"outboundTrafficPolicy": {"mode": "ALLOW_ANY", "egressProxy": {
        "host": "egress.istio-system.svc.cluster.local", "subset": "v1", "port": {"number": 443}}}})  # fmt: skip
    out = generate(egress, sidecar)
    cluster = "outbound|443|v1|egress.istio-system.svc.cluster.local"
    assert out[ROUTE]["9080"]["virtual_hosts"][-1]["routes"][0]["route"]["cluster"] == cluster
    assert out[LISTENER]["virtualOutbound"]["filter_chains"][-1]["filters"][0]["typed_config"]["cluster"] == cluster
    # a Sidecar's policy without a mode is REGISTRY_ONLY, the proto's zero value
    assert generate(doc("Sidecar", "default", {"outboundTrafficPolicy": {}}))[ROUTE]["9080"]["virtual_hosts"][-1][
        "name"] == "block_all"


def test_http_proxy_port_and_unix_socket_serve_every_port_of_their_hosts() -> None:
    """istiod's needsPortMatch (false for both) and mergeAllVirtualHosts: one HTTP listener, one route
    configuration with the virtual hosts of every port, `host:port` domains only off port 80."""
    sidecar = doc("Sidecar", "default", {"egress": [
        {"port": {"number": 3128, "protocol": "HTTP_PROXY"}, "captureMode": "NONE", "hosts": ["./*"]},
        {"port": {"number": 0, "protocol": "HTTP"}, "bind": "unix:///var/run/egress.sock", "hosts": [f"./{REVIEWS}"]}]})
    out = generate(sidecar)
    assert sorted(out[LISTENER]) == ["127.0.0.1_3128", "unix:///var/run/egress.sock_0", "virtualInbound", "virtualOutbound"]
    socket = out[LISTENER]["unix:///var/run/egress.sock_0"]
    assert socket["address"] == {"pipe": {"path": "/var/run/egress.sock"}} and "bind_to_port" not in socket
    rds = socket["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["route_config_name"]
    assert rds == "unix:///var/run/egress.sock"
    assert [v["name"] for v in out[ROUTE][rds]["virtual_hosts"]] == [f"{REVIEWS}:9080", "allow_any"]
    assert out[ROUTE][rds]["virtual_hosts"][0]["domains"] == [f"{REVIEWS}:9080"]
    proxy_routes = out[ROUTE]["3128"]["virtual_hosts"]  # client's port 80 and reviews' 9080, in the namespace
    assert [v["name"] for v in proxy_routes] == ["client.default.svc.cluster.local:80", f"{REVIEWS}:9080", "allow_any"]
    assert proxy_routes[0]["domains"] == ["client.default.svc.cluster.local", "client.default.svc.cluster.local:80"]
    # every port of the imported services has its clusters (client's TCP 5432 too)
    assert "outbound|5432||client.default.svc.cluster.local" in out[CLUSTER]


@needs_envoy
def test_egress_listeners_pass_envoy_validation(tmp_path: Path) -> None:
    """Bound and captured ports, an HTTP proxy port and a unix socket, as Envoy 1.40 loads them, and pylon proxy
    but for the socket (its listeners bind IP addresses only)."""
    egress = [{"port": {"number": 9080, "protocol": "HTTP"}, "bind": "127.0.0.2", "captureMode": "NONE", "hosts": [f"./{REVIEWS}"]},
              {"port": {"number": 3128, "protocol": "HTTP_PROXY"}, "hosts": ["./*"]},
              {"hosts": ["*/*"]}]  # fmt: skip
    socket = {"port": {"number": 0, "protocol": "HTTP"}, "bind": f"unix://{tmp_path}/egress.sock", "hosts": ["./*"]}
    for proxy, listeners in (([str(ENVOY)], [socket, *egress]), ([sys.executable, "-m", "pylon.cli", "proxy"], egress)):
        validate_static(proxy, generate(doc("Sidecar", "default", {"egress": listeners})), tmp_path / "egress.yaml")
