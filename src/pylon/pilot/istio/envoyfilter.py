"""networking.istio.io/v1alpha3 EnvoyFilter: patches applied to generated Envoy config (gen/envoyfilter.py).

Served as istiod serves them (pilot/pkg/networking/core/envoyfilter, pilot/pkg/model/envoyfilter.go): applyTo
LISTENER, FILTER_CHAIN, NETWORK_FILTER, HTTP_FILTER, LISTENER_FILTER, ROUTE_CONFIGURATION, VIRTUAL_HOST,
HTTP_ROUTE and CLUSTER, each with the operations istiod carries out for it (INSERT_* on LISTENER, FILTER_CHAIN,
VIRTUAL_HOST and CLUSTER is an ADD there, as istiod converts it), and every match field istiod reads:
context, proxy{proxyVersion, metadata}, listener{portNumber, name, listenerFilter, filterChain{name, sni,
transportProtocol, applicationProtocols, destinationPort, filter{name, subFilter{name}}}},
routeConfiguration{portNumber, portName, gateway, name, vhost{name, domainName, route{name, action}}} and
cluster{portNumber, service, subset, name}.

Checked at load, so a mistake names the file, document and field instead of doing nothing:
- the value is parsed through Envoy's own message type for its applyTo (xds-protos), `@type`s included;
- a combination istiod would silently skip is an error: an operation it ignores for that applyTo (REPLACE of a
  LISTENER, ADD of a ROUTE_CONFIGURATION, REMOVE of an HTTP filter without subFilter ...), a match field it
  does not read for that applyTo/operation (a filter match on a LISTENER patch, a cluster match on a CLUSTER ADD,
  gateway/portName for sidecar routes ...), and the fields istiod does not implement (listener.portName,
  filterChain.transportSocket, patch.filterClass);
- a MERGE whose value sets `transportSocket` beside other fields (istiod then merges only the transport socket).
Refused outright: BOOTSTRAP (not served over xDS; Istio's agent stopped applying it, istio/istio#48693: the
bootstrap belongs to `pylon agent --bootstrap-override`, where the seed's Hyperscan `default_regex_engine` goes),
EXTENSION_CONFIG (pylon proxy has no ECDS to receive it), context WAYPOINT and `match.waypoint` (pylon pilot
serves no waypoints), `targetRefs` (Gateway API gateways and waypoints only).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from functools import cached_property
from typing import Any, Literal

from google.protobuf import descriptor_pool, json_format
from google.protobuf.message import Message

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain, ListenerFilter
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import Route, VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import HttpFilter
from pylon.config.errors import FieldError
from pylon.pilot.istio.common import Int32, IstioStruct, NonEmptyStr, NotImplementedField, PortNumber, check_regex

HCM_NAMES = ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager")
# istiod reads a proxyVersion regex only up to this length (longer ones match no proxy, with a warning).
MAX_PROXY_VERSION_LEN = 1024

# The Envoy message each applyTo's value is, as istiod's xds.BuildXDSObjectFromStruct parses it.
VALUE_TYPES: dict[str, type[Message]] = {
    "LISTENER": Listener,
    "FILTER_CHAIN": FilterChain,
    "NETWORK_FILTER": Filter,
    "HTTP_FILTER": HttpFilter,
    "LISTENER_FILTER": ListenerFilter,
    "ROUTE_CONFIGURATION": RouteConfiguration,
    "VIRTUAL_HOST": VirtualHost,
    "HTTP_ROUTE": Route,
    "CLUSTER": Cluster,
}
MERGES = ("MERGE", "MERGE_AND_REPLACE_LIST")
INSERTS = ("INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST")
FILTER_OPERATIONS = ("MERGE", "ADD", "REMOVE", *INSERTS, "REPLACE")
# What istiod does something with, per applyTo (listener_patch.go, rc_patch.go, cluster_patch.go).
OPERATIONS: dict[str, tuple[str, ...]] = {
    "LISTENER": (*MERGES, "ADD", "REMOVE", *INSERTS),
    "FILTER_CHAIN": (*MERGES, "ADD", "REMOVE", *INSERTS),
    "CLUSTER": (*MERGES, "ADD", "REMOVE", *INSERTS),
    "NETWORK_FILTER": FILTER_OPERATIONS,
    "HTTP_FILTER": FILTER_OPERATIONS,
    "LISTENER_FILTER": FILTER_OPERATIONS,
    "ROUTE_CONFIGURATION": MERGES,
    "VIRTUAL_HOST": (*MERGES, "ADD", "REMOVE", "REPLACE", *INSERTS),
    "HTTP_ROUTE": (*MERGES, "ADD", "REMOVE", *INSERTS),
}
# istiod turns INSERT_* into ADD except where there is an ordered list to insert into (model/envoyfilter.go).
ORDERED = ("HTTP_FILTER", "NETWORK_FILTER", "HTTP_ROUTE", "LISTENER_FILTER")
LISTENER_LEVEL = ("LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "LISTENER_FILTER")
ROUTE_LEVEL = ("ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE")
MATCH_KIND = {**{a: "listener" for a in LISTENER_LEVEL}, **{a: "routeConfiguration" for a in ROUTE_LEVEL},
              "CLUSTER": "cluster"}  # fmt: skip
# Envoy's xDS API packages, the only ones a `@type` may make pilot import from.
API_PACKAGES = ("envoy.", "xds.", "udpa.")


def _snake(name: str) -> str:
    """The Struct attribute of a YAML field name: `portNumber` -> `port_number`."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


