"""One immutable, indexed view of the mesh config: istiod's PushContext, sans-IO.

Built once per debounced change from a source's resources; generators only read
it. Building checks what spans resources (duplicate names) and resolves what
Istio resolves once: short host names, ServiceEntry endpoints and the
WorkloadEntries their workloadSelector picks. A resource without `exportTo` is
exported as MeshConfig's `defaultServiceExportTo`, `defaultVirtualServiceExportTo`
or `defaultDestinationRuleExportTo` says (each `*` when unset), as istiod's
PushContext does.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from pylon.config.errors import ConfigError
from pylon.pilot.delegation import merge_delegates
from pylon.pilot.hosts import is_visible, matches, resolve_short_name
from pylon.pilot.istio.mesh import MeshConfig
from pylon.pilot.istio.networking import (ServiceEntrySpec, ServicePort, Subset, WorkloadEntrySpec, WorkloadGroupMetadata,
                                         WorkloadTemplate)  # fmt: skip
from pylon.pilot.istio.resources import Resource
from pylon.pilot.pieces import Pieces
from pylon.pilot.proxy import Proxy
from pylon.pilot.source.secrets import GatewaySecret, SecretKey


@dataclass(frozen=True)
class Endpoint:
    """One workload behind a service: a ServiceEntry endpoint or a selected WorkloadEntry."""

    address: str
    ports: dict[str, int]
    labels: dict[str, str]
    weight: int
    locality: str

    @classmethod
    def from_spec(cls, spec: WorkloadEntrySpec) -> Endpoint:
        return cls(address=spec.address, ports=dict(spec.ports), labels=dict(spec.labels), weight=spec.weight,
                   locality=spec.locality)

    def port_for(self, port: ServicePort) -> int:
        """Istio's choice: the endpoint's port named like the service port, else targetPort, else the port."""
        return self.ports.get(port.name) or port.target_port or port.number


@dataclass(frozen=True)
class Service:
    """One host of a ServiceEntry, with the ports and endpoints it resolves to."""

    hostname: str
    namespace: str
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...]
    export_to: tuple[str, ...]
    entry: Resource


@dataclass(frozen=True)
class Snapshot:
    version: str
    resources: tuple[Resource, ...] = ()
    gateways: tuple[Resource, ...] = ()
    virtual_services: tuple[Resource, ...] = ()
    destination_rules: tuple[Resource, ...] = ()
    services: dict[str, tuple[Service, ...]] = field(default_factory=dict)
    sidecars: tuple[Resource, ...] = ()
    authorization_policies: tuple[Resource, ...] = ()
    peer_authentications: tuple[Resource, ...] = ()
    envoy_filters: tuple[Resource, ...] = ()
    mesh: MeshConfig = field(default_factory=MeshConfig)
    # Gateway credentials by (namespace, name), from the secrets directory (not part of `resources`).
    secrets: Mapping[SecretKey, GatewaySecret] = field(default_factory=dict)
    selector_label_keys: frozenset[str] = frozenset()  # see `selector_label_keys`
    selector_metadata_keys: frozenset[str] = frozenset()  # node metadata EnvoyFilter proxy matches read
    # A Sidecar's ingress listeners depend on the proxy's own IPs (their bind, a defaultEndpoint 0.0.0.0 or ::).
    sidecars_read_instance_ips: bool = False
    # Generated per-service pieces, carried over from the previous snapshot (pieces.py); not part of the config.
    pieces: Pieces = field(default_factory=Pieces, compare=False, repr=False)

    # ------------------------------------------------------------------ lookups used by generators

    def gateways_for(self, proxy: Proxy) -> list[Resource]:
        """Gateways whose selector is a subset of the proxy's labels (any namespace, Istio's default)."""
        return [gw for gw in self.gateways if all(proxy.labels.get(k) == v for k, v in gw.spec.selector.items())]

    def virtual_services_for_gateway(self, gateway: str, proxy_namespace: str) -> list[Resource]:
        """VirtualServices bound to `gateway` ("ns/name") and visible from the proxy's namespace."""
        return [vs for vs in self.virtual_services
                if gateway in gateway_names(vs) and self.virtual_service_visible(vs, proxy_namespace)]  # fmt: skip

    def virtual_service_visible(self, vs: Resource, proxy_namespace: str) -> bool:
        """Whether `vs` is exported to the proxy's namespace (its exportTo, else the mesh's default)."""
        export_to = vs.spec.export_to or self.mesh.default_virtual_service_export_to
        return is_visible(export_to, vs.namespace, proxy_namespace)

    def service(self, hostname: str, preferred_namespace: str, proxy_namespace: str) -> Service | None:
        """The service for a host: the one in `preferred_namespace` if visible, else any visible one."""
        visible = [s for s in self.services.get(hostname, ()) if is_visible(s.export_to, s.namespace, proxy_namespace)]
        preferred = [s for s in visible if s.namespace == preferred_namespace]
        return (preferred or visible or [None])[0]

    def visible_services(self, proxy_namespace: str, hostnames: frozenset[str] | None = None) -> list[Service]:
        """Every service the proxy may reach (of `hostnames`, if given), one per hostname, sorted by hostname
        for stable output."""
        out = []
        for hostname in sorted(self.services if hostnames is None else hostnames & self.services.keys()):
            service = self.service(hostname, proxy_namespace, proxy_namespace)
            if service is not None:
                out.append(service)
        return out

    def destination_rule(self, hostname: str, proxy_namespace: str, service_namespace: str) -> Resource | None:
        """The DestinationRule for a host, looked up as Istio does: the proxy's namespace first, then the
        service's, then any namespace the rule is exported to; an exact host beats the narrowest wildcard."""
        default_export = self.mesh.default_destination_rule_export_to
        candidates = [dr for dr in self.destination_rules
                      if is_visible(dr.spec.export_to or default_export, dr.namespace, proxy_namespace)
                      and matches(resolve_short_name(dr.spec.host, dr.namespace), hostname)]  # fmt: skip
        if not candidates:
            return None

        def rank(dr: Resource) -> tuple[int, int, int]:
            host = resolve_short_name(dr.spec.host, dr.namespace)
            namespace_rank = 0 if dr.namespace == proxy_namespace else 1 if dr.namespace == service_namespace else 2
            return (0 if host == hostname else 1, -len(host), namespace_rank)

        return min(candidates, key=rank)


