"""EnvoyFilter patches, applied last to a proxy's generated resources, as istiod applies them.

Which patches: those of the EnvoyFilters in the root namespace (MeshConfig `rootNamespace`) and in the proxy's
namespace whose workloadSelector matches its labels (none: all), ordered as istiod's PushContext.EnvoyFilters
orders them (priority, then root namespace first, then creation time, then name.namespace), and kept if their
`match.proxy` fits the proxy (proxyVersion: an RE2 search of node metadata ISTIO_VERSION; metadata: exact
string values). As in istiod the patches are then grouped by applyTo, and each kind runs where istiod runs it
(pilot/pkg/networking/core/envoyfilter):

- route configurations (rc_patch.go): ROUTE_CONFIGURATION merges, then per virtual host VIRTUAL_HOST
  REMOVE/MERGE/REPLACE and, per route, HTTP_ROUTE REMOVE/MERGE, then the route ADD/INSERT_*s, then VIRTUAL_HOST
  ADDs. RDS configurations are GATEWAY (gateways) or SIDECAR_OUTBOUND; the inline ones of the sidecar's
  inbound HCMs take their listener's context and are patched before the listeners, as istiod builds them;
- listeners (listener_patch.go), one at a time: LISTENER REMOVE/MERGE, LISTENER_FILTER operations, then per
  filter chain (and default_filter_chain) FILTER_CHAIN REMOVE/MERGE, NETWORK_FILTER operations and merges and,
  in every HTTP connection manager, HTTP_FILTER operations and merges; then FILTER_CHAIN ADDs; LISTENER ADDs
  last (context ANY adds for SIDECAR_OUTBOUND and GATEWAY only). virtualInbound/virtualOutbound match a
  portNumber by their chains' destination_port, for every applyTo but LISTENER;
- clusters (cluster_patch.go): REMOVE and MERGE per cluster, then ADDs (context ANY: SIDECAR_OUTBOUND and
  GATEWAY). Contexts: `inbound|…` and InboundPassthroughCluster are SIDECAR_INBOUND; an inbound cluster's
  `service` is any host in its `istio` metadata, as istiod passes the instance's services.

Merges are istiod's (pkg/proto/merge) on Envoy's messages: fields merge, lists append (MERGE_AND_REPLACE_LIST
replaces them), map entries, Durations and `Any`s are replaced whole. A MERGE of a filter (network, HTTP,
listener) merges its `typed_config` message into the existing one of the same `@type` (istiod's
MergeAnyWithAny) and renames it if the value has a name (never for listener filters, as istiod). A MERGE with
`transport_socket` merges that socket's config into the one of the same name (clusters: in
transport_socket_matches when they exist), else replaces the socket. Patches that fit nothing do nothing, as
in istiod; a filter MERGE onto another `@type`, where istiod panics and drops the rest of the listener patches,
keeps the filter as it was and is logged.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import re2
from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from pylon.pilot.gen.names import INBOUND_PASSTHROUGH
from pylon.pilot.gen.types import CLUSTER, LISTENER, ROUTE, Json, Resources
from pylon.pilot.istio.envoyfilter import HCM_NAMES, VALUE_TYPES, ConfigPatch, load_message_types, message_json
from pylon.pilot.istio.resources import Resource
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Snapshot

log = logging.getLogger(__name__)

VIRTUAL_LISTENERS = ("virtualInbound", "virtualOutbound")
DURATION = "google.protobuf.Duration"


@dataclass(frozen=True)
class Patches:
    """A proxy's patches by applyTo, in istiod's order (its MergedEnvoyFilterWrapper)."""

    by_apply_to: dict[str, list[ConfigPatch]]
    gateway: bool

    def __getitem__(self, apply_to: str) -> list[ConfigPatch]:
        return self.by_apply_to.get(apply_to, [])

    def at(self, apply_to: str, context: str) -> list[ConfigPatch]:
        """The `apply_to` patches whose match.context admits `context`."""
        return [p for p in self[apply_to] if p.match.context in ("ANY", context)]

    def adds(self, apply_to: str, context: str) -> list[ConfigPatch]:
        """ADDs of whole listeners or clusters for `context` (istiod: context ANY adds for outbound and gateways)."""
        if context not in ("SIDECAR_OUTBOUND", "GATEWAY"):
            return [p for p in self[apply_to] if p.operation == "ADD" and p.match.context == context]
        return [p for p in self.at(apply_to, context) if p.operation == "ADD"]


def envoy_filters_for(proxy: Proxy, snapshot: Snapshot) -> list[Resource]:
    """The EnvoyFilters selecting the proxy, in istiod's order."""
    root = snapshot.mesh.root_namespace
    chosen = []
    for ef in snapshot.envoy_filters:
        if ef.namespace not in (root, proxy.namespace):
            continue
        selector = ef.spec.workload_selector
        if selector is None or all(proxy.labels.get(k) == v for k, v in selector.labels.items()):
            chosen.append(ef)
    return sorted(chosen, key=lambda ef: (ef.spec.priority, ef.namespace != root, ef.meta.creation_timestamp or "",
                                          f"{ef.name}.{ef.namespace}"))  # fmt: skip