class SubFilterMatch(IstioStruct, kw_only=True):
    name: NonEmptyStr


class FilterMatch(IstioStruct, kw_only=True):
    name: NonEmptyStr
    sub_filter: SubFilterMatch | None = None


class FilterChainMatch(IstioStruct, kw_only=True):
    name: NonEmptyStr | None = None
    sni: NonEmptyStr | None = None
    transport_protocol: NonEmptyStr | None = None
    application_protocols: NonEmptyStr | None = None
    destination_port: PortNumber | None = None
    filter: FilterMatch | None = None
    transport_socket: str | None = None

    def __post_init__(self) -> None:
        if self.transport_socket is not None:
            raise FieldError("transportSocket", "istiod does not match on it (the patch would apply to every "
                                                "filter chain); match the chain by name, sni, transportProtocol")  # fmt: skip


class ListenerMatch(IstioStruct, kw_only=True):
    port_number: PortNumber | None = None
    port_name: str | None = None
    name: NonEmptyStr | None = None
    filter_chain: FilterChainMatch | None = None
    listener_filter: NonEmptyStr | None = None

    def __post_init__(self) -> None:
        if self.port_name is not None:
            raise FieldError("portName", "istiod does not implement it (the patch would apply to every port); "
                                         "use portNumber")  # fmt: skip


class RouteMatch(IstioStruct, kw_only=True):
    name: NonEmptyStr | None = None
    action: Literal["ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE"] = "ANY"


class VirtualHostMatch(IstioStruct, kw_only=True):
    name: NonEmptyStr | None = None
    domain_name: NonEmptyStr | None = None
    route: RouteMatch | None = None


class RouteConfigurationMatch(IstioStruct, kw_only=True):
    port_number: PortNumber | None = None
    port_name: NonEmptyStr | None = None
    gateway: NonEmptyStr | None = None
    vhost: VirtualHostMatch | None = None
    name: NonEmptyStr | None = None

    def __post_init__(self) -> None:
        if self.gateway is not None and self.gateway.count("/") != 1:
            raise FieldError("gateway", f"{self.gateway!r} must be namespace/name, as istiod compares it")


class ClusterMatch(IstioStruct, kw_only=True):
    port_number: PortNumber | None = None
    service: NonEmptyStr | None = None
    subset: NonEmptyStr | None = None
    name: NonEmptyStr | None = None

    def __post_init__(self) -> None:
        others = [f for f in ("portNumber", "service", "subset") if getattr(self, _snake(f)) is not None]
        if self.name is not None and others:
            raise FieldError(others[0], "istiod ignores it beside `name` (a name match stands alone)")


class ProxyMatch(IstioStruct, kw_only=True):
    proxy_version: NonEmptyStr | None = None
    metadata: dict[str, str] = {}

    def __post_init__(self) -> None:
        if self.proxy_version is None:
            return
        if len(self.proxy_version) > MAX_PROXY_VERSION_LEN:
            raise FieldError("proxyVersion", f"longer than {MAX_PROXY_VERSION_LEN} characters (istiod ignores it)")
        try:
            check_regex(self.proxy_version)
        except ValueError as exc:
            raise FieldError("proxyVersion", str(exc)) from None


