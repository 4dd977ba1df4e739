"""The sans-IO parts of `pylon mesh`: names, addresses, capture rules, workload resources, install files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from pylon.config.errors import ConfigError
from pylon.mesh.capture import ruleset
from pylon.mesh.install import effective_proxy_config, load_install
from pylon.mesh.layout import allocate, check_name
from pylon.mesh.resources import (WorkloadSpec, hosts_file, pod_hosts_file, resolv_conf, service_document,
                                  workload_document)  # fmt: skip
from pylon.pilot.istio.resources import decode_resource
from pylon.pilot.snapshot import build_snapshot

SPEC = WorkloadSpec(name="server", namespace="default", service_account="server", address="10.77.0.10",
                    vip="10.77.128.10", ports=(8080,), labels={"version": "v1"}, service="server")
V2 = WorkloadSpec(name="server-v2", namespace="default", service_account="server", address="10.77.0.11",
                  vip="10.77.128.10", ports=(8080,), labels={"version": "v2"}, service="server")


def test_slots_addresses_and_names() -> None:
    slot = allocate({10, 11})
    assert (slot.index, str(slot.address), str(slot.vip)) == (12, "10.77.0.12", "10.77.128.12")
    assert check_name("server-1", "workload") == "server-1"
    with pytest.raises(ValueError, match="DNS label"):
        check_name("Server_1", "workload")


def test_capture_rules_exempt_the_proxy_and_its_ports() -> None:
    rules = ruleset()
    assert "tcp dport { 15008, 15020, 15021, 15090 } return" in rules
    assert "meta l4proto tcp redirect to :15006" in rules and "meta l4proto tcp redirect to :15001" in rules
    assert "meta skuid 1337 return" in rules and "meta skgid 1337 return" in rules
    assert 'ip saddr 127.0.0.6 oifname "lo" return' in rules
    # The order is the rules' meaning: the exemptions come before the catch-all redirect.
    assert rules.index("meta skgid 1337 return") < rules.index("redirect to :15001")


def test_dns_capture_sends_every_query_but_the_proxys_to_the_agent() -> None:
    assert ":15053" not in ruleset()
    rules = ruleset(dns=True)
    for proto in ("udp", "tcp"):
        assert f"{proto} dport 53 meta skuid != 1337 meta skgid != 1337 redirect to :15053" in rules
    # Ahead of the loopback exemptions: a resolver on loopback is captured too.
    assert rules.index("redirect to :15053") < rules.index('oifname "lo" meta skuid != 1337 return')


def test_a_pod_whose_sidecar_answers_dns_has_no_service_names_in_its_hosts_file() -> None:
    capturing = dataclasses.replace(SPEC, dns_capture=True)
    assert pod_hosts_file(capturing, [SPEC, V2]) == "127.0.0.1 localhost\n::1 localhost\n"
    assert "server.default.svc.cluster.local" in pod_hosts_file(SPEC, [SPEC, V2])
    conf = resolv_conf("shop", "10.77.0.1")
    assert "search shop.svc.cluster.local svc.cluster.local cluster.local\n" in conf and "nameserver 10.77.0.1\n" in conf


def test_sidecars_capture_dns_unless_their_proxy_metadata_says_not() -> None:
    assert effective_proxy_config({}, dns_capture_by_default=True).captures_dns
    assert not effective_proxy_config({}).captures_dns  # gateways: Istio's default
    off = {"defaultConfig": {"proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "false", "A": "1"}}}
    result = effective_proxy_config(off, dns_capture_by_default=True)
    assert not result.captures_dns and yaml.safe_load(result.text)["proxyMetadata"] == {
        "ISTIO_META_DNS_CAPTURE": "false", "A": "1"}


def test_workload_resources_are_what_pilot_reads() -> None:
    docs = [service_document(SPEC), workload_document(SPEC), workload_document(V2)]
    resources = [decode_resource(doc, "workload.yaml", i) for i, doc in enumerate(docs)]
    snapshot = build_snapshot(resources, version="v")
    [service] = snapshot.services["server.default.svc.cluster.local"]
    assert [(e.address, e.labels["version"], e.labels["security.istio.io/tlsMode"]) for e in service.endpoints] == [
        ("10.77.0.10", "v1", "istio"), ("10.77.0.11", "v2", "istio")]  # two workloads back one service
    assert resources[0].spec.addresses == ["10.77.128.10"]


def test_every_pod_resolves_every_service() -> None:
    hosts = hosts_file([SPEC, V2])
    assert "10.77.128.10 server.default.svc.cluster.local server.default.svc server.default" in hosts
    assert hosts.count("server.default.svc.cluster.local") == 1


def test_install_file_uses_mesh_config_and_names_what_it_ignores(tmp_path: Path) -> None:
    path = tmp_path / "install.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {
        "hub": "docker.io/intel", "tag": "1.21.0-intel.0", "meshConfig": {"accessLogFile": "/dev/stdout"},
        "components": {"pilot": {"k8s": {"resources": {}}}}}}))  # fmt: skip
    install = load_install(path)
    assert install.mesh_config == {"accessLogFile": "/dev/stdout"}
    assert sorted(install.ignored) == ["spec.components.pilot", "spec.hub", "spec.tag"]


@pytest.mark.parametrize(("spec", "field"), [
    ({"meshConfig": {"accessLogEncoding": "XML"}}, "spec.meshConfig.accessLogEncoding"),
    ({"components": {"egressGateways": [{"name": "istio-egressgateway", "enabled": True}]}},
     "spec.components.egressGateways"),
    ({"components": {"ingressGateways": [{"name": "gw", "k8s": {"podAnnotations": {
        "proxy.istio.io/config": "privateKeyProvider:\n  qat: {}\n"}}}]}},
     "spec.components.ingressGateways[0].k8s.podAnnotations.proxy.istio.io/config.privateKeyProvider.qat.pollDelay"),
    ({"addonComponents": {}}, "spec.addonComponents"),
    ({"components": {"ingressGateways": [{"name": "gw", "k8s": {"podAnnotations": {
        "inject.istio.io/templates": "gateway,sgx"}}}]}},
     "spec.components.ingressGateways[0].k8s.podAnnotations.inject.istio.io/templates"),
    ({"components": {"ingressGateways": [{"name": "gw", "k8s": {"podAnnotations": {
        "inject.istio.io/templates": "gateway,keyd,pkcs11"}}}]}},
     "spec.components.ingressGateways[0].k8s.podAnnotations.inject.istio.io/templates"),
])  # fmt: skip
def test_install_errors_name_the_field(tmp_path: Path, spec: dict, field: str) -> None:
    path = tmp_path / "install.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": spec}))
    with pytest.raises(ConfigError) as info:
        load_install(path)
    assert info.value.path == field and str(path) in str(info.value)


@pytest.mark.parametrize(("templates", "keys"), [("gateway", ""), ("gateway,keyd", "keyd"), ("pkcs11", "pkcs11")])
def test_the_templates_annotation_says_where_a_gateways_keys_live(tmp_path: Path, templates: str, keys: str) -> None:
    path = tmp_path / "install.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {
        "components": {"ingressGateways": [{"name": "gw", "k8s": {"podAnnotations": {
            "inject.istio.io/templates": templates}}}]}}}))  # fmt: skip
    install = load_install(path)
    assert install.gateways[0].keys == keys and install.ignored == []


def test_a_mesh_address_is_used_only_through_our_own_eth0(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing may leave the machine: a route to a mesh address that is not our veth (e.g. the host's default
    route) is refused before anything is sent."""
    import ipaddress

    from pylon.mesh import netns

    monkeypatch.setattr(netns, "run", lambda *cmd, **kw: "10.77.0.2 via 192.168.1.1 dev ens3 src 192.168.1.5\n")
    with pytest.raises(netns.MeshError, match="route is not our eth0"):
        netns.check_route("pm-x", ipaddress.ip_address("10.77.0.2"))
    monkeypatch.setattr(netns, "run", lambda *cmd, **kw: "10.77.0.2 dev eth0 src 10.77.0.10 uid 0\n")
    netns.check_route("pm-x", ipaddress.ip_address("10.77.0.2"))