def patches_for(proxy: Proxy, snapshot: Snapshot) -> Patches:
    by_apply_to: dict[str, list[ConfigPatch]] = {}
    for ef in envoy_filters_for(proxy, snapshot):
        for patch in ef.spec.config_patches:
            if _proxy_matches(proxy, patch):
                by_apply_to.setdefault(patch.apply_to, []).append(patch)
    return Patches(by_apply_to, gateway=proxy.type == "router")


def apply_envoy_filters(proxy: Proxy, snapshot: Snapshot, resources: Resources) -> Resources:
    """`resources` with every applicable patch applied (its listeners, routes and clusters are copies then)."""
    patches = patches_for(proxy, snapshot)
    if not patches.by_apply_to:
        return resources
    for type_url in (LISTENER, ROUTE, CLUSTER):
        if type_url in resources:  # unshared: generators reuse pieces (a port's TLS and plaintext chains)
            resources[type_url] = json.loads(json.dumps(resources[type_url]))
    rds_context = "GATEWAY" if patches.gateway else "SIDECAR_OUTBOUND"
    for rc in resources.get(ROUTE, {}).values():
        _patch_route_configuration(patches, rds_context, rc)
    for listener in resources[LISTENER].values():
        for hcm in _connection_managers(listener):
            if "route_config" in hcm:
                _patch_route_configuration(patches, _listener_context(patches, listener), hcm["route_config"])
    _patch_listeners(patches, resources[LISTENER])
    _patch_clusters(patches, resources[CLUSTER])
    return resources


def _proxy_matches(proxy: Proxy, patch: ConfigPatch) -> bool:
    """istiod's proxyMatch: the version regex is searched (unanchored) in ISTIO_VERSION; metadata values exact."""
    match = patch.match.proxy
    if match is None:
        return True
    if match.proxy_version is not None:
        version = proxy.metadata.get("ISTIO_VERSION")
        if not isinstance(version, str) or not version or re2.search(match.proxy_version, version) is None:
            return False
    return all(proxy.metadata.get(key) == value for key, value in match.metadata.items())


# --------------------------------------------------------------------------- merging


def istio_merge(dst: Message, src: Message, replace_lists: bool = False) -> None:
    """istiod's merge (pkg/proto/merge): protobuf's field-by-field merge, except that Durations and map entries
    are replaced, not merged, and lists are replaced instead of appended to under MERGE_AND_REPLACE_LIST."""
    for field, value in src.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(dst, field.name)
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            target = getattr(dst, field.name)
            if replace_lists:
                del target[:]
            target.extend(value)
        elif field.message_type is None:
            setattr(dst, field.name, value)
        elif field.message_type.full_name == DURATION:
            getattr(dst, field.name).CopyFrom(value)
        else:
            getattr(dst, field.name).SetInParent()
            istio_merge(getattr(dst, field.name), value, replace_lists)


def _merge_into(target: Json, patch: ConfigPatch) -> None:
    """MERGE / MERGE_AND_REPLACE_LIST of the patch value into the resource `target` (proto-JSON), in place."""
    message = VALUE_TYPES[patch.apply_to]()  # the target is of the value's type
    load_message_types(target)
    json_format.ParseDict(target, message)
    assert patch.envoy_value is not None
    istio_merge(message, patch.envoy_value, replace_lists=patch.patch.operation == "MERGE_AND_REPLACE_LIST")
    target.clear()
    target.update(message_json(message))