class PatchMatch(IstioStruct, kw_only=True):
    context: Literal["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY", "WAYPOINT"] = "ANY"
    proxy: ProxyMatch | None = None
    listener: ListenerMatch | None = None
    route_configuration: RouteConfigurationMatch | None = None
    cluster: ClusterMatch | None = None
    waypoint: NotImplementedField | None = None

    def __post_init__(self) -> None:
        if self.context == "WAYPOINT":
            raise FieldError("context", "pylon pilot serves no waypoint proxies")
        given = [name for name in ("listener", "routeConfiguration", "cluster") if getattr(self, _snake(name)) is not None]
        if len(given) > 1:
            raise FieldError(given[1], f"listener, routeConfiguration and cluster are one of (got {', '.join(given)})")


class Patch(IstioStruct, kw_only=True):
    operation: Literal["MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE",
                       "MERGE_AND_REPLACE_LIST"]  # fmt: skip
    value: dict[str, Any] | None = None
    filter_class: Literal["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"] | None = None

    def __post_init__(self) -> None:
        if self.filter_class not in (None, "UNSPECIFIED"):
            raise FieldError("filterClass", "istiod ignores it (the filter goes where the operation puts it); "
                                            "use INSERT_BEFORE/INSERT_AFTER with a subFilter match")  # fmt: skip


class ConfigPatch(IstioStruct, kw_only=True, dict=True):
    """One patch; its value is parsed through Envoy's message type at load (`envoy_value`, `value_json`)."""

    apply_to: NonEmptyStr
    match: PatchMatch = PatchMatch()
    patch: Patch

    def __post_init__(self) -> None:
        _check_apply_to(self.apply_to)
        if self.patch.operation not in OPERATIONS[self.apply_to]:
            raise FieldError("patch.operation", f"istiod does nothing with {self.patch.operation} on {self.apply_to} "
                                                f"(it does {', '.join(OPERATIONS[self.apply_to])})")  # fmt: skip
        _check_match_kind(self)
        _check_listener_match(self)
        _check_route_match(self)
        _check_value(self)

    @property
    def operation(self) -> str:
        """The operation istiod carries out: INSERT_* is ADD where there is no ordered list to insert into."""
        if self.patch.operation in INSERTS and self.apply_to not in ORDERED:
            return "ADD"
        return self.patch.operation

    @property
    def is_merge(self) -> bool:
        return self.patch.operation in MERGES

    @cached_property
    def envoy_value(self) -> Message | None:
        """The value as Envoy's message for the applyTo (None for REMOVE); FieldError at load if it is not one."""
        if self.patch.value is None:
            return None
        message = VALUE_TYPES[self.apply_to]()
        load_message_types(self.patch.value)
        try:
            json_format.ParseDict(self.patch.value, message)
        except json_format.ParseError as exc:
            reason = str(exc)
            if "Can not find message descriptor" in reason:
                reason = f"referenced type unknown (not in Envoy's API as pilot knows it): {reason}"
            raise FieldError("patch.value", reason) from None
        return message

    @cached_property
    def value_json(self) -> dict[str, Any] | None:
        """The value as the generators write resources: proto-JSON, snake_case, only the fields set."""
        message = self.envoy_value
        return None if message is None else message_json(message)


class EnvoyFilterSelector(IstioStruct, kw_only=True):
    labels: dict[str, str] = {}


class EnvoyFilterSpec(IstioStruct, kw_only=True):
    workload_selector: EnvoyFilterSelector | None = None
    target_refs: NotImplementedField | None = None
    config_patches: list[ConfigPatch] = []
    priority: Int32 = 0


# --------------------------------------------------------------------------- checks


def _check_apply_to(apply_to: str) -> None:
    if apply_to == "BOOTSTRAP":
        raise FieldError("applyTo", "BOOTSTRAP patches are not served over xDS (Istio's agent no longer applies "
                                    "them either); put bootstrap settings such as default_regex_engine in the "
                                    "agent's bootstrap override (pylon agent --bootstrap-override)")  # fmt: skip
    if apply_to == "EXTENSION_CONFIG":
        raise FieldError("applyTo", "EXTENSION_CONFIG needs ECDS (extension config discovery), which pylon proxy "
                                    "does not have; put the filter's typed_config in an HTTP_FILTER patch")  # fmt: skip
    if apply_to not in OPERATIONS:
        raise FieldError("applyTo", f"unknown applyTo {apply_to!r} (one of {', '.join(OPERATIONS)})")