def endpoints_only_change(old: Snapshot, new: Snapshot) -> bool:
    """Whether `new` differs from `old` only in workload addresses (WorkloadEntries, STATIC ServiceEntry
    endpoints; DNS ServiceEntries carry their endpoints in the cluster).

    Then clusters, listeners and routes are unchanged and istiod pushes EDS alone:
    workloads come and go far more often than routing changes, and a full push
    to every proxy for each of them is what makes control planes fall behind.
    """
    return old.mesh == new.mesh and _without_endpoints(old) == _without_endpoints(new)


def changed_hostnames(old: Snapshot, new: Snapshot) -> frozenset[str]:
    """The hostnames whose Services are not the same objects in both snapshots (`build_snapshot(previous=old)`
    keeps a Service whose inputs did not change), or exist in one only: after an endpoints-only change, the
    only hosts whose load assignments may differ."""
    hosts = old.services.keys() | new.services.keys()
    return frozenset(h for h in hosts if not _same_objects(old.services.get(h, ()), new.services.get(h, ())))


def _same_objects(one: tuple[Service, ...], other: tuple[Service, ...]) -> bool:
    return len(one) == len(other) and all(a is b for a, b in zip(one, other))


def _without_endpoints(snapshot: Snapshot) -> dict[tuple[str, str, str], object]:
    """Every resource's spec by key, STATIC ServiceEntries without their endpoints and WorkloadEntries left out.

    Compared as Structs (field by field), not as encoded JSON: specs hold values msgspec cannot encode
    (GoDuration, a float subclass), and encoding every spec twice per reload is work for nothing.
    """
    out: dict[tuple[str, str, str], object] = {}
    for resource in snapshot.resources:
        if resource.kind == "WorkloadEntry":
            continue
        static_entry = resource.kind == "ServiceEntry" and resource.spec.resolution == "STATIC"
        out[resource.key] = msgspec.structs.replace(resource.spec, endpoints=[]) if static_entry else resource.spec
    return out


