"""A pod's effective ProxyConfig, merged as istiod's injector merges it (pilot/pkg/model/proxy_config.go), sans-IO.

Lowest first: MeshConfig `defaultConfig` < the root namespace's ProxyConfig without a selector (mesh-wide) <
the pod's namespace's ProxyConfig without a selector < { the pod's `proxy.istio.io/config` annotation < the
ProxyConfig in the pod's namespace whose `selector.matchLabels` are all among the pod's labels }. The last pair
is istiod's order, not the annotation-on-top one might expect: istiod merges the annotation *under* a matching
workload resource (its test "matching workload CR takes precedence over annotation"), so a resource wins.

Each level replaces the fields it sets, except `proxyMetadata`, merged variable by variable (istiod's
MergeProxyConfig). A resource contributes `concurrency`, `environmentVariables` (as `proxyMetadata`) and
`image`. Where a level has several candidates (Istio allows one selector-less resource per namespace, and one
resource per workload), the oldest wins - `metadata.creationTimestamp`, then name, then namespace, as istiod
sorts them - and the others are reported. A selector without labels selects nothing, as in istiod.

Istio applies the result when it injects the sidecar; a running proxy keeps what it started with until it is
restarted - so does `pylon mesh run`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pylon.pilot.istio.resources import Resource

DEFAULT_ROOT_NAMESPACE = "istio-system"
_ZERO_TIME = dt.datetime.min.replace(tzinfo=dt.timezone.utc)  # an unset creationTimestamp: Go's zero time


@dataclass
class EffectiveProxyConfig:
    """The merged mesh ProxyConfig (camelCase fields, as the annotation is written), the resources merged into it
    (lowest first), and notes on what was not used: resources a first match shadowed."""

    config: dict[str, Any] = field(default_factory=dict)
    applied: list[Resource] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def merge_proxy_config(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """`overlay` over `base`: its fields replace base's, `proxyMetadata` merged variable by variable."""
    merged = {**base, **overlay}
    if "proxyMetadata" in base and "proxyMetadata" in overlay:
        merged["proxyMetadata"] = {**base["proxyMetadata"], **overlay["proxyMetadata"]}
    return merged


def resource_proxy_config(resource: Resource) -> dict[str, Any]:
    """The mesh ProxyConfig fields a ProxyConfig resource sets (istiod's toMeshConfigProxyConfig)."""
    spec = resource.spec
    config: dict[str, Any] = {}
    if spec.concurrency is not None:
        config["concurrency"] = spec.concurrency
    if spec.environment_variables:
        config["proxyMetadata"] = dict(spec.environment_variables)
    if spec.image is not None:
        config["image"] = {"imageType": spec.image.image_type}
    return config


def effective_proxy_config(default_config: Mapping[str, Any], resources: Sequence[Resource], *, namespace: str,
                           labels: Mapping[str, str], annotation: Mapping[str, Any] | None = None,
                           root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> EffectiveProxyConfig:  # fmt: skip
    """The ProxyConfig of a pod in `namespace` with `labels` (and its annotation's ProxyConfig), from MeshConfig
    `defaultConfig` and the ProxyConfig resources among `resources`."""
    result = EffectiveProxyConfig(config=dict(default_config))
    by_namespace: dict[str, list[Resource]] = {}
    for resource in sorted((r for r in resources if r.kind == "ProxyConfig"), key=_creation_order):
        by_namespace.setdefault(resource.namespace, []).append(resource)
    levels = [root_namespace] + ([namespace] if namespace != root_namespace else [])
    for level in levels:
        candidates = [r for r in by_namespace.get(level, []) if r.spec.selector is None]
        chosen = _first(candidates, result.notes, f"namespace {level}: one ProxyConfig without a selector applies")
        if chosen is not None:
            result.config = merge_proxy_config(result.config, resource_proxy_config(chosen))
            result.applied.append(chosen)
    workload = dict(annotation or {})
    candidates = [r for r in by_namespace.get(namespace, [])
                  if r.spec.selector is not None and r.spec.selector.match_labels
                  and all(labels.get(k) == v for k, v in r.spec.selector.match_labels.items())]  # fmt: skip
    chosen = _first(candidates, result.notes, "one ProxyConfig selecting the workload applies")
    if chosen is not None:
        workload = merge_proxy_config(workload, resource_proxy_config(chosen))
        result.applied.append(chosen)
    result.config = merge_proxy_config(result.config, workload)
    return result


def _first(candidates: list[Resource], notes: list[str], rule: str) -> Resource | None:
    """The oldest candidate; the others noted as not applied."""
    if not candidates:
        return None
    first = candidates[0]
    for other in candidates[1:]:
        notes.append(f"ProxyConfig {other.namespace}/{other.name} not applied: {rule} "
                     f"(the oldest, {first.namespace}/{first.name}, as istiod)")  # fmt: skip
    return first


def _creation_order(resource: Resource) -> tuple[dt.datetime, str, str]:
    stamp = resource.meta.creation_timestamp
    when = _ZERO_TIME
    if stamp:
        try:
            when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            pass
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
    return (when, resource.name, resource.namespace)
