"""MeshConfig fields in the generated config: access logs, trust domain (principals), rootNamespace,
connectTimeout, default exportTo; and the MeshConfig file's errors, each naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pylon.config.errors import ConfigError
from pylon.pilot.gen import generator_for
from pylon.pilot.gen.accesslog import ISTIO_JSON_FORMAT, ISTIO_TEXT_FORMAT
from pylon.pilot.gen.authz import http_rbac_filters, policies_for
from pylon.pilot.gen.trust_domains import with_trust_domains
from pylon.pilot.gen.types import CLUSTER, ENDPOINT, HCM, LISTENER, ROUTE, TCP_PROXY
from pylon.pilot.istio.common import convert
from pylon.pilot.istio.mesh import MeshConfig, load_mesh_config
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import build_snapshot
from pylon.pilot.xds.encode import to_message
from tests.conftest import free_port
from tests.pilot.builders import (SIDECAR_NODE, doc, gateway, gateway_proxy, resources, service_entry, sidecar_proxy,
                                  subsets_rule, virtual_service)  # fmt: skip
from tests.pilot.harness import ENVOY, bootstrap, needs_envoy

REVIEWS = "reviews.default.svc.cluster.local"
SECURITY = "security.istio.io/v1"
# A custom format: the tests below also check that a user's format replaces Istio's default.
PYLON_TEXT_FORMAT = '%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% "%UPSTREAM_HOST%" %ROUTE_NAME%'


def mesh(**fields: Any) -> MeshConfig:
    return convert(fields, MeshConfig)


def sidecar_docs() -> list[dict[str, Any]]:
    own = doc("ServiceEntry", "client", {
        "hosts": ["client.default.svc.cluster.local"], "resolution": "STATIC", "location": "MESH_INTERNAL",
        "workloadSelector": {"labels": {"app": "client"}},
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080},
                  {"number": 5432, "name": "db", "protocol": "TCP"}]})  # fmt: skip
    db = doc("ServiceEntry", "db", {"hosts": ["db.other.svc.cluster.local"], "resolution": "STATIC",
                                    "ports": [{"number": 3306, "name": "tcp", "protocol": "TCP"}],
                                    "endpoints": [{"address": "10.0.0.9"}]}, namespace="other")  # fmt: skip
    return [service_entry(REVIEWS, [("10.0.0.1", 9080, {"version": "v1"})], port=9080, name="reviews"),
            subsets_rule(REVIEWS, ["v1"]), own, db]


def generate(*extra: dict[str, Any], mesh_config: MeshConfig | None = None, proxy: Proxy | None = None,
             base: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The proxy's resources as pilot serves them (access logs and EnvoyFilters included), each valid Envoy API."""
    proxy = proxy or sidecar_proxy()
    docs = sidecar_docs() if base is None else base
    snap = build_snapshot(resources(*docs, *extra), version="v", mesh=mesh_config)
    out = generator_for(proxy).generate(proxy, snap)
    for type_url, items in out.items():
        for item in items.values():
            to_message(type_url, item)
    return out


def logged_filters(out: dict[str, Any]) -> list[tuple[str, str, list[Any] | None]]:
    """(listener, filter @type, its access_log) for every HCM and tcp_proxy."""
    found = []
    for listener in out[LISTENER].values():
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                config = network_filter["typed_config"]
                if config["@type"] in (HCM, TCP_PROXY):
                    found.append((listener["name"], config["@type"], config.get("access_log")))
    return found


# --------------------------------------------------------------------------- access logs


def test_no_access_log_without_access_log_file() -> None:
    assert all(log is None for _, _, log in logged_filters(generate()))