def _check_match_kind(patch: ConfigPatch) -> None:
    """istiod's validation: listener-level patches take a listener match, route-level ones a routeConfiguration
    match, CLUSTER a cluster match; an ADD of a whole listener or cluster matches nothing but the context."""
    wanted = MATCH_KIND[patch.apply_to]
    for kind in ("listener", "routeConfiguration", "cluster"):
        if kind != wanted and getattr(patch.match, _snake(kind)) is not None:
            raise FieldError(f"match.{kind}", f"a {patch.apply_to} patch takes a {wanted} match")
    if patch.operation == "ADD" and patch.apply_to in ("LISTENER", "CLUSTER"):
        if getattr(patch.match, _snake(wanted)) is not None:
            raise FieldError(f"match.{wanted}", f"istiod adds a {patch.apply_to.lower()} by context alone and "
                                                f"ignores this match")  # fmt: skip


def _check_listener_match(patch: ConfigPatch) -> None:
    """Each listener match field must take part in matching this applyTo and operation, as istiod reads them."""
    listener = patch.match.listener
    chain = listener.filter_chain if listener is not None else None
    wanted = chain.filter if chain is not None else None
    if patch.apply_to == "LISTENER_FILTER":
        _check_listener_filter_match(patch, listener.listener_filter if listener is not None else None)
    elif listener is not None and listener.listener_filter is not None:
        raise FieldError("match.listener.listenerFilter", "only LISTENER_FILTER patches match on it")
    if chain is not None and (patch.apply_to in ("LISTENER", "LISTENER_FILTER") or
                              (patch.apply_to == "FILTER_CHAIN" and patch.operation == "ADD")):  # fmt: skip
        raise FieldError("match.listener.filterChain", f"istiod does not read it for {patch.apply_to} "
                                                       f"{patch.operation}")  # fmt: skip
    if wanted is not None:
        _check_filter_match(patch, wanted)
    _check_filter_needed(patch, wanted)


def _check_listener_filter_match(patch: ConfigPatch, name: str | None) -> None:
    if name is not None and patch.operation in ("ADD", "INSERT_FIRST"):
        raise FieldError("match.listener.listenerFilter", f"istiod ignores it for {patch.operation}")
    if name is None and patch.operation in ("REMOVE", "REPLACE", "MERGE"):
        raise FieldError("match.listener.listenerFilter", f"istiod does nothing with {patch.operation} of a "
                                                          f"listener filter that names none")  # fmt: skip


def _check_filter_match(patch: ConfigPatch, wanted: FilterMatch) -> None:
    path = "match.listener.filterChain.filter"
    if patch.apply_to == "FILTER_CHAIN":
        raise FieldError(path, "istiod does not read it for FILTER_CHAIN patches (it matches chains, not filters)")
    if wanted.sub_filter is not None and patch.apply_to != "HTTP_FILTER":
        raise FieldError(f"{path}.subFilter", "subfilter match can be used with applyTo HTTP_FILTER only")
    if wanted.sub_filter is not None and wanted.name not in HCM_NAMES:
        raise FieldError(f"{path}.subFilter", f"subfilter match requires filter match with {HCM_NAMES[0]}")
    if patch.apply_to == "NETWORK_FILTER" and patch.operation in ("ADD", "INSERT_FIRST"):
        raise FieldError(path, f"istiod ignores it for NETWORK_FILTER {patch.operation} (the filter goes in every "
                               f"matching chain)")  # fmt: skip
    if wanted.sub_filter is not None and patch.operation in ("ADD", "INSERT_FIRST"):
        raise FieldError(f"{path}.subFilter", f"istiod ignores it for HTTP_FILTER {patch.operation}")


