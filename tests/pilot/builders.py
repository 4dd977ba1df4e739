"""Small builders of Istio resources for pilot tests (dicts as a user writes them in YAML)."""

from __future__ import annotations

from typing import Any

import yaml

from pylon.pilot.istio.resources import Resource, decode_resource
from pylon.pilot.proxy import Proxy, parse_node
from pylon.pilot.snapshot import Snapshot, build_snapshot

GATEWAY_NODE = "router~127.0.0.1~gw.istio-system~istio-system.svc.cluster.local"


def doc(kind: str, name: str, spec: dict[str, Any], namespace: str = "default",
        api_version: str = "networking.istio.io/v1") -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def resources(*docs: dict[str, Any]) -> list[Resource]:
    return [decode_resource(d, "test.yaml", i) for i, d in enumerate(docs)]


def snapshot(*docs: dict[str, Any]) -> Snapshot:
    return build_snapshot(resources(*docs), version="v-test")


def gateway_proxy(labels: dict[str, str] | None = None) -> Proxy:
    return parse_node(GATEWAY_NODE, {"NAMESPACE": "istio-system", "LABELS": labels or {"istio": "ingressgateway"}})


def write_yaml(path: Any, *docs: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))


def gateway(port: int, bind: str = "", hosts: list[str] | None = None, name: str = "gw") -> dict[str, Any]:
    server: dict[str, Any] = {"port": {"number": port, "name": "http", "protocol": "HTTP"}, "hosts": hosts or ["*"]}
    if bind:
        server["bind"] = bind
    return doc("Gateway", name, {"selector": {"istio": "ingressgateway"}, "servers": [server]}, namespace="istio-system")


def service_entry(host: str, endpoints: list[tuple[str, int, dict[str, str]]], port: int = 80,
                  name: str = "svc") -> dict[str, Any]:
    return doc("ServiceEntry", name, {
        "hosts": [host], "ports": [{"number": port, "name": "http", "protocol": "HTTP"}], "resolution": "STATIC",
        "endpoints": [{"address": ip, "ports": {"http": p}, "labels": labels} for ip, p, labels in endpoints],
    })  # fmt: skip


def subsets_rule(host: str, versions: list[str], traffic_policy: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"host": host, "subsets": [{"name": v, "labels": {"version": v}} for v in versions]}
    if traffic_policy:
        spec["trafficPolicy"] = traffic_policy
    return doc("DestinationRule", "dr", spec)


def virtual_service(http: list[dict[str, Any]], hosts: list[str] | None = None,
                    gateways: list[str] | None = None) -> dict[str, Any]:
    return doc("VirtualService", "vs", {"hosts": hosts or ["*"], "gateways": gateways or ["istio-system/gw"],
                                        "http": http})  # fmt: skip


SIDECAR_NODE = "sidecar~127.0.0.1~client-1.default~default.svc.cluster.local"


def sidecar_proxy(labels: dict[str, str] | None = None, **metadata: Any) -> Proxy:
    return parse_node(SIDECAR_NODE, {"NAMESPACE": "default", "LABELS": labels or {"app": "client"}, **metadata})