def test_istio_text_format_on_every_hcm_and_tcp_proxy() -> None:
    out = generate(mesh_config=mesh(accessLogFile="/dev/stdout"))
    found = logged_filters(out)
    assert {kind for _, kind, _ in found} == {HCM, TCP_PROXY}
    assert {name for name, _, _ in found} == {"0.0.0.0_80", "0.0.0.0_5432", "0.0.0.0_9080", "0.0.0.0_3306",
                                             "virtualOutbound", "virtualInbound"}  # fmt: skip
    for _, _, log in found:
        assert log == [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/dev/stdout",
            "log_format": {"text_format_source": {"inline_string": ISTIO_TEXT_FORMAT}}}}]  # fmt: skip
    assert ISTIO_TEXT_FORMAT.endswith("%ROUTE_NAME%\n") and "%UPSTREAM_CLUSTER_RAW%" in ISTIO_TEXT_FORMAT


def test_gateway_json_default_and_custom_formats() -> None:
    gw_docs = [gateway(8080), service_entry("echo.example.com", [("10.0.0.1", 80, {})]),
               virtual_service([{"route": [{"destination": {"host": "echo.example.com"}}]}])]
    out = generate(mesh_config=mesh(accessLogFile="/tmp/a.log", accessLogEncoding="JSON"), proxy=gateway_proxy(),
                   base=gw_docs)  # fmt: skip
    [(name, kind, [log])] = logged_filters(out)
    assert (name, kind) == ("0.0.0.0_8080", HCM)
    assert log["typed_config"]["path"] == "/tmp/a.log"
    assert log["typed_config"]["log_format"] == {"json_format": ISTIO_JSON_FORMAT}
    assert len(ISTIO_JSON_FORMAT) == 24 and ISTIO_JSON_FORMAT["upstream_cluster"] == "%UPSTREAM_CLUSTER_RAW%"
    custom = '{"code": "%RESPONSE_CODE%", "nested": {"host": "%UPSTREAM_HOST%"}}'
    out = generate(mesh_config=mesh(accessLogFile="/tmp/a.log", accessLogEncoding="JSON", accessLogFormat=custom),
                   proxy=gateway_proxy(), base=gw_docs)  # fmt: skip
    [(_, _, [log])] = logged_filters(out)
    assert log["typed_config"]["log_format"] == {"json_format": json.loads(custom)}


def test_custom_text_format_gets_istios_newline() -> None:
    for text in ("%RESPONSE_CODE%", "%RESPONSE_CODE%\n"):
        out = generate(mesh_config=mesh(accessLogFile="/dev/stdout", accessLogFormat=text))
        formats = {log[0]["typed_config"]["log_format"]["text_format_source"]["inline_string"]
                   for _, _, log in logged_filters(out)}  # fmt: skip
        assert formats == {"%RESPONSE_CODE%\n"}


