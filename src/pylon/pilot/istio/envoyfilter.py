"""networking.istio.io/v1alpha3 EnvoyFilter: patches applied to generated Envoy config.

Served: applyTo LISTENER, HTTP_FILTER and CLUSTER with Istio's operations for
them, matched by context, listener portNumber/name, filterChain.filter.name
(+ subFilter.name for HTTP filters), cluster name/service/subset/portNumber.
BOOTSTRAP is refused: bootstrap is not served over xDS, and Istio's agent stopped
applying BOOTSTRAP patches (istio/istio#48693); the bootstrap belongs to the
agent (`pylon agent --bootstrap-override`, Istio's bootstrapOverride ConfigMap),
which is where the seed's Hyperscan `default_regex_engine` goes. Other applyTo
values are errors naming the field until they are implemented.
"""

from __future__ import annotations

from typing import Any, Literal

from pylon.config.errors import FieldError
from pylon.pilot.istio.common import Int32, IstioStruct, NonEmptyStr, NotImplementedField, PortNumber

APPLY_TO = ("LISTENER", "HTTP_FILTER", "CLUSTER")
OPERATIONS = {
    "LISTENER": ("MERGE", "ADD", "REMOVE"),
    "CLUSTER": ("MERGE", "ADD", "REMOVE"),
    "HTTP_FILTER": ("MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE"),
}


class SubFilterMatch(IstioStruct, kw_only=True):
    name: NonEmptyStr


class FilterMatch(IstioStruct, kw_only=True):
    name: NonEmptyStr
    sub_filter: SubFilterMatch | None = None


class FilterChainMatch(IstioStruct, kw_only=True):
    filter: FilterMatch | None = None
    name: NotImplementedField | None = None
    sni: NotImplementedField | None = None
    transport_protocol: NotImplementedField | None = None
    application_protocols: NotImplementedField | None = None
    destination_port: NotImplementedField | None = None


class ListenerMatch(IstioStruct, kw_only=True):
    port_number: PortNumber | None = None
    name: NonEmptyStr | None = None
    filter_chain: FilterChainMatch | None = None
    port_name: NotImplementedField | None = None
    listener_filter: NotImplementedField | None = None


class ClusterMatch(IstioStruct, kw_only=True):
    port_number: PortNumber | None = None
    service: NonEmptyStr | None = None
    subset: NonEmptyStr | None = None
    name: NonEmptyStr | None = None


class PatchMatch(IstioStruct, kw_only=True):
    context: Literal["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"] = "ANY"
    listener: ListenerMatch | None = None
    cluster: ClusterMatch | None = None
    route_configuration: NotImplementedField | None = None
    proxy: NotImplementedField | None = None


class Patch(IstioStruct, kw_only=True):
    operation: Literal["MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE",
                       "MERGE_AND_REPLACE_LIST", "INVALID"]  # fmt: skip
    value: dict[str, Any] | None = None
    filter_class: NotImplementedField | None = None


class ConfigPatch(IstioStruct, kw_only=True):
    apply_to: NonEmptyStr
    match: PatchMatch = PatchMatch()
    patch: Patch

    def __post_init__(self) -> None:
        if self.apply_to == "BOOTSTRAP":
            raise FieldError("applyTo", "BOOTSTRAP patches are not served over xDS (Istio's agent no longer applies "
                                        "them either); put bootstrap settings such as default_regex_engine in the "
                                        "agent's bootstrap override (pylon agent --bootstrap-override)")  # fmt: skip
        if self.apply_to not in APPLY_TO:
            raise FieldError("applyTo", f"{self.apply_to} is not supported by pylon pilot yet ({', '.join(APPLY_TO)})")
        if self.patch.operation not in OPERATIONS[self.apply_to]:
            raise FieldError("patch.operation", f"{self.patch.operation} is not valid for {self.apply_to} "
                                                f"({', '.join(OPERATIONS[self.apply_to])})")  # fmt: skip
        if self.patch.operation != "REMOVE" and not self.patch.value:
            raise FieldError("patch.value", f"{self.patch.operation} needs a value")
        if self.apply_to == "HTTP_FILTER" and (self.match.listener is None or self.match.listener.filter_chain is None
                                               or self.match.listener.filter_chain.filter is None):  # fmt: skip
            raise FieldError("match.listener.filterChain.filter", "HTTP_FILTER patches name the HTTP connection manager")
        if self.apply_to == "CLUSTER" and self.match.listener is not None:
            raise FieldError("match.listener", "a CLUSTER patch matches clusters")


class EnvoyFilterSelector(IstioStruct, kw_only=True):
    labels: dict[str, str] = {}


class EnvoyFilterSpec(IstioStruct, kw_only=True):
    workload_selector: EnvoyFilterSelector | None = None
    target_refs: NotImplementedField | None = None
    config_patches: list[ConfigPatch] = []
    priority: Int32 = 0
