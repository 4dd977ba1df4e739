"""PeerAuthentication on the inbound chains, ISTIO_MUTUAL and auto mTLS on outbound clusters; Envoy validates it all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pylon.config.errors import ConfigError
from pylon.pilot.gen.sidecar import SidecarGenerator
from pylon.pilot.gen.types import CLUSTER, ENDPOINT, LISTENER
from pylon.pilot.istio.mesh import MeshConfig
from pylon.pilot.snapshot import build_snapshot
from pylon.pilot.xds.encode import to_message
from tests.conftest import free_port
from tests.pilot.builders import SIDECAR_NODE, doc, resources, sidecar_proxy, subsets_rule
from tests.pilot.harness import ENVOY, bootstrap, needs_envoy

REVIEWS = "reviews.default.svc.cluster.local"
SECURITY = "security.istio.io/v1"


def peer(name: str, spec: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return doc("PeerAuthentication", name, spec, namespace=namespace, api_version=SECURITY)


def mesh_docs() -> list[dict[str, Any]]:
    own = doc("ServiceEntry", "client", {
        "hosts": ["client.default.svc.cluster.local"], "resolution": "STATIC", "location": "MESH_INTERNAL",
        "workloadSelector": {"labels": {"app": "client"}},
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080},
                  {"number": 5432, "name": "db", "protocol": "TCP"}]})  # fmt: skip
    reviews = doc("ServiceEntry", "reviews", {
        "hosts": [REVIEWS], "resolution": "STATIC", "location": "MESH_INTERNAL",
        "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
        "endpoints": [{"address": "10.0.0.1", "labels": {"version": "v1", "security.istio.io/tlsMode": "istio"}},
                      {"address": "10.0.0.2", "labels": {"version": "v2"}}]})  # fmt: skip
    return [own, reviews]


def generate(*extra: dict[str, Any], mesh: MeshConfig | None = None) -> dict[str, Any]:
    out = SidecarGenerator().generate(sidecar_proxy(), build_snapshot(resources(*mesh_docs(), *extra), version="v", mesh=mesh))
    for type_url, items in out.items():
        for item in items.values():
            to_message(type_url, item)
    return out


def chains(out: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [c for c in out[LISTENER]["virtualInbound"]["filter_chains"] if c["name"] == name]


def transports(out: dict[str, Any], name: str) -> list[str]:
    """Per chain of `name`: "mtls" (TLS requiring a client certificate) or "plain"."""
    out_list = []
    for chain in chains(out, name):
        socket = chain.get("transport_socket")
        if socket is None:
            out_list.append("plain")
        else:
            assert socket["typed_config"]["require_client_certificate"] is True
            out_list.append("mtls")
    return out_list


def test_modes_and_their_precedence() -> None:
    assert transports(generate(), "0.0.0.0_8080") == ["mtls", "plain"]  # no policy: PERMISSIVE
    strict_mesh = peer("mesh", {"mtls": {"mode": "STRICT"}}, namespace="istio-system")
    out = generate(strict_mesh)
    assert transports(out, "0.0.0.0_8080") == ["mtls"] and transports(out, "virtualInbound-catchall-tcp") == ["mtls"]
    [strict] = chains(out, "0.0.0.0_8080")
    assert strict["filter_chain_match"]["transport_protocol"] == "tls"
    assert strict["filter_chain_match"]["application_protocols"][:2] == ["istio-peer-exchange", "istio"]
    tls = strict["transport_socket"]["typed_config"]["common_tls_context"]
    assert [s["name"] for s in tls["tls_certificate_sds_secret_configs"]] == ["default"]
    root = tls["combined_validation_context"]["validation_context_sds_secret_config"]
    assert root["name"] == "ROOTCA"
    assert root["sds_config"]["api_config_source"]["grpc_services"][0]["envoy_grpc"]["cluster_name"] == "sds-grpc"
    names = [f["name"] for f in out[LISTENER]["virtualInbound"]["listener_filters"]]
    assert names == ["envoy.filters.listener.original_dst", "envoy.filters.listener.tls_inspector"]
    # the namespace overrides the mesh, the workload the namespace, a port the workload; UNSET inherits
    namespace = peer("ns", {"mtls": {"mode": "DISABLE"}})
    assert transports(generate(strict_mesh, namespace), "0.0.0.0_8080") == ["plain"]
    workload = peer("wl", {"selector": {"matchLabels": {"app": "client"}}, "mtls": {"mode": "UNSET"},
                           "portLevelMtls": {"5432": {"mode": "STRICT"}, "8080": {"mode": "PERMISSIVE"}}})  # fmt: skip
    out = generate(strict_mesh, namespace, workload)
    assert (transports(out, "0.0.0.0_5432"), transports(out, "0.0.0.0_8080"),
            transports(out, "virtualInbound-catchall-tcp")) == (["mtls"], ["mtls", "plain"], ["plain"])  # fmt: skip
    other = peer("other", {"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "STRICT"}})
    assert transports(generate(other), "0.0.0.0_8080") == ["mtls", "plain"]  # selects another workload
    disabled = generate(peer("ns", {"mtls": {"mode": "DISABLE"}}))
    assert "tls_inspector" not in str(disabled[LISTENER]["virtualInbound"]["listener_filters"])


def test_istio_mutual_and_auto_mtls_outbound() -> None:
    out = generate()
    auto = out[CLUSTER][f"outbound|9080||{REVIEWS}"]
    assert "transport_socket" not in auto
    [istio, plain] = auto["transport_socket_matches"]
    assert istio["match"] == {"tlsMode": "istio"} and plain["match"] == {}
    assert istio["transport_socket"]["typed_config"]["sni"] == f"outbound_.9080_._.{REVIEWS}"
    lb = out[ENDPOINT][f"outbound|9080||{REVIEWS}"]["endpoints"][0]["lb_endpoints"]
    assert [e.get("metadata") for e in lb] == [
        {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}, None]
    assert "transport_socket_matches" not in generate(mesh=MeshConfig(enable_auto_mtls=False))[CLUSTER][
        f"outbound|9080||{REVIEWS}"]  # fmt: skip
    out = generate(subsets_rule(REVIEWS, ["v1"], {"tls": {"mode": "ISTIO_MUTUAL"}}))
    cluster = out[CLUSTER][f"outbound|9080|v1|{REVIEWS}"]
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == f"outbound_.9080_.v1_.{REVIEWS}"
    assert tls["common_tls_context"]["alpn_protocols"] == ["istio-peer-exchange", "istio"]
    assert "transport_socket_matches" not in cluster
    disabled = generate(subsets_rule(REVIEWS, ["v1"], {"tls": {"mode": "DISABLE"}}))[CLUSTER][f"outbound|9080|v1|{REVIEWS}"]
    assert "transport_socket" not in disabled and "transport_socket_matches" not in disabled


@pytest.mark.parametrize(("spec", "path"), [
    ({"mtls": {"mode": "SOMETIMES"}}, "spec.mtls.mode"),
    ({"selector": {"matchLabels": {"app": "x"}}, "portLevelMtls": {"http": {"mode": "STRICT"}}}, "spec.portLevelMtls"),
    ({"portLevelMtls": {"8080": {"mode": "STRICT"}}}, "spec.portLevelMtls"),
])  # fmt: skip
def test_peer_authentication_errors_name_the_field(spec: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resources(peer("bad", spec))
    assert caught.value.path.startswith(path)


@needs_envoy
def test_every_mtls_resource_passes_validation(tmp_path: Path) -> None:
    strict = peer("wl", {"selector": {"matchLabels": {"app": "client"}}, "mtls": {"mode": "STRICT"},
                         "portLevelMtls": {"5432": {"mode": "PERMISSIVE"}}})  # fmt: skip
    out = generate(strict, subsets_rule(REVIEWS, ["v1"], {"tls": {"mode": "ISTIO_MUTUAL"}}))
    config = bootstrap(SIDECAR_NODE, "client.default", {"NAMESPACE": "default"}, free_port(), free_port())
    config["static_resources"]["listeners"] = list(out[LISTENER].values())
    config["static_resources"]["clusters"] += [  # the bootstrap has Istio's sds-grpc (the agent's socket)
        *[c for c in out[CLUSTER].values() if c["type"] != "EDS"],
        *[{**c, "type": "STATIC", "load_assignment": out[ENDPOINT][c["name"]], "eds_cluster_config": None}
          for c in out[CLUSTER].values() if c["type"] == "EDS"],
    ]  # fmt: skip
    for cluster in config["static_resources"]["clusters"]:
        if cluster.get("eds_cluster_config", 0) is None:
            del cluster["eds_cluster_config"]
    path = tmp_path / "mtls.yaml"
    path.write_text(yaml.safe_dump(config))
    for proxy in ([str(ENVOY)], [sys.executable, "-m", "pylon.cli", "proxy"]):  # the reference, then pylon
        result = subprocess.run([*proxy, "--mode", "validate", "-c", str(path), "-l", "error"],
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
