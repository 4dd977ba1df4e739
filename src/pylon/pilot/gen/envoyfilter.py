"""EnvoyFilter patches, applied last to a proxy's generated resources (as istiod applies them).

Which EnvoyFilters apply: those in the root namespace (MeshConfig `rootNamespace`) and in the
proxy's namespace whose workloadSelector matches its labels (none: all), root
namespace first, then by priority, then by name. Contexts: a gateway's
resources are GATEWAY; a sidecar's listeners are SIDECAR_INBOUND or
SIDECAR_OUTBOUND by `traffic_direction`, its clusters by `inbound|`/other names.

Patch values are Envoy proto-JSON (camelCase or snake_case, as protobuf's JSON
parser reads them): each is parsed through Envoy's own message type, which both
checks it and brings it to the generators' snake_case. MERGE is protobuf's
merge: messages merge field by field, repeated fields append, scalars replace,
and a `typed_config` of another `@type` replaces the old one.
"""

from __future__ import annotations

import copy
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import HttpFilter
from pylon.pilot.gen.types import CLUSTER, LISTENER, Json, Resources
from pylon.pilot.istio.envoyfilter import ConfigPatch
from pylon.pilot.istio.resources import Resource
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Snapshot

VALUE_TYPES: dict[str, type[Message]] = {"LISTENER": Listener, "CLUSTER": Cluster, "HTTP_FILTER": HttpFilter}


class PatchError(ValueError):
    """A patch whose value is not valid Envoy config: names the EnvoyFilter and the field."""


def envoy_filters_for(proxy: Proxy, snapshot: Snapshot) -> list[Resource]:
    chosen = []
    root = snapshot.mesh.root_namespace
    for ef in snapshot.envoy_filters:
        if ef.namespace not in (root, proxy.namespace):
            continue
        selector = ef.spec.workload_selector
        if selector is None or all(proxy.labels.get(k) == v for k, v in selector.labels.items()):
            chosen.append(ef)
    return sorted(chosen, key=lambda ef: (ef.namespace != root, ef.spec.priority, ef.name))


def apply_envoy_filters(proxy: Proxy, snapshot: Snapshot, resources: Resources) -> Resources:
    """`resources` with every applicable patch applied, in order."""
    for ef in envoy_filters_for(proxy, snapshot):
        for index, patch in enumerate(ef.spec.config_patches):
            value = _normalized(ef, index, patch)
            if patch.apply_to == "CLUSTER":
                _patch_clusters(proxy, patch, value, resources[CLUSTER])
            elif patch.apply_to == "LISTENER":
                _patch_listeners(proxy, patch, value, resources[LISTENER])
            else:
                for listener in resources[LISTENER].values():
                    if _listener_matches(proxy, patch, listener):
                        _patch_http_filters(patch, value, listener)
    return resources


def _normalized(ef: Resource, index: int, patch: ConfigPatch) -> Json | None:
    if patch.patch.value is None:
        return None
    message = VALUE_TYPES[patch.apply_to]()
    try:
        json_format.ParseDict(patch.patch.value, message)
    except json_format.ParseError as exc:
        raise PatchError(f"{ef.source}: spec.configPatches[{index}].patch.value: {exc}") from None
    # only the fields the user set (no defaults), in the generators' snake_case
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def merge(base: Json, patch: Json) -> None:
    """Protobuf merge of proto-JSON dicts, in place."""
    for key, value in patch.items():
        old = base.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value.get("@type", old.get("@type")) == old.get("@type"):
            merge(old, value)
        elif isinstance(value, list) and isinstance(old, list):
            old.extend(copy.deepcopy(value))
        else:
            base[key] = copy.deepcopy(value)


# --------------------------------------------------------------------------- listeners and HTTP filters


def _context(proxy: Proxy, listener_or_cluster: Json, kind: str) -> str:
    if proxy.type == "router":
        return "GATEWAY"
    if kind == LISTENER:
        return "SIDECAR_INBOUND" if listener_or_cluster.get("traffic_direction") == "INBOUND" else "SIDECAR_OUTBOUND"
    return "SIDECAR_INBOUND" if listener_or_cluster["name"].startswith("inbound|") else "SIDECAR_OUTBOUND"


