"""A sidecar's scope (istiod's SidecarScope): the Sidecar resource that applies to it, and what it lets through.

Selection is Istio's: a Sidecar in the proxy's namespace whose workloadSelector
matches the proxy's labels, else that namespace's Sidecar without a selector,
else the root namespace's (MeshConfig `rootNamespace`, istio-system by default)
one without a selector, else the default scope (`*/*`: every visible service). Egress hosts are `ns/host`: `*`
any namespace, `.` the Sidecar's own, `~` none; host `*` or a DNS name that may
start with a wildcard. Services and VirtualServices outside the hosts are left
out of the proxy's config; the outbound policy is the Sidecar's, else the mesh's.
"""

from __future__ import annotations

from dataclasses import dataclass

from pylon.pilot.hosts import matches, resolve_short_name
from pylon.pilot.istio.resources import Resource
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Service, Snapshot


@dataclass(frozen=True)
class SidecarScope:
    sidecar: Resource | None
    egress_hosts: tuple[tuple[str, str], ...]  # (namespace, host) with "." resolved to the Sidecar's namespace
    outbound_policy: str  # ALLOW_ANY | REGISTRY_ONLY

    def allows(self, namespace: str, host: str) -> bool:
        """Whether a config of `namespace` about `host` is imported by this scope."""
        return any(ns in ("*", namespace) and matches(pattern, host) for ns, pattern in self.egress_hosts)


def sidecar_scope(proxy: Proxy, snapshot: Snapshot) -> SidecarScope:
    sidecar = _select(proxy, snapshot)
    policy = snapshot.mesh.outbound_traffic_policy.mode
    if sidecar is None:
        return SidecarScope(sidecar=None, egress_hosts=(("*", "*"),), outbound_policy=policy)
    spec = sidecar.spec
    if spec.outbound_traffic_policy is not None:
        policy = spec.outbound_traffic_policy.mode
    hosts: list[tuple[str, str]] = []
    for listener in spec.egress or []:
        for entry in listener.hosts:
            namespace, _, host = entry.partition("/")
            if namespace == "~":
                continue
            hosts.append((sidecar.namespace if namespace == "." else namespace, host))
    if not spec.egress:
        hosts.append(("*", "*"))
    return SidecarScope(sidecar=sidecar, egress_hosts=tuple(hosts), outbound_policy=policy)


def _select(proxy: Proxy, snapshot: Snapshot) -> Resource | None:
    ordered = sorted(snapshot.sidecars, key=lambda s: (s.namespace, s.name))
    own = [s for s in ordered if s.namespace == proxy.namespace]
    for sidecar in own:
        selector = sidecar.spec.workload_selector
        if selector is not None and all(proxy.labels.get(k) == v for k, v in selector.labels.items()):
            return sidecar
    for candidates in (own, [s for s in ordered if s.namespace == snapshot.mesh.root_namespace]):
        for sidecar in candidates:
            if sidecar.spec.workload_selector is None:
                return sidecar
    return None


def scoped_services(proxy: Proxy, snapshot: Snapshot, scope: SidecarScope,
                    hostnames: frozenset[str] | None = None) -> list[Service]:  # fmt: skip
    """The visible services whose namespace and host the scope imports (of `hostnames` only, if given)."""
    return [s for s in snapshot.visible_services(proxy.namespace, hostnames) if scope.allows(s.namespace, s.hostname)]


def own_services(proxy: Proxy, snapshot: Snapshot) -> list[Service]:
    """The services whose workloadSelector picks this proxy (its namespace, its labels): its inbound ports."""
    out = []
    for hostname in sorted(snapshot.services):
        for service in snapshot.services[hostname]:
            selector = service.entry.spec.workload_selector
            if service.namespace == proxy.namespace and selector is not None and all(
                    proxy.labels.get(k) == v for k, v in selector.labels.items()):  # fmt: skip
                out.append(service)
    return out


def mesh_virtual_services(proxy: Proxy, snapshot: Snapshot, scope: SidecarScope) -> list[Resource]:
    """VirtualServices for sidecars (no gateways, or `mesh` among them) visible to the proxy and in its scope."""
    out = []
    for vs in sorted(snapshot.virtual_services, key=lambda v: (v.namespace, v.name)):
        if vs.spec.gateways and "mesh" not in vs.spec.gateways:
            continue
        if not snapshot.virtual_service_visible(vs, proxy.namespace):
            continue
        if any(scope.allows(vs.namespace, resolve_short_name(h, vs.namespace)) for h in vs.spec.hosts):
            out.append(vs)
    return out