def test_an_ingress_gateway_of_intels_qat_install(tmp_path: Path) -> None:
    """The shape of Intel's QAT install file: the gateway, its annotation used, Kubernetes's parts named."""
    path = tmp_path / "qat.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {
        "profile": "default", "components": {"ingressGateways": [{"name": "istio-ingressgateway", "enabled": True,
            "k8s": {"overlays": [], "resources": {"requests": {"qat.intel.com/cy": "1"}},
                    "podAnnotations": {"proxy.istio.io/config": "privateKeyProvider:\n  qat:\n    pollDelay: 2ms\n"}}}]},
        "values": {"sidecarInjectorWebhook": {}}}}))  # fmt: skip
    install = load_install(path)
    [gateway] = install.gateways
    assert (gateway.name, gateway.namespace) == ("istio-ingressgateway", "istio-system")
    assert gateway.labels == {"app": "istio-ingressgateway", "istio": "ingressgateway"}
    assert "qat" in gateway.proxy_config
    assert sorted(install.ignored) == ["spec.components.ingressGateways[0].k8s.overlays",
                                       "spec.components.ingressGateways[0].k8s.resources", "spec.profile",
                                       "spec.values"]


def test_proxy_status_as_istioctl_shows_it() -> None:
    from pylon.mesh.proxy_status import proxy_rows, rejections

    syncz = [{"proxy": "sidecar~10.77.0.10~server-0.default~default.svc.cluster.local", "config_version": "v7",
              "types": {"cds": {"sent": "v7", "acked": "v7", "nack": ""}, "lds": {"sent": "v7", "acked": "v6", "nack": ""},
                        "eds": {"sent": "v7", "acked": "v7", "nack": "bad endpoint"}}}]  # fmt: skip
    assert proxy_rows(syncz) == [["server-0.default", "SYNCED", "STALE", "STALE", "NOT SENT", "NOT SENT", "v7"]]
    assert rejections(syncz) == ["server-0.default eds: bad endpoint"]