def gateway_names(vs: Resource) -> list[str]:
    """A VirtualService's `gateways` as "namespace/name" (short names are in the VirtualService's namespace)."""
    return [g if "/" in g or g == "mesh" else f"{vs.namespace}/{g}" for g in vs.spec.gateways]


def build_snapshot(resources: list[Resource], version: str | None = None, mesh: MeshConfig | None = None,
                   secrets: Mapping[SecretKey, GatewaySecret] | None = None,
                   previous: Snapshot | None = None) -> Snapshot:  # fmt: skip
    """Index `resources` under `mesh`, with the gateway `secrets`; ConfigError for a kind/namespace/name defined
    twice.

    With the `previous` snapshot, the Services of ServiceEntries it already had (the same Resource objects) are
    kept as they were, and its generated pieces are carried over: what did not change keeps its identity, which
    is what lets generators reuse the pieces built from it (pieces.py)."""
    seen: dict[tuple[str, str, str], Resource] = {}
    for resource in resources:
        if resource.key in seen:
            raise ConfigError(resource.source, "metadata.name",
                              f"{resource.kind} {resource.namespace}/{resource.name} is also defined in {seen[resource.key].source}")
        seen[resource.key] = resource
    by_kind: dict[str, list[Resource]] = {}
    for resource in resources:
        by_kind.setdefault(resource.kind, []).append(resource)
    workload_entries = by_kind.get("WorkloadEntry", [])
    mesh = mesh or MeshConfig()
    reusable = _services_by_entry(previous) if previous is not None and previous.mesh == mesh else {}
    services: dict[str, list[Service]] = {}
    for entry in by_kind.get("ServiceEntry", []):
        kept = reusable.get(id(entry))
        if kept and entry.spec.workload_selector is None:
            found = [kept[resolve_short_name(host, entry.namespace)] for host in entry.spec.hosts]
        else:
            found = _services_of(entry, workload_entries, mesh.default_service_export_to)
        for service in found:
            services.setdefault(service.hostname, []).append(service)
    return Snapshot(
        version=version or _new_version(),
        resources=tuple(resources),
        gateways=tuple(by_kind.get("Gateway", [])),
        virtual_services=tuple(merge_delegates(by_kind.get("VirtualService", []), mesh.default_virtual_service_export_to)),
        destination_rules=tuple(by_kind.get("DestinationRule", [])),
        services={host: tuple(found) for host, found in services.items()},
        sidecars=tuple(by_kind.get("Sidecar", [])),
        authorization_policies=tuple(by_kind.get("AuthorizationPolicy", [])),
        peer_authentications=tuple(by_kind.get("PeerAuthentication", [])),
        envoy_filters=tuple(by_kind.get("EnvoyFilter", [])),
        mesh=mesh,
        secrets=dict(secrets or {}),
        selector_label_keys=selector_label_keys(resources),
        selector_metadata_keys=selector_metadata_keys(by_kind.get("EnvoyFilter", [])),
        sidecars_read_instance_ips=any(s.spec.reads_instance_ips for s in by_kind.get("Sidecar", [])),
        pieces=previous.pieces.successor() if previous is not None else Pieces(),
    )