def _merge_any(dst: Json, src: Json) -> Json | None:
    """istiod's MergeAnyWithAny on proto-JSON `Any`s: the merged config, or None when the `@type`s differ."""
    if dst.get("@type") != src.get("@type"):
        return None
    merged, update = _unpack(dst), _unpack(src)
    istio_merge(merged, update)
    packed = any_pb2.Any()
    packed.Pack(merged)
    return message_json(packed)


def _unpack(typed_config: Json) -> Message:
    packed = any_pb2.Any()
    load_message_types(typed_config)
    json_format.ParseDict(typed_config, packed)
    descriptor = descriptor_pool.Default().FindMessageTypeByName(packed.TypeName())
    message = message_factory.GetMessageClass(descriptor)()
    packed.Unpack(message)
    return message


def _merge_filter(target: Json, patch: ConfigPatch, rename: bool = True) -> None:
    """A filter MERGE as istiod's: typed_config merged into a filter that has one; the value's name renames it."""
    if "typed_config" not in target:
        return
    value = patch.value_json
    assert value is not None
    if "typed_config" in value:
        merged = _merge_any(target["typed_config"], value["typed_config"])
        if merged is None:
            log.warning("EnvoyFilter %s MERGE into %s: typed_config %s is not %s; left as it was", patch.apply_to,
                        target.get("name"), value["typed_config"].get("@type"), target["typed_config"].get("@type"))
        else:
            target["typed_config"] = merged
    if rename and value.get("name"):
        target["name"] = value["name"]


def _merge_transport_socket(socket: Json, value: Json) -> None:
    """The patch's transport_socket merged into `socket` of the same name (its typed_config, MergeAnyWithAny)."""
    if "typed_config" in socket and "typed_config" in value:
        merged = _merge_any(socket["typed_config"], value["typed_config"])
        if merged is not None:
            socket["typed_config"] = merged


def _apply_list_operation(items: list[Json], operation: str, value: Json, matches: Callable[[Json], bool] | None) -> None:
    """istiod's ADD/INSERT_*/REPLACE/REMOVE on an ordered filter list. `matches` is None when the patch names no
    element: INSERT_BEFORE then inserts first, INSERT_AFTER last; relative operations act on the first match,
    REMOVE on all."""
    positions = [] if matches is None else [i for i, item in enumerate(items) if matches(item)]
    if operation == "ADD" or (operation == "INSERT_AFTER" and matches is None):
        items.append(copy.deepcopy(value))
    elif operation == "INSERT_FIRST" or (operation == "INSERT_BEFORE" and matches is None):
        items.insert(0, copy.deepcopy(value))
    elif operation == "INSERT_BEFORE" and positions:
        items.insert(positions[0], copy.deepcopy(value))
    elif operation == "INSERT_AFTER" and positions:
        items.insert(positions[0] + 1, copy.deepcopy(value))
    elif operation == "REPLACE" and positions:
        items[positions[0]] = copy.deepcopy(value)
    elif operation == "REMOVE":
        items[:] = [item for i, item in enumerate(items) if i not in positions]


# --------------------------------------------------------------------------- route configurations


def _patch_route_configuration(patches: Patches, context: str, rc: Json) -> None:
    for patch in patches.at("ROUTE_CONFIGURATION", context):
        if _route_configuration_matches(context, rc, patch):
            _merge_into(rc, patch)
    vhosts: list[Json] = rc.setdefault("virtual_hosts", [])
    removed = {vhosts[i].get("name") for i in range(len(vhosts)) if _patch_virtual_host(patches, context, rc, vhosts, i)}
    for patch in patches.at("VIRTUAL_HOST", context):
        if patch.operation == "ADD" and _route_configuration_matches(context, rc, patch):
            vhosts.append(copy.deepcopy(patch.value_json or {}))
    if removed:  # by name, after the ADDs, as istiod
        vhosts[:] = [vhost for vhost in vhosts if vhost.get("name") not in removed]