def _check_filter_needed(patch: ConfigPatch, wanted: FilterMatch | None) -> None:
    """REMOVE and REPLACE of a filter that names none are no-ops in istiod."""
    if patch.operation not in ("REMOVE", "REPLACE"):
        return
    if patch.apply_to == "NETWORK_FILTER" and wanted is None:
        raise FieldError("match.listener.filterChain.filter", f"istiod does nothing with {patch.operation} of a "
                                                              f"network filter that names none")  # fmt: skip
    if patch.apply_to == "HTTP_FILTER" and (wanted is None or wanted.sub_filter is None):
        raise FieldError("match.listener.filterChain.filter.subFilter", f"istiod does nothing with "
                                                                        f"{patch.operation} of an HTTP filter "
                                                                        f"that names none")  # fmt: skip


def _check_route_match(patch: ConfigPatch) -> None:
    """routeConfiguration fields must take part in matching this applyTo and operation, as istiod reads them."""
    rc = patch.match.route_configuration
    if rc is None:
        return
    path = "match.routeConfiguration"
    for field in ("gateway", "portName"):
        if getattr(rc, _snake(field)) is not None and patch.match.context != "GATEWAY":
            raise FieldError(f"{path}.{field}", "istiod reads it for gateway routes only and ignores it for "
                                                "sidecars: set context GATEWAY")  # fmt: skip
    vhost = rc.vhost
    if vhost is None:
        return
    if patch.apply_to == "ROUTE_CONFIGURATION" or (patch.apply_to == "VIRTUAL_HOST" and patch.operation == "ADD"):
        raise FieldError(f"{path}.vhost", f"istiod does not read it for {patch.apply_to} {patch.operation}")
    if vhost.route is None:
        return
    if patch.apply_to == "VIRTUAL_HOST" or patch.operation == "ADD":
        raise FieldError(f"{path}.vhost.route", f"istiod does not read it for {patch.apply_to} {patch.operation}")


def _check_value(patch: ConfigPatch) -> None:
    operation = patch.patch.operation
    if operation == "REMOVE":
        if patch.patch.value is not None:
            raise FieldError("patch.value", "REMOVE takes no value (istiod ignores it)")
        return
    if patch.patch.value is None:
        raise FieldError("patch.value", f"{operation} needs a value")
    value = patch.envoy_value
    assert value is not None
    named = patch.apply_to not in ("FILTER_CHAIN", "HTTP_ROUTE", "ROUTE_CONFIGURATION")
    if named and operation not in MERGES and not getattr(value, "name"):
        raise FieldError("patch.value.name", f"{operation} of a {patch.apply_to} needs its name")
    if operation in MERGES and patch.apply_to in ("CLUSTER", "FILTER_CHAIN") and value.HasField("transport_socket"):
        others = [field.name for field, _ in value.ListFields() if field.name != "transport_socket"]
        if others:
            raise FieldError(f"patch.value.{others[0]}", "istiod merges only the transportSocket of a patch "
                                                         "that sets one; give the other fields their own patch")  # fmt: skip


# --------------------------------------------------------------------------- Envoy message types


def load_message_types(value: Any) -> None:
    """Import the xds-protos modules defining every Envoy `@type` in `value`, so protobuf's JSON parser (and the
    encoder, later) resolve it: istiod has every Envoy extension compiled in, pilot imports only what its own
    generators write, and a user's patch may name any of them (Lua, ext_authz, local_ratelimit ...)."""
    pool = descriptor_pool.Default()
    for type_url in _type_urls(value):
        full_name = type_url.rsplit("/", 1)[-1]
        if not full_name.startswith(API_PACKAGES):
            continue
        try:
            pool.FindMessageTypeByName(full_name)
        except KeyError:
            _import_package_of(full_name)


def message_json(message: Message) -> dict[str, Any]:
    """A message as the generators write resources: proto-JSON in plain dicts, snake_case, only the fields set."""
    return json.loads(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True)))


def _type_urls(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["@type"]] if isinstance(value.get("@type"), str) else []
        return found + [url for item in value.values() for url in _type_urls(item)]
    if isinstance(value, list):
        return [url for item in value for url in _type_urls(item)]
    return []


def _import_package_of(full_name: str) -> None:
    """Import every `*_pb2` module of the deepest Python package named by a prefix of `full_name`."""
    parts = full_name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        try:
            package = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
            if module.name.endswith("_pb2"):
                try:
                    importlib.import_module(f"{package.__name__}.{module.name}")
                except ImportError:
                    continue
        return