def _services_by_entry(snapshot: Snapshot) -> dict[int, dict[str, Service]]:
    """The snapshot's Services by the id of their ServiceEntry (alive with the snapshot, so ids are unique), then
    by hostname. A Service depends on its entry, the mesh's default exportTo and, for an entry with a
    `workloadSelector`, the WorkloadEntries: the caller reuses only entries without a selector, under an equal mesh."""
    out: dict[int, dict[str, Service]] = {}
    for found in snapshot.services.values():
        for service in found:
            out.setdefault(id(service.entry), {})[service.hostname] = service
    return out


def with_secrets(snapshot: Snapshot, secrets: Mapping[SecretKey, GatewaySecret]) -> Snapshot:
    """The same config with new gateway secrets, as a new version (only secrets need pushing)."""
    return dataclasses.replace(snapshot, secrets=dict(secrets), version=_new_version())


LABEL_FIELDS = frozenset({"selector", "labels", "match_labels", "source_labels"})
# Label maps that describe workloads (endpoints, WorkloadEntries) or pick among them (DestinationRule subsets):
# matched against endpoints' labels, never against a proxy's.
WORKLOAD_LABELS = (WorkloadEntrySpec, Subset, WorkloadTemplate, WorkloadGroupMetadata)


def selector_label_keys(resources: list[Resource]) -> frozenset[str]:
    """Every label name that a label map of any spec that could select proxies names (`selector`,
    `workloadSelector.labels`, `selector.matchLabels`, `sourceLabels`, ...), at any depth.

    Generators look at a proxy's labels only through selectors (is this map a subset of its labels?), so
    two proxies whose labels agree on these names are selected alike by everything in the config: what
    lets pilot generate once for both (gen `generation_key`). Every label map counts but the workloads' own
    (WORKLOAD_LABELS), so a new kind of selector is covered without a change here; naming a few label names
    too many would only cost some sharing.
    """
    keys: set[str] = set()
    todo: list[object] = [resource.spec for resource in resources]
    while todo:
        value = todo.pop()
        if isinstance(value, msgspec.Struct):
            for name in value.__struct_fields__:
                item = getattr(value, name)
                if name in LABEL_FIELDS and isinstance(item, dict):
                    if not (name == "labels" and isinstance(value, WORKLOAD_LABELS)):
                        keys.update(item)
                else:
                    todo.append(item)
        elif isinstance(value, (list, tuple)):
            todo.extend(value)
        elif isinstance(value, dict):
            todo.extend(value.values())
    return frozenset(keys)


def selector_metadata_keys(envoy_filters: list[Resource]) -> frozenset[str]:
    """The node metadata an EnvoyFilter's `match.proxy` reads: its `metadata` keys, and ISTIO_VERSION for a
    `proxyVersion` (gen `generation_key` keeps proxies that differ there apart)."""
    keys: set[str] = set()
    for envoy_filter in envoy_filters:
        for patch in envoy_filter.spec.config_patches:
            proxy = patch.match.proxy
            if proxy is not None:
                keys.update(proxy.metadata)
                if proxy.proxy_version is not None:
                    keys.add("ISTIO_VERSION")
    return frozenset(keys)


def _services_of(entry: Resource, workload_entries: list[Resource], default_export_to: list[str]) -> list[Service]:
    spec: ServiceEntrySpec = entry.spec
    if spec.workload_selector is not None:
        wanted = spec.workload_selector.labels
        endpoints = tuple(
            Endpoint.from_spec(we.spec) for we in workload_entries
            if we.namespace == entry.namespace and all(we.spec.labels.get(k) == v for k, v in wanted.items())
        )  # fmt: skip
    else:
        endpoints = tuple(Endpoint.from_spec(ep) for ep in spec.endpoints)
    return [
        Service(hostname=resolve_short_name(host, entry.namespace), namespace=entry.namespace, ports=tuple(spec.ports),
                endpoints=endpoints, export_to=tuple(spec.export_to or default_export_to), entry=entry)
        for host in spec.hosts
    ]


_versions = itertools.count(1)


def _new_version() -> str:
    """istiod's version_info shape: an RFC 3339 timestamp and a push counter."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f"/{next(_versions)}"
