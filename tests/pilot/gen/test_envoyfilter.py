"""EnvoyFilter: the seed's connection-balancing LISTENER MERGE, HTTP_FILTER operations, CLUSTER patches, BOOTSTRAP
refused; the patched gateway config passes `envoy --mode validate`."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pylon.config.errors import ConfigError
from pylon.pilot.gen import generator_for
from pylon.pilot.gen.types import CLUSTER, LISTENER
from pylon.pilot.xds.encode import to_message
from tests.conftest import free_port
from tests.pilot.builders import GATEWAY_NODE, doc, gateway, gateway_proxy, resources, service_entry, snapshot
from tests.pilot.harness import ENVOY, bootstrap, needs_envoy

HOST = "echo.example.com"


def envoy_filter(name: str, patches: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return doc("EnvoyFilter", name, {"configPatches": patches, **spec}, namespace="istio-system",
               api_version="networking.istio.io/v1alpha3")  # fmt: skip


BALANCE = {"applyTo": "LISTENER", "match": {"context": "GATEWAY", "listener": {"portNumber": 8080}},
           "patch": {"operation": "MERGE", "value": {"connectionBalanceConfig": {"exactBalance": {}}}}}  # fmt: skip
HCM = "envoy.filters.network.http_connection_manager"
LUA_LIKE = {"name": "envoy.filters.http.fault",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                             "max_active_faults": 7}}  # fmt: skip


def generate(*filters: dict[str, Any]) -> dict[str, Any]:
    snap = snapshot(gateway(8080), gateway(9090, name="other"), service_entry(HOST, [("127.0.0.1", 80, {})]), *filters)
    out = generator_for(gateway_proxy()).generate(gateway_proxy(), snap)
    for type_url, items in out.items():
        for item in items.values():
            to_message(type_url, item)
    return out


def http_filters(out: dict[str, Any], listener: str = "0.0.0.0_8080") -> list[Any]:
    hcm = out[LISTENER][listener]["filter_chains"][0]["filters"][0]["typed_config"]
    return [(f["name"], f["typed_config"].get("max_active_faults")) for f in hcm["http_filters"]]


def test_connection_balancing_listener_merge_on_the_matching_port_only() -> None:
    out = generate(envoy_filter("balance", [BALANCE]))
    assert out[LISTENER]["0.0.0.0_8080"]["connection_balance_config"] == {"exact_balance": {}}
    assert "connection_balance_config" not in out[LISTENER]["0.0.0.0_9090"]
    sidecar_only = {**BALANCE, "match": {"context": "SIDECAR_INBOUND"}}
    assert "connection_balance_config" not in generate(envoy_filter("b", [sidecar_only]))[LISTENER]["0.0.0.0_8080"]
    selector = {"workloadSelector": {"labels": {"istio": "egressgateway"}}}
    assert "connection_balance_config" not in generate(envoy_filter("b", [BALANCE], **selector))[LISTENER]["0.0.0.0_8080"]


@pytest.mark.parametrize(("operation", "expected"), [
    ("INSERT_BEFORE", [("envoy.filters.http.fault", 7), ("envoy.filters.http.fault", None), ("envoy.filters.http.router", None)]),
    ("INSERT_AFTER", [("envoy.filters.http.fault", None), ("envoy.filters.http.fault", 7), ("envoy.filters.http.router", None)]),
    ("REPLACE", [("envoy.filters.http.fault", 7), ("envoy.filters.http.router", None)]),
    ("MERGE", [("envoy.filters.http.fault", 7), ("envoy.filters.http.router", None)]),
    ("REMOVE", [("envoy.filters.http.router", None)]),
])  # fmt: skip
def test_http_filter_operations_relative_to_the_sub_filter(operation: str, expected: list[Any]) -> None:
    patch = {"applyTo": "HTTP_FILTER", "match": {"listener": {"portNumber": 8080, "filterChain": {"filter": {
        "name": HCM, "subFilter": {"name": "envoy.filters.http.fault"}}}}},
        "patch": {"operation": operation, **({} if operation == "REMOVE" else {"value": LUA_LIKE})}}  # fmt: skip
    out = generate(envoy_filter("f", [patch]))
    assert http_filters(out) == expected
    assert http_filters(out, "0.0.0.0_9090") == [("envoy.filters.http.fault", None), ("envoy.filters.http.router", None)]


def test_cluster_patches_and_priority_order() -> None:
    cluster = f"outbound|80||{HOST}"
    first = envoy_filter("a", [{"applyTo": "CLUSTER", "match": {"cluster": {"service": HOST, "portNumber": 80}},
                                "patch": {"operation": "MERGE", "value": {"connectTimeout": "3s"}}}], priority=10)  # fmt: skip
    second = envoy_filter("b", [{"applyTo": "CLUSTER", "match": {"cluster": {"name": cluster}},
                                 "patch": {"operation": "MERGE", "value": {"connectTimeout": "5s"}}}], priority=-1)  # fmt: skip
    assert generate(first, second)[CLUSTER][cluster]["connect_timeout"] == "3s"  # priority -1 ran first
    removed = envoy_filter("r", [{"applyTo": "CLUSTER", "match": {"cluster": {"name": cluster}}, "patch": {"operation": "REMOVE"}}])
    assert cluster not in generate(removed)[CLUSTER]


@pytest.mark.parametrize(("patch", "path", "message"), [
    ({"applyTo": "BOOTSTRAP", "patch": {"operation": "MERGE", "value": {"default_regex_engine": {}}}},
     "spec.configPatches[0].applyTo", "bootstrap override"),
    ({"applyTo": "LISTENER", "patch": {"operation": "INSERT_FIRST", "value": {"name": "x"}}},
     "spec.configPatches[0].patch.operation", "not valid for LISTENER"),
    ({"applyTo": "HTTP_FILTER", "patch": {"operation": "ADD", "value": LUA_LIKE}},
     "spec.configPatches[0].match.listener.filterChain.filter", "connection manager"),
])  # fmt: skip
def test_errors_name_the_field(patch: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resources(envoy_filter("bad", [patch]))
    assert caught.value.path == path and message in caught.value.message


@needs_envoy
def test_patched_gateway_passes_envoy_validation(tmp_path: Path) -> None:
    out = generate(envoy_filter("balance", [BALANCE]))
    config = bootstrap(GATEWAY_NODE, "gw", {}, free_port(), free_port())
    config["static_resources"]["listeners"] = list(out[LISTENER].values())
    for listener in config["static_resources"]["listeners"]:
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["route_config"] = {"name": hcm.pop("rds")["route_config_name"]}  # RDS has no server under validate
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path), "-l", "error"],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