def validate(out: dict[str, Any], tmp_path: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    """`--mode validate` of a bootstrap holding the capture-mode sidecar's listeners and clusters statically."""
    config = bootstrap(SIDECAR_NODE, "client.default", {"NAMESPACE": "default"}, free_port(), free_port())
    config["static_resources"]["listeners"] = list(out[LISTENER].values())
    for cluster in out[CLUSTER].values():
        if cluster["type"] == "EDS":
            cluster = {**cluster, "type": "STATIC", "load_assignment": out[ENDPOINT][cluster["name"]]}
            del cluster["eds_cluster_config"]
        config["static_resources"]["clusters"].append(cluster)
    path = tmp_path / f"sidecar-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([*command, "--mode", "validate", "-c", str(path), "-l", "error"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


PYLON = [sys.executable, "-m", "pylon.cli", "proxy"]


@needs_envoy
@pytest.mark.parametrize("encoding", ["TEXT", "JSON"])
def test_envoy_accepts_istios_default_formats(tmp_path: Path, encoding: str) -> None:
    out = generate(mesh_config=mesh(accessLogFile=str(tmp_path / "access.log"), accessLogEncoding=encoding))
    result = validate(out, tmp_path, [str(ENVOY)])
    assert result.returncode == 0, result.stdout + result.stderr


@needs_envoy
def test_envoy_and_pylon_accept_a_custom_format(tmp_path: Path) -> None:
    out = generate(mesh_config=mesh(accessLogFile=str(tmp_path / "access.log"), accessLogFormat=PYLON_TEXT_FORMAT))
    for command in ([str(ENVOY)], PYLON):
        result = validate(out, tmp_path, command)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("encoding", ["TEXT", "JSON"])
def test_pylon_accepts_istios_default_formats(tmp_path: Path, encoding: str) -> None:
    out = generate(mesh_config=mesh(accessLogFile=str(tmp_path / "access.log"), accessLogEncoding=encoding))
    result = validate(out, tmp_path, PYLON)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- trust domain


@pytest.mark.parametrize(("principal", "domains", "expected"), [
    ("cluster.local/ns/a/sa/b", ("example.org",), ["example.org/ns/a/sa/b"]),  # cluster.local means this mesh
    ("cluster.local/ns/a/sa/b", ("cluster.local",), ["cluster.local/ns/a/sa/b"]),
    ("old.td/ns/a/sa/b", ("new.td", "old.td"), ["new.td/ns/a/sa/b", "old.td/ns/a/sa/b"]),  # an alias: both
    ("cluster.local/ns/a/sa/b", ("new.td", "old.td"), ["new.td/ns/a/sa/b", "old.td/ns/a/sa/b"]),
    ("other.td/ns/a/sa/b", ("new.td", "old.td"), ["other.td/ns/a/sa/b"]),  # another mesh: as written
    ("*/ns/a/sa/b", ("new.td",), ["*/ns/a/sa/b"]),  # any trust domain
    ("*.td/ns/a/sa/b", ("new.td", "old.org"), ["*.td/ns/a/sa/b", "old.org/ns/a/sa/b"]),
    ("cluster.local/ns/a/*", ("new.td",), ["cluster.local/ns/a/*"]),  # not five parts: nothing to rewrite
    ("*", ("new.td",), ["*"]),
])  # fmt: skip
def test_principals_follow_istios_trust_domain_bundle(principal: str, domains: tuple[str, ...],
                                                      expected: list[str]) -> None:  # fmt: skip
    assert with_trust_domains([principal], domains) == expected


def test_policy_principals_under_a_custom_trust_domain_and_aliases() -> None:
    policy = doc("AuthorizationPolicy", "p", {"rules": [
        {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"], "notPrincipals": ["old.td/ns/x/sa/y"]}}],
         "when": [{"key": "source.principal", "values": ["cluster.local/ns/ops/sa/admin"]}]}]},
        api_version=SECURITY)  # fmt: skip
    snap = build_snapshot(resources(policy), version="v",
                          mesh=mesh(trustDomain="new.td", trustDomainAliases=["old.td"]))  # fmt: skip
    [rbac] = http_rbac_filters(policies_for(sidecar_proxy(), snap))
    [rule] = rbac["typed_config"]["rules"]["policies"].values()

    def names(node: Any) -> list[str]:
        if isinstance(node, dict):
            if "principal_name" in node:
                return [node["principal_name"]["exact"]]
            return [n for value in node.values() for n in names(value)]
        return [n for value in node for n in names(value)] if isinstance(node, list) else []

    assert names(rule["principals"]) == [
        "spiffe://new.td/ns/shop/sa/web", "spiffe://old.td/ns/shop/sa/web",
        "spiffe://new.td/ns/x/sa/y", "spiffe://old.td/ns/x/sa/y",
        "spiffe://new.td/ns/ops/sa/admin", "spiffe://old.td/ns/ops/sa/admin"]  # fmt: skip


# --------------------------------------------------------------------------- rootNamespace


def test_root_namespace_scopes_sidecars_peer_authentication_authz_and_envoy_filters() -> None:
    def mesh_wide(namespace: str) -> list[dict[str, Any]]:
        return [
            doc("Sidecar", "default", {"egress": [{"hosts": ["./*"]}]}, namespace=namespace),
            doc("PeerAuthentication", "default", {"mtls": {"mode": "STRICT"}}, namespace=namespace, api_version=SECURITY),
            doc("AuthorizationPolicy", "deny-all", {"action": "DENY", "rules": [{}]}, namespace=namespace,
                api_version=SECURITY),
            doc("EnvoyFilter", "balance", {"configPatches": [{
                "applyTo": "LISTENER", "match": {"context": "SIDECAR_INBOUND"},
                "patch": {"operation": "MERGE", "value": {"connectionBalanceConfig": {"exactBalance": {}}}}}]},
                namespace=namespace, api_version="networking.istio.io/v1alpha3"),
        ]  # fmt: skip

    def applied(out: dict[str, Any]) -> dict[str, bool]:
        inbound = out[LISTENER]["virtualInbound"]
        chains = [c for c in inbound["filter_chains"] if c["name"] == "0.0.0.0_8080"]
        return {
            "sidecar": "0.0.0.0_3306" not in out[LISTENER],  # egress ./* hides the other namespace's db
            "peer_authentication": all("transport_socket" in c for c in chains),
            "authz": any(f["name"] == "envoy.filters.network.rbac" for c in inbound["filter_chains"] for f in c["filters"]),
            "envoy_filter": "connection_balance_config" in inbound,
        }  # fmt: skip

    everything = dict.fromkeys(["sidecar", "peer_authentication", "authz", "envoy_filter"], True)
    nothing = dict.fromkeys(everything, False)
    assert applied(generate(*mesh_wide("istio-system"))) == everything
    assert applied(generate(*mesh_wide("mesh-root"))) == nothing
    assert applied(generate(*mesh_wide("mesh-root"), mesh_config=mesh(rootNamespace="mesh-root"))) == everything
    assert applied(generate(*mesh_wide("istio-system"), mesh_config=mesh(rootNamespace="mesh-root"))) == nothing


# --------------------------------------------------------------------------- connectTimeout


def test_connect_timeout_on_every_cluster_unless_a_destination_rule_sets_one() -> None:
    assert {c["connect_timeout"] for c in generate()[CLUSTER].values()} == {"10s"}
    out = generate(mesh_config=mesh(connectTimeout="2.5s"))
    assert {"BlackHoleCluster", "PassthroughCluster", "InboundPassthroughCluster", "inbound|8080||",
            f"outbound|9080|v1|{REVIEWS}"} <= set(out[CLUSTER])  # fmt: skip
    assert {c["connect_timeout"] for c in out[CLUSTER].values()} == {"2.5s"}
    rule = subsets_rule(REVIEWS, ["v1"], {"connectionPool": {"tcp": {"connectTimeout": "250ms"}}})
    base = [d for d in sidecar_docs() if d["kind"] != "DestinationRule"]
    out = generate(rule, mesh_config=mesh(connectTimeout="2.5s"), base=base)
    assert out[CLUSTER][f"outbound|9080|v1|{REVIEWS}"]["connect_timeout"] == "0.25s"
    assert out[CLUSTER]["outbound|3306||db.other.svc.cluster.local"]["connect_timeout"] == "2.5s"


# --------------------------------------------------------------------------- default exportTo


def test_default_export_to_applies_to_resources_without_export_to() -> None:
    other_vs = doc("VirtualService", "db-route", {"hosts": [REVIEWS], "http": [
        {"route": [{"destination": {"host": REVIEWS}}], "headers": {"response": {"set": {"x-from": "other"}}}}]},
        namespace="other")  # fmt: skip
    other_dr = doc("DestinationRule", "lb", {"host": REVIEWS, "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}},
                   namespace="other")
    base = [d for d in sidecar_docs() if d["kind"] != "DestinationRule"]

    def seen(**fields: Any) -> dict[str, bool]:
        out = generate(other_vs, other_dr, base=base, mesh_config=mesh(**fields))
        routes = out[ROUTE]["9080"]["virtual_hosts"][0]["routes"]
        return {"service": "0.0.0.0_3306" in out[LISTENER],
                "virtual_service": any("response_headers_to_add" in r for r in routes),
                "destination_rule": out[CLUSTER][f"outbound|9080||{REVIEWS}"]["lb_policy"] == "RANDOM"}

    assert seen() == {"service": True, "virtual_service": True, "destination_rule": True}  # `*` by default
    assert seen(defaultServiceExportTo=["."]) == {"service": False, "virtual_service": True, "destination_rule": True}
    assert seen(defaultVirtualServiceExportTo=["other"], defaultDestinationRuleExportTo=["~"]) == {
        "service": True, "virtual_service": False, "destination_rule": False}
    assert seen(defaultVirtualServiceExportTo=["default"]) == {
        "service": True, "virtual_service": True, "destination_rule": True}
    exported = doc("ServiceEntry", "db", {**sidecar_docs()[-1]["spec"], "exportTo": ["*"]}, namespace="other")
    base = [d for d in base if d["metadata"]["name"] != "db"] + [exported]
    out = generate(base=base, mesh_config=mesh(defaultServiceExportTo=["."]))
    assert "0.0.0.0_3306" in out[LISTENER]  # a resource's own exportTo wins over the default


# --------------------------------------------------------------------------- the MeshConfig file


def test_mesh_config_file_decodes_the_implemented_fields(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump({
        "accessLogFile": "/dev/stdout", "accessLogEncoding": "JSON", "accessLogFormat": '{"code": "%RESPONSE_CODE%"}\n',
        "trustDomain": "example.org", "trustDomainAliases": ["old.example.org"], "rootNamespace": "mesh-root",
        "connectTimeout": "1m30s", "defaultServiceExportTo": ["."], "defaultVirtualServiceExportTo": ["*"],
        "defaultDestinationRuleExportTo": ["~"]}))  # fmt: skip
    config = load_mesh_config(path)
    assert (config.access_log_file, config.access_log_encoding, config.trust_domains, config.root_namespace,
            config.connect_timeout) == ("/dev/stdout", "JSON", ("example.org", "old.example.org"), "mesh-root", 90.0)
    assert (config.default_service_export_to, config.default_destination_rule_export_to) == (["."], ["~"])
    defaults = load_mesh_config(None)
    assert (defaults.trust_domain, defaults.root_namespace, defaults.connect_timeout, defaults.access_log_file,
            defaults.access_log_encoding) == ("cluster.local", "istio-system", 10.0, "", "TEXT")  # fmt: skip


@pytest.mark.parametrize(("text", "path", "message"), [
    ("accessLogEncoding: XML\n", "accessLogEncoding", "Invalid enum value 'XML'"),
    ("accessLogEncoding: JSON\naccessLogFormat: '%START_TIME%'\n", "accessLogFormat", "not valid JSON"),
    ("accessLogEncoding: JSON\naccessLogFormat: '[1]'\n", "accessLogFormat", "non-empty JSON object"),
    ("trustDomain: Example_Org\n", "trustDomain", "trust domain name 'Example_Org' invalid"),
    ("trustDomainAliases: [ok.org, '*.org']\n", "trustDomainAliases[1]", "invalid"),
    ("rootNamespace: Istio_System\n", "rootNamespace", "matching regex"),
    ("connectTimeout: 0s\n", "connectTimeout", "between 1ms and 1h"),
    ("connectTimeout: 2h\n", "connectTimeout", "between 1ms and 1h"),
    ("connectTimeout: 1.5ms\n", "connectTimeout", "whole milliseconds"),
    ("connectTimeout: 10\n", "connectTimeout", "invalid duration"),
    ("defaultServiceExportTo: ['~', '.']\n", "defaultServiceExportTo", "cannot be combined"),
    ("defaultVirtualServiceExportTo: [Bad_NS]\n", "defaultVirtualServiceExportTo[0]", "not `*`, `.`, `~` or a namespace"),
    ("enableTracing: true\n", "enableTracing", "not supported by pylon pilot yet"),
])  # fmt: skip
def test_mesh_config_errors_name_file_and_field(tmp_path: Path, text: str, path: str, message: str) -> None:
    file = tmp_path / "mesh.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_mesh_config(file)
    assert caught.value.path == path and message in str(caught.value)
    assert str(file) in str(caught.value)
