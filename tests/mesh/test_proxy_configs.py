"""A pod's effective ProxyConfig, merged as istiod's injector merges it (sans-IO): the cases of istiod's
proxy_config_test.go that matter here, and what `pylon mesh run` reports."""

from __future__ import annotations

from typing import Any

import yaml

from pylon.mesh.install import effective_proxy_config as pod_proxy_config
from pylon.mesh.proxy_configs import effective_proxy_config
from pylon.pilot.istio.resources import Resource, decode_resource


def pc(name: str, namespace: str, spec: dict[str, Any], created: str | None = None) -> Resource:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if created is not None:
        meta["creationTimestamp"] = created
    return decode_resource({"apiVersion": "networking.istio.io/v1beta1", "kind": "ProxyConfig", "metadata": meta,
                            "spec": spec}, "pc.yaml", 0)  # fmt: skip


MESH = pc("mesh", "istio-system", {"concurrency": 4, "environmentVariables": {"A": "mesh", "B": "mesh"}})
NAMESPACE = pc("ns", "shop", {"concurrency": 3, "environmentVariables": {"B": "ns", "C": "ns"}})
WORKLOAD = pc("web", "shop", {"selector": {"matchLabels": {"app": "web"}}, "concurrency": 1,
                              "environmentVariables": {"C": "web"}})  # fmt: skip
ALL = [WORKLOAD, NAMESPACE, MESH]


def merged(resources: list[Resource], namespace: str = "shop", labels: dict[str, str] | None = None,
           annotation: dict[str, Any] | None = None, default: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    return effective_proxy_config(default or {}, resources, namespace=namespace, labels=labels or {},
                                  annotation=annotation).config  # fmt: skip


def test_mesh_wide_under_namespace_under_workload_with_environment_merged_by_variable() -> None:
    assert merged(ALL, labels={"app": "web", "version": "v1"}) == {
        "concurrency": 1, "proxyMetadata": {"A": "mesh", "B": "ns", "C": "web"}}
    assert merged(ALL, labels={"app": "db"}) == {"concurrency": 3, "proxyMetadata": {"A": "mesh", "B": "ns", "C": "ns"}}
    assert merged(ALL, namespace="other", labels={"app": "web"}) == {
        "concurrency": 4, "proxyMetadata": {"A": "mesh", "B": "mesh"}}  # other namespaces' resources do not apply


def test_mesh_config_default_config_is_the_lowest() -> None:
    assert merged([MESH], default={"concurrency": 2, "proxyMetadata": {"Z": "d"}}) == {
        "concurrency": 4, "proxyMetadata": {"Z": "d", "A": "mesh", "B": "mesh"}}
    assert merged([], default={"concurrency": 2}) == {"concurrency": 2}


def test_a_matching_workload_resource_wins_over_the_annotation_as_in_istiod() -> None:
    """istiod: "matching workload CR takes precedence over annotation"; the annotation still beats the
    namespace-wide and mesh-wide resources."""
    annotation = {"concurrency": 5, "proxyMetadata": {"C": "annotation", "D": "annotation"}}
    assert merged(ALL, labels={"app": "web"}, annotation=annotation) == {
        "concurrency": 1, "proxyMetadata": {"A": "mesh", "B": "ns", "C": "web", "D": "annotation"}}
    assert merged(ALL, labels={"app": "db"}, annotation=annotation) == {
        "concurrency": 5, "proxyMetadata": {"A": "mesh", "B": "ns", "C": "annotation", "D": "annotation"}}


def test_root_namespace_pods_get_the_mesh_wide_resource_once_and_their_workload_resources() -> None:
    root_workload = pc("gw", "istio-system", {"selector": {"matchLabels": {"istio": "ingressgateway"}}, "concurrency": 6})
    assert merged([MESH, root_workload], namespace="istio-system", labels={"istio": "ingressgateway"}) == {
        "concurrency": 6, "proxyMetadata": {"A": "mesh", "B": "mesh"}}
    root = pc("mesh", "mesh-root", {"concurrency": 7})
    assert effective_proxy_config({}, [MESH, root], namespace="shop", labels={},
                                  root_namespace="mesh-root").config == {"concurrency": 7}  # fmt: skip


def test_a_selector_without_labels_selects_nothing() -> None:
    empty = pc("empty", "shop", {"selector": {}, "concurrency": 9})
    assert merged([empty], labels={"app": "web"}) == {}


def test_the_oldest_of_competing_resources_applies_and_the_others_are_noted() -> None:
    newer = pc("a-newer", "shop", {"concurrency": 8}, created="2026-01-02T00:00:00Z")
    older = pc("z-older", "shop", {"concurrency": 2}, created="2026-01-01T00:00:00Z")
    result = effective_proxy_config({}, [newer, older], namespace="shop", labels={})
    assert result.config == {"concurrency": 2} and result.applied == [older]
    assert result.notes == ["ProxyConfig shop/a-newer not applied: namespace shop: one ProxyConfig without a selector "
                            "applies (the oldest, shop/z-older, as istiod)"]  # fmt: skip
    by_name = [pc("b", "shop", {"concurrency": 2}), pc("a", "shop", {"concurrency": 3})]
    assert merged(by_name) == {"concurrency": 3}  # no creation times: by name, as istiod


def test_mesh_run_gets_the_agents_yaml_and_image_reported_as_ignored_by_name() -> None:
    imaged = pc("web", "shop", {"selector": {"matchLabels": {"app": "web"}}, "concurrency": 1,
                                "environmentVariables": {"FOO": "bar"}, "image": {"imageType": "distroless"}})  # fmt: skip
    result = pod_proxy_config({"defaultConfig": {"concurrency": 2}}, "", [imaged], "shop", {"app": "web"})
    assert yaml.safe_load(result.text) == {"concurrency": 1, "proxyMetadata": {"FOO": "bar"}}
    assert result.ignored == ["ProxyConfig shop/web: spec.image"]
    assert pod_proxy_config({}, "", [imaged], "shop", {"app": "db"}).ignored == []