def test_pods_without_a_sidecar_reach_a_vip_like_kube_proxy() -> None:
    from pylon.mesh.kube_proxy import ruleset as services_ruleset

    script = services_ruleset({("10.77.128.10", 8080): ["10.77.0.10", "10.77.0.11"], ("10.77.128.12", 80): []})
    assert ("ip daddr 10.77.128.10 tcp dport 8080 dnat to numgen random mod 2 map { 0 : 10.77.0.10, 1 : 10.77.0.11 }"
            in script)
    assert "10.77.128.12" not in script  # no pod behind it: nothing to pick


def test_a_pods_proxy_config_is_mesh_default_under_its_annotation() -> None:
    """As Istio merges them for the agent: defaultConfig, then the proxy.istio.io/config annotation over it."""
    from pylon.mesh.install import effective_proxy_config

    mesh = {"defaultConfig": {"privateKeyProvider": {"cryptomb": {"pollDelay": "10ms", "fallback": True}}}}
    assert yaml.safe_load(effective_proxy_config(mesh).text) == mesh["defaultConfig"]
    annotation = "privateKeyProvider:\n  qat:\n    pollDelay: 2ms\n"
    assert yaml.safe_load(effective_proxy_config(mesh, annotation).text) == {
        "privateKeyProvider": {"qat": {"pollDelay": "2ms"}}}
    assert effective_proxy_config({}).text == ""