def _listener_matches(proxy: Proxy, patch: ConfigPatch, listener: Json) -> bool:
    context = patch.match.context
    if context != "ANY" and context != _context(proxy, listener, LISTENER):
        return False
    match = patch.match.listener
    if match is None:
        return True
    if match.name is not None and listener["name"] != match.name:
        return False
    port = listener.get("address", {}).get("socket_address", {}).get("port_value")
    return match.port_number is None or port == match.port_number


def _patch_listeners(proxy: Proxy, patch: ConfigPatch, value: Json | None, listeners: dict[str, Json]) -> None:
    operation = patch.patch.operation
    if operation == "ADD":
        assert value is not None
        gateway = proxy.type == "router"
        if patch.match.context == "ANY" or (patch.match.context == "GATEWAY") == gateway:
            listeners[value["name"]] = value
        return
    for name in [n for n, listener in listeners.items() if _listener_matches(proxy, patch, listener)]:
        if operation == "REMOVE":
            del listeners[name]
        else:
            merge(listeners[name], value or {})


def _patch_http_filters(patch: ConfigPatch, value: Json | None, listener: Json) -> None:
    match = patch.match.listener
    assert match is not None and match.filter_chain is not None and match.filter_chain.filter is not None
    wanted = match.filter_chain.filter
    for chain in listener.get("filter_chains", []):
        for network_filter in chain.get("filters", []):
            if network_filter["name"] != wanted.name or "http_filters" not in network_filter["typed_config"]:
                continue
            filters: list[Json] = network_filter["typed_config"]["http_filters"]
            _apply_list_operation(filters, patch.patch.operation, value,
                                  wanted.sub_filter.name if wanted.sub_filter is not None else None)  # fmt: skip


def _apply_list_operation(filters: list[Json], operation: str, value: Json | None, sub_filter: str | None) -> None:
    """Istio's operations on a filter list: relative ones act on the `sub_filter` (none: every filter for
    MERGE/REMOVE/REPLACE, the list's start for INSERT_BEFORE, its end for INSERT_AFTER)."""
    positions = [i for i, f in enumerate(filters) if sub_filter is None or f["name"] == sub_filter]
    if operation == "ADD":
        filters.append(copy.deepcopy(value))
    elif operation == "INSERT_FIRST" or (operation == "INSERT_BEFORE" and sub_filter is None):
        filters.insert(0, copy.deepcopy(value))
    elif operation == "INSERT_AFTER" and sub_filter is None:
        filters.append(copy.deepcopy(value))
    elif operation == "INSERT_BEFORE" and positions:
        filters.insert(positions[0], copy.deepcopy(value))
    elif operation == "INSERT_AFTER" and positions:
        filters.insert(positions[0] + 1, copy.deepcopy(value))
    elif operation == "REMOVE":
        filters[:] = [f for i, f in enumerate(filters) if i not in positions]
    elif operation == "REPLACE":
        for i in positions:
            filters[i] = copy.deepcopy(value)
    elif operation == "MERGE":
        for i in positions:
            merge(filters[i], value or {})


# --------------------------------------------------------------------------- clusters


def _cluster_matches(proxy: Proxy, patch: ConfigPatch, cluster: Json) -> bool:
    context = patch.match.context
    if context != "ANY" and context != _context(proxy, cluster, CLUSTER):
        return False
    match = patch.match.cluster
    if match is None:
        return True
    if match.name is not None:
        return bool(cluster["name"] == match.name)
    parts = cluster["name"].split("|")
    if len(parts) != 4:
        return match.port_number is None and match.service is None and match.subset is None
    _, port, subset, host = parts
    return ((match.port_number is None or port == str(match.port_number))
            and (match.service is None or host == match.service)
            and (match.subset is None or subset == match.subset))  # fmt: skip


def _patch_clusters(proxy: Proxy, patch: ConfigPatch, value: Any, clusters: dict[str, Json]) -> None:
    operation = patch.patch.operation
    if operation == "ADD":
        clusters[value["name"]] = value
        return
    for name in [n for n, cluster in clusters.items() if _cluster_matches(proxy, patch, cluster)]:
        if operation == "REMOVE":
            del clusters[name]
        else:
            merge(clusters[name], value)