def _patch_virtual_host(patches: Patches, context: str, rc: Json, vhosts: list[Json], index: int) -> bool:
    """REMOVE/MERGE/REPLACE of virtual host `index`, then its routes; True if it is to be removed."""
    for patch in patches.at("VIRTUAL_HOST", context):
        if not (_route_configuration_matches(context, rc, patch) and _vhost_matches(vhosts[index], patch)):
            continue
        if patch.operation == "REMOVE":
            return True
        if patch.is_merge:
            _merge_into(vhosts[index], patch)
        elif patch.operation == "REPLACE":
            vhosts[index] = copy.deepcopy(patch.value_json or {})
    _patch_http_routes(patches, context, rc, vhosts[index])
    return False


def _patch_http_routes(patches: Patches, context: str, rc: Json, vhost: Json) -> None:
    candidates = [p for p in patches.at("HTTP_ROUTE", context)
                  if _route_configuration_matches(context, rc, p) and _vhost_matches(vhost, p)]  # fmt: skip
    if not candidates:
        return
    routes: list[Json] = vhost.setdefault("routes", [])
    kept = [route for route in routes if not _patch_http_route(candidates, route)]
    for patch in candidates:
        _insert_route(kept, patch)
    routes[:] = kept


def _patch_http_route(patches: list[ConfigPatch], route: Json) -> bool:
    """MERGEs into `route` until a REMOVE matches it (True: remove it)."""
    for patch in patches:
        if not _route_matches(route, patch):
            continue
        if patch.operation == "REMOVE":
            return True
        if patch.is_merge:
            _merge_into(route, patch)
    return False


