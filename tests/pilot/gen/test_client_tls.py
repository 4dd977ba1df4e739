"""DestinationRule TLS origination (SIMPLE, MUTUAL) on outbound clusters, in istiod's shapes; every resource also
goes through Envoy's API (pilot's encoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.pilot.gen.sidecar import SidecarGenerator
from pylon.pilot.gen.types import CLUSTER, SECRET
from pylon.pilot.istio.mesh import MeshConfig
from pylon.pilot.snapshot import build_snapshot
from pylon.pilot.xds.encode import to_message
from tests.pilot.builders import doc, resources, sidecar_proxy
from tests.pilot.gen.test_gateway_tls import generate as generate_gateway, secret_manifest

API = "api.example.com"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def entry(protocol: str = "HTTPS", sans: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"hosts": [API], "resolution": "DNS", "ports": [{"number": 443, "name": "tls", "protocol": protocol}]}
    if sans:
        spec["subjectAltNames"] = sans
    return doc("ServiceEntry", "api", spec)


def rule(tls: dict[str, Any], subsets: list[dict[str, Any]] | None = None, **policy: Any) -> dict[str, Any]:
    return doc("DestinationRule", "api", {"host": API, "trafficPolicy": {"tls": tls, **policy}, "subsets": subsets or []})


def sidecar_clusters(*docs: dict[str, Any], mesh: MeshConfig | None = None) -> dict[str, Any]:
    out = SidecarGenerator().generate(sidecar_proxy(), build_snapshot(resources(*docs), version="v", mesh=mesh))
    for name, cluster in out[CLUSTER].items():
        to_message(CLUSTER, cluster)
    return out[CLUSTER]


def context(cluster: dict[str, Any]) -> dict[str, Any]:
    return cluster["transport_socket"]["typed_config"]


def test_simple_with_files_is_served_by_the_agent_and_checks_the_rules_sans() -> None:
    cluster = sidecar_clusters(entry(), rule({"mode": "SIMPLE", "caCertificates": "/etc/certs/ca.pem", "sni": "api",
                                             "subjectAltNames": ["api.example.com"]}))[f"outbound|443||{API}"]  # fmt: skip
    tls = context(cluster)
    assert tls["sni"] == "api"
    common = tls["common_tls_context"]
    assert common["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"}
    assert "tls_certificate_sds_secret_configs" not in common and "alpn_protocols" not in common
    combined = common["combined_validation_context"]
    assert combined["default_validation_context"] == {"match_subject_alt_names": [{"exact": "api.example.com"}]}
    sds = combined["validation_context_sds_secret_config"]
    assert sds["name"] == "file-root:/etc/certs/ca.pem"
    assert sds["sds_config"]["api_config_source"]["grpc_services"] == [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]
    assert HTTP_OPTIONS not in cluster.get("typed_extension_protocol_options", {})  # sni and SANs written: no auto


def test_simple_without_sni_or_ca_uses_system_roots_auto_sni_and_auto_san_validation() -> None:
    cluster = sidecar_clusters(entry(), rule({"mode": "SIMPLE"}))[f"outbound|443||{API}"]
    combined = context(cluster)["common_tls_context"]["combined_validation_context"]
    assert combined["validation_context_sds_secret_config"]["name"] == "file-root:system"
    assert combined["default_validation_context"] == {}
    assert "sni" not in context(cluster)
    options = cluster["typed_extension_protocol_options"][HTTP_OPTIONS]
    assert options["upstream_http_protocol_options"] == {"auto_sni": True, "auto_san_validation": True}
    assert options["explicit_http_config"] == {"http_protocol_options": {}}


def test_service_entry_sans_when_the_rule_has_none_and_aliases_expand_spiffe_ids() -> None:
    mesh = MeshConfig(trust_domain_aliases=["old.example"])
    cluster = sidecar_clusters(entry(sans=["spiffe://cluster.local/ns/a/sa/b", "api.example.com"]),
                               rule({"mode": "SIMPLE"}), mesh=mesh)[f"outbound|443||{API}"]  # fmt: skip
    sans = context(cluster)["common_tls_context"]["combined_validation_context"]["default_validation_context"]
    assert sans["match_subject_alt_names"] == [{"exact": "api.example.com"}, {"exact": "spiffe://cluster.local/ns/a/sa/b"},
                                               {"exact": "spiffe://old.example/ns/a/sa/b"}]  # fmt: skip
    # auto_san_validation depends on the rule's SANs alone, as in istiod
    assert cluster["typed_extension_protocol_options"][HTTP_OPTIONS]["upstream_http_protocol_options"][
        "auto_san_validation"]  # fmt: skip


def test_mutual_with_files_and_crl_and_http2_alpn() -> None:
    cluster = sidecar_clusters(entry("GRPC"), rule({"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem",
                                                    "caCrl": "/crl.pem"}))[f"outbound|443||{API}"]  # fmt: skip
    common = context(cluster)["common_tls_context"]
    assert [c["name"] for c in common["tls_certificate_sds_secret_configs"]] == ["file-cert:/c.pem~/k.pem"]
    assert common["combined_validation_context"]["default_validation_context"] == {"crl": {"filename": "/crl.pem"}}
    assert common["alpn_protocols"] == ["h2"]


def test_insecure_skip_verify_verifies_nothing() -> None:
    cluster = sidecar_clusters(entry(), rule({"mode": "SIMPLE", "insecureSkipVerify": True}))[f"outbound|443||{API}"]
    assert context(cluster)["common_tls_context"]["validation_context"] == {}
    assert cluster["typed_extension_protocol_options"][HTTP_OPTIONS]["upstream_http_protocol_options"] == {"auto_sni": True}


def test_port_level_and_subset_tls_layers() -> None:
    tls_rule = rule({"mode": "DISABLE"}, subsets=[{"name": "secure", "labels": {},
                                                   "trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": "s"}}}],
                    portLevelSettings=[{"port": {"number": 443}, "tls": {"mode": "SIMPLE", "sni": "p"}}])  # fmt: skip
    clusters = sidecar_clusters(entry(), tls_rule)
    assert context(clusters[f"outbound|443||{API}"])["sni"] == "p"
    assert context(clusters[f"outbound|443|secure|{API}"])["sni"] == "s"


def test_a_tls_block_without_mode_is_disable_as_in_istio() -> None:
    internal = doc("ServiceEntry", "api", {"hosts": [API], "resolution": "STATIC", "location": "MESH_INTERNAL",
                                           "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]})  # fmt: skip
    assert "transport_socket_matches" in sidecar_clusters(internal)[f"outbound|80||{API}"]  # auto mTLS
    cluster = sidecar_clusters(internal, rule({}))[f"outbound|80||{API}"]
    assert "transport_socket_matches" not in cluster and "transport_socket" not in cluster


def test_istio_mutual_takes_the_rules_sni_and_sans() -> None:
    cluster = sidecar_clusters(entry(), rule({"mode": "ISTIO_MUTUAL", "sni": "custom",
                                             "subjectAltNames": ["spiffe://cluster.local/ns/x/sa/y"]}))[f"outbound|443||{API}"]
    tls = context(cluster)
    assert tls["sni"] == "custom"
    assert tls["common_tls_context"]["combined_validation_context"]["default_validation_context"] == {
        "match_subject_alt_names": [{"exact": "spiffe://cluster.local/ns/x/sa/y"}]}


def test_credential_name_on_a_gateway_is_served_over_ads(tmp_path: Path) -> None:
    gateway = doc("Gateway", "gw", {"selector": {"istio": "ingressgateway"}, "servers": [
        {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}, namespace="istio-system")
    out = generate_gateway([gateway, {**entry(), "metadata": {"name": "api", "namespace": "istio-system"}},
                            {**rule({"mode": "MUTUAL", "credentialName": "api-client", "subjectAltNames": ["api.example.com"]}),
                             "metadata": {"name": "api", "namespace": "istio-system"}}],
                           [secret_manifest("api-client", with_ca=True)], tmp_path=tmp_path)  # fmt: skip
    common = context(out[CLUSTER][f"outbound|443||{API}"])["common_tls_context"]
    assert common["tls_certificate_sds_secret_configs"] == [
        {"name": "kubernetes://api-client", "sds_config": {"ads": {}, "resource_api_version": "V3"}}]
    assert common["combined_validation_context"]["validation_context_sds_secret_config"]["name"] == \
        "kubernetes://api-client-cacert"  # fmt: skip
    assert sorted(out[SECRET]) == ["kubernetes://api-client", "kubernetes://api-client-cacert"]
    assert "tls_certificate" in out[SECRET]["kubernetes://api-client"]
    assert "validation_context" in out[SECRET]["kubernetes://api-client-cacert"]


def test_credential_name_on_a_sidecar_leaves_the_cluster_plaintext_as_istio() -> None:
    cluster = sidecar_clusters(entry(), rule({"mode": "SIMPLE", "credentialName": "api-ca"}))[f"outbound|443||{API}"]
    assert "transport_socket" not in cluster


@pytest.mark.parametrize(("tls", "path"), [
    ({"mode": "MUTUAL"}, "clientCertificate"),
    ({"mode": "MUTUAL", "clientCertificate": "/c.pem"}, "privateKey"),
    ({"mode": "SIMPLE", "credentialName": "x", "caCertificates": "/ca.pem"}, "caCertificates"),
    ({"mode": "SIMPLE", "insecureSkipVerify": True, "subjectAltNames": ["a"]}, "subjectAltNames"),
    ({"mode": "SIMPLE", "insecureSkipVerify": True, "credentialName": "x"}, "credentialName"),
    ({"mode": "MUTUAL", "insecureSkipVerify": True, "caCertificates": "/ca.pem", "clientCertificate": "/c",
      "privateKey": "/k"}, "caCertificates"),
    ({"mode": "SIMPLE", "credentialName": "sds://x"}, "credentialName"),
    ({"mode": "ISTIO_MUTUAL", "caCertificates": "/ca.pem"}, "caCertificates"),
    ({"mode": "DISABLE", "sni": "x"}, "sni"),
    ({"mode": "ISTIO_MUTUAL", "insecureSkipVerify": True}, "insecureSkipVerify"),
])  # fmt: skip
def test_tls_settings_errors_name_the_field(tls: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resources(rule(tls))
    assert caught.value.path == f"spec.trafficPolicy.tls.{path}"