def _insert_route(routes: list[Json], patch: ConfigPatch) -> None:
    """ADD and INSERT_* of a route; INSERT_FIRST with a route match inserts first only if a route matches."""
    if patch.operation not in ("ADD", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST"):
        return
    assert patch.value_json is not None
    named = _names_route(patch)
    if patch.operation == "INSERT_FIRST" and named and not any(_route_matches(r, patch) for r in routes):
        return
    _apply_list_operation(routes, patch.operation, patch.value_json,
                          (lambda r: _route_matches(r, patch)) if named else None)  # fmt: skip


def _route_configuration_matches(context: str, rc: Json, patch: ConfigPatch) -> bool:
    """istiod's routeConfigurationMatch: name; sidecars: portNumber is the port in the name (`8080`,
    `inbound|8080||`); gateways: port, port name and namespace/gateway parsed from `http.<port>` and
    `https.<port>.<portName>.<gateway>.<namespace>` (gen/names.py)."""
    match = patch.match.route_configuration
    if match is None:
        return True
    name = str(rc.get("name", ""))
    if match.name is not None and match.name != name:
        return False
    if context != "GATEWAY":
        return match.port_number is None or match.port_number == _sidecar_route_port(name)
    port, port_name, gateway = _parse_gateway_route_name(name)
    return ((match.port_name is None or match.port_name == port_name)
            and (match.gateway is None or match.gateway == gateway)
            and (match.port_number is None or match.port_number == port))  # fmt: skip


def _sidecar_route_port(name: str) -> int:
    """istiod's getListenerPortFromName: the port of `inbound|<port>||…`, else the whole name as a number."""
    text = name.split("|")[1] if name.startswith("inbound") and name.count("|") >= 2 else name
    return int(text) if text.isdigit() else 0


def _parse_gateway_route_name(name: str) -> tuple[int, str, str]:
    """istiod's ParseGatewayRDSRouteName: (port, port name, `namespace/gateway`), 0/"" where absent."""
    if name.startswith("http."):
        port = name[len("http."):]
        return (int(port) if port.isdigit() else 0), "", ""
    if name.startswith("https.") and name.count(".") == 4:
        _, port, port_name, gateway, namespace = name.split(".")
        return (int(port) if port.isdigit() else 0), port_name, f"{namespace}/{gateway}"
    return 0, "", ""


def _vhost_matches(vhost: Json, patch: ConfigPatch) -> bool:
    rc = patch.match.route_configuration
    match = rc.vhost if rc is not None else None
    if match is None:
        return True
    return ((match.name is None or match.name == vhost.get("name"))
            and (match.domain_name is None or match.domain_name in vhost.get("domains", [])))  # fmt: skip


def _names_route(patch: ConfigPatch) -> bool:
    rc = patch.match.route_configuration
    return rc is not None and rc.vhost is not None and rc.vhost.route is not None


def _route_matches(route: Json, patch: ConfigPatch) -> bool:
    """istiod's routeMatch: name and action (ROUTE, REDIRECT, DIRECT_RESPONSE; other actions match any)."""
    if not _names_route(patch):
        return True
    rc = patch.match.route_configuration
    assert rc is not None and rc.vhost is not None and rc.vhost.route is not None
    match = rc.vhost.route
    if match.name is not None and match.name != route.get("name"):
        return False
    actions = {"route": "ROUTE", "redirect": "REDIRECT", "direct_response": "DIRECT_RESPONSE"}
    action = next((actions[key] for key in actions if key in route), None)
    return match.action == "ANY" or action is None or action == match.action


# --------------------------------------------------------------------------- listeners


def _listener_context(patches: Patches, listener: Json) -> str:
    if patches.gateway:
        return "GATEWAY"
    return "SIDECAR_INBOUND" if listener.get("traffic_direction") == "INBOUND" else "SIDECAR_OUTBOUND"


def _patch_listeners(patches: Patches, listeners: dict[str, Json]) -> None:
    for name in list(listeners):
        if _patch_listener(patches, _listener_context(patches, listeners[name]), listeners[name]):
            del listeners[name]
    contexts = ("GATEWAY",) if patches.gateway else ("SIDECAR_INBOUND", "SIDECAR_OUTBOUND")
    for context in contexts:
        for patch in patches.adds("LISTENER", context):
            assert patch.value_json is not None
            _add_named(listeners, patch.value_json, "listener")


def _add_named(resources: dict[str, Json], value: Json, kind: str) -> None:
    """An ADD of a listener or cluster; one of the same name is replaced (istiod would send both, which Envoy
    rejects)."""
    if value["name"] in resources:
        log.warning("EnvoyFilter ADD replaces the generated %s %s", kind, value["name"])
    resources[value["name"]] = copy.deepcopy(value)


def _patch_listener(patches: Patches, context: str, listener: Json) -> bool:
    """Every patch below LISTENER ADD, on one listener; True if it is to be removed."""
    for patch in patches.at("LISTENER", context):
        if not _listener_matches(listener, patch):
            continue
        if patch.operation == "REMOVE":
            return True
        if patch.is_merge:
            _merge_into(listener, patch)
    _patch_listener_filters(patches, context, listener)
    _patch_filter_chains(patches, context, listener)
    return False


def _listener_matches(listener: Json, patch: ConfigPatch) -> bool:
    """istiod's listenerMatch: name, then the port (not checked on virtual listeners below LISTENER level)."""
    match = patch.match.listener
    if match is None:
        return True
    if match.name is not None and match.name != listener.get("name"):
        return False
    if patch.apply_to != "LISTENER" and listener.get("name") in VIRTUAL_LISTENERS:
        return True
    port = listener.get("address", {}).get("socket_address", {}).get("port_value")
    return match.port_number is None or port == match.port_number


def _patch_listener_filters(patches: Patches, context: str, listener: Json) -> None:
    for patch in patches.at("LISTENER_FILTER", context):
        if not _listener_matches(listener, patch):
            continue
        filters: list[Json] = listener.setdefault("listener_filters", [])
        matches = _named(patch.match.listener.listener_filter if patch.match.listener is not None else None)
        if patch.operation == "MERGE":  # it names a filter (checked at load)
            for listener_filter in filters:
                if matches is not None and matches(listener_filter):
                    _merge_filter(listener_filter, patch, rename=False)
        else:
            _apply_list_operation(filters, patch.operation, patch.value_json or {}, matches)
        if not filters:
            del listener["listener_filters"]


def _patch_filter_chains(patches: Patches, context: str, listener: Json) -> None:
    chains: list[Json] = listener.get("filter_chains", [])
    chains[:] = [chain for chain in chains if not _patch_filter_chain(patches, context, listener, chain)]
    default = listener.get("default_filter_chain")
    if default is not None and _patch_filter_chain(patches, context, listener, default):
        del listener["default_filter_chain"]
    for patch in patches.at("FILTER_CHAIN", context):
        if patch.operation == "ADD" and _listener_matches(listener, patch):
            listener.setdefault("filter_chains", []).append(copy.deepcopy(patch.value_json or {}))


def _patch_filter_chain(patches: Patches, context: str, listener: Json, chain: Json) -> bool:
    """FILTER_CHAIN REMOVE/MERGE, then the chain's network filters; True if it is to be removed."""
    if not chain.get("filters"):
        return False  # istiod skips chains without filters
    for patch in patches.at("FILTER_CHAIN", context):
        if not (_listener_matches(listener, patch) and _chain_matches(listener, chain, patch)):
            continue
        if patch.operation == "REMOVE":
            return True
        if patch.is_merge:
            _merge_chain(chain, patch)
    _patch_network_filters(patches, context, listener, chain)
    return False


def _merge_chain(chain: Json, patch: ConfigPatch) -> None:
    """istiod's mergeTransportSocketListener: a transport socket of the chain's socket name merges into it."""
    value = patch.value_json or {}
    socket = value.get("transport_socket")
    if socket is not None and chain.get("transport_socket", {}).get("name") == socket.get("name"):
        _merge_transport_socket(chain["transport_socket"], socket)
    else:
        _merge_into(chain, patch)


def _chain_matches(listener: Json, chain: Json, patch: ConfigPatch) -> bool:
    """istiod's filterChainMatch: virtual listeners' destination_port for portNumber, then the filterChain
    fields against the chain's name and filter_chain_match."""
    match = patch.match.listener
    if match is None:
        return True
    criteria = chain.get("filter_chain_match", {})
    if (listener.get("name") in VIRTUAL_LISTENERS and match.port_number is not None
            and criteria.get("destination_port") != match.port_number):  # fmt: skip
        return False
    wanted = match.filter_chain
    if wanted is None:
        return True
    protocols = wanted.application_protocols.split(",") if wanted.application_protocols else []
    transport = criteria.get("transport_protocol")
    return ((wanted.name is None or wanted.name == chain.get("name"))
            and (wanted.sni is None or wanted.sni in criteria.get("server_names", []))
            and (wanted.transport_protocol is None or wanted.transport_protocol == transport)
            and all(p in criteria.get("application_protocols", []) for p in protocols)
            and (wanted.destination_port is None or wanted.destination_port == criteria.get("destination_port")))  # fmt: skip


def _filter_name(patch: ConfigPatch) -> str | None:
    """The network filter the patch names, if any."""
    listener = patch.match.listener
    chain = listener.filter_chain if listener is not None else None
    return chain.filter.name if chain is not None and chain.filter is not None else None


def _sub_filter_name(patch: ConfigPatch) -> str | None:
    """The HTTP filter the patch names, if any."""
    listener = patch.match.listener
    chain = listener.filter_chain if listener is not None else None
    wanted = chain.filter if chain is not None else None
    return wanted.sub_filter.name if wanted is not None and wanted.sub_filter is not None else None


def _named(name: str | None) -> Callable[[Json], bool] | None:
    return None if name is None else (lambda item: item.get("name") == name)


def _patch_network_filters(patches: Patches, context: str, listener: Json, chain: Json) -> None:
    applicable = [p for p in patches.at("NETWORK_FILTER", context)
                  if _listener_matches(listener, p) and _chain_matches(listener, chain, p)]  # fmt: skip
    filters: list[Json] = chain["filters"]
    for patch in applicable:
        if patch.operation != "MERGE":
            _apply_list_operation(filters, patch.operation, patch.value_json or {}, _named(_filter_name(patch)))
    for network_filter in filters:
        for patch in applicable:
            if patch.operation == "MERGE" and _filter_name(patch) in (None, network_filter.get("name")):
                _merge_filter(network_filter, patch)
        if network_filter.get("name") == HCM_NAMES[0]:
            _patch_http_filters(patches, context, listener, chain, network_filter)


def _patch_http_filters(patches: Patches, context: str, listener: Json, chain: Json, hcm_filter: Json) -> None:
    hcm = hcm_filter.get("typed_config")
    if hcm is None:
        return
    applicable = [p for p in patches.at("HTTP_FILTER", context)
                  if _listener_matches(listener, p) and _chain_matches(listener, chain, p)
                  and _filter_name(p) in (None, hcm_filter["name"])]  # fmt: skip
    if not applicable:
        return
    filters: list[Json] = hcm.setdefault("http_filters", [])
    for patch in applicable:
        if patch.operation != "MERGE":
            _apply_list_operation(filters, patch.operation, patch.value_json or {}, _named(_sub_filter_name(patch)))
    for http_filter in filters:
        for patch in applicable:
            if patch.operation == "MERGE" and _sub_filter_name(patch) in (None, http_filter.get("name")):
                _merge_filter(http_filter, patch)


def _connection_managers(listener: Json) -> list[Json]:
    """The typed_config of every HTTP connection manager in the listener."""
    chains = [*listener.get("filter_chains", []), *([listener["default_filter_chain"]]
                                                    if "default_filter_chain" in listener else [])]  # fmt: skip
    return [f["typed_config"] for chain in chains for f in chain.get("filters", [])
            if f.get("name") == HCM_NAMES[0] and "typed_config" in f]  # fmt: skip


# --------------------------------------------------------------------------- clusters


def _cluster_context(patches: Patches, cluster: Json) -> str:
    if patches.gateway:
        return "GATEWAY"
    name = str(cluster.get("name", ""))
    return "SIDECAR_INBOUND" if name.startswith("inbound|") or name == INBOUND_PASSTHROUGH else "SIDECAR_OUTBOUND"


def _patch_clusters(patches: Patches, clusters: dict[str, Json]) -> None:
    for name in list(clusters):
        if _patch_cluster(patches, _cluster_context(patches, clusters[name]), clusters[name]):
            del clusters[name]
    contexts = ("GATEWAY",) if patches.gateway else ("SIDECAR_OUTBOUND", "SIDECAR_INBOUND")
    for context in contexts:
        for patch in patches.adds("CLUSTER", context):
            assert patch.value_json is not None
            _add_named(clusters, patch.value_json, "cluster")


def _patch_cluster(patches: Patches, context: str, cluster: Json) -> bool:
    """REMOVE/MERGE of one cluster; True if it is to be removed (a matching REMOVE wins, as in istiod)."""
    matching = [p for p in patches.at("CLUSTER", context) if _cluster_matches(cluster, p)]
    if any(p.operation == "REMOVE" for p in matching):
        return True
    for patch in matching:
        if patch.is_merge:
            _merge_cluster(cluster, patch)
    return False


def _merge_cluster(cluster: Json, patch: ConfigPatch) -> None:
    """istiod's mergeTransportSocketCluster: a patch's transport socket merges into the socket of its name (in
    transport_socket_matches if there are any, else nothing), else replaces the cluster's socket."""
    value = patch.value_json or {}
    socket = value.get("transport_socket")
    if socket is None:
        _merge_into(cluster, patch)
        return
    matches = cluster.get("transport_socket_matches")
    if matches:
        same = [m["transport_socket"] for m in matches if m.get("transport_socket", {}).get("name") == socket.get("name")]
        if same:
            _merge_transport_socket(same[0], socket)
        else:
            log.warning("EnvoyFilter CLUSTER MERGE: %s has no transport socket match named %s; left as it was",
                        cluster.get("name"), socket.get("name"))
    elif cluster.get("transport_socket", {}).get("name") == socket.get("name"):
        _merge_transport_socket(cluster["transport_socket"], socket)
    else:
        cluster["transport_socket"] = copy.deepcopy(socket)


def _cluster_matches(cluster: Json, patch: ConfigPatch) -> bool:
    """istiod's clusterMatch on `direction|port|subset|host`; inbound clusters' hosts are their services'."""
    match = patch.match.cluster
    if match is None:
        return True
    name = str(cluster.get("name", ""))
    if match.name is not None:
        return match.name == name
    direction, port, subset, host = ((name.split("|") if "|" in name else []) + [""] * 4)[:4]
    hosts = [host]
    if direction == "inbound":
        services = cluster.get("metadata", {}).get("filter_metadata", {}).get("istio", {}).get("services", [])
        hosts = [s.get("host") for s in services] or hosts
    return ((match.subset is None or match.subset == subset)
            and (match.service is None or match.service in hosts)
            and (match.port_number is None or str(match.port_number) == port))  # fmt: skip
