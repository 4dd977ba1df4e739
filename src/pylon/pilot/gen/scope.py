"""A sidecar's scope (istiod's SidecarScope): the Sidecar resource that applies to it, and what it lets through.

Selection is Istio's: a Sidecar in the proxy's namespace whose workloadSelector
matches the proxy's labels, else that namespace's Sidecar without a selector,
else the root namespace's (MeshConfig `rootNamespace`, istio-system by default)
one without a selector, else the default scope: one catch-all egress listener importing `*/*` (every visible
service).

Each egress listener imports the services and VirtualServices its hosts name (`ns/host`: `*` any namespace,
`.` the Sidecar's own, `~` none; host `*` or a DNS name that may start with a wildcard). A listener with a
`port` imports only the services that have that port, and of them only that port (istiod's
serviceMatchingListenerPort); the catch-all (no port, the last listener), an HTTP_PROXY port and a unix
socket (port 0) import every port (istiod's needsPortMatch). The proxy's clusters are those of every
listener, ports merged per service. The outbound policy is the Sidecar's, else the mesh's; its `egressProxy`
(ALLOW_ANY only) replaces PassthroughCluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pylon.pilot.gen.names import PASSTHROUGH, subset_key
from pylon.pilot.hosts import matches, resolve_short_name
from pylon.pilot.istio.resources import Resource
from pylon.pilot.istio.sidecar import HTTP_PROXY, IstioEgressListener, SidecarPort
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Service, Snapshot


@dataclass(frozen=True)
class EgressListener:
    """One egress listener of the scope (the default scope has one catch-all, `*/*`)."""

    hosts: tuple[tuple[str, str], ...]  # (namespace, host) with "." resolved to the Sidecar's namespace
    port: SidecarPort | None = None  # None: the catch-all
    bind: str = ""
    capture_mode: str = "DEFAULT"
    # imported_ports by id(service), as SidecarScope's (a listener lives as long as its scope)
    _imported: dict[int, frozenset[int]] = field(default_factory=dict, compare=False, repr=False)

    def allows(self, namespace: str, host: str) -> bool:
        """Whether a config of `namespace` about `host` is imported by this listener."""
        return any(ns in ("*", namespace) and matches(pattern, host) for ns, pattern in self.hosts)

    @property
    def merges_ports(self) -> bool:
        """An HTTP proxy port or a unix socket: one HTTP listener for every port of its services, whose route
        configuration holds the virtual hosts of all of them."""
        return self.port is not None and (self.port.number == 0 or self.port.protocol.upper() == HTTP_PROXY)

    @property
    def route_name(self) -> str:
        """The RDS name of the listener's HTTP port: the port, or the socket (`unix://…`) of a port 0."""
        assert self.port is not None
        return self.bind if self.port.number == 0 else str(self.port.number)

    def imported_ports(self, service: Service) -> frozenset[int]:
        """The ports of `service` this listener imports (none if its hosts do not name the service)."""
        known = self._imported.get(id(service))
        if known is None:
            if not self.allows(service.namespace, service.hostname):
                known = frozenset()
            else:
                numbers = frozenset(p.number for p in service.ports)
                known = numbers if self.port is None or self.merges_ports else numbers & {self.port.number}
            self._imported[id(service)] = known
        return known


@dataclass(frozen=True)
class SidecarScope:
    sidecar: Resource | None
    egress: tuple[EgressListener, ...]
    outbound_policy: str  # ALLOW_ANY | REGISTRY_ONLY
    passthrough_cluster: str  # where ALLOW_ANY sends unknown traffic: PassthroughCluster or the egress proxy's
    # imported_ports by id(service): a generation asks it several times for each of a thousand services
    _imported: dict[int, frozenset[int]] = field(default_factory=dict, compare=False, repr=False)

    def allows(self, namespace: str, host: str) -> bool:
        """Whether any egress listener imports a config of `namespace` about `host`."""
        return any(listener.allows(namespace, host) for listener in self.egress)

    def imported_ports(self, service: Service) -> frozenset[int]:
        """The ports of `service` the proxy gets clusters for: every listener's, merged (istiod's
        appendSidecarServices)."""
        known = self._imported.get(id(service))
        if known is None:  # services live as long as the snapshot the scope is made for: their ids are stable
            known = self._imported[id(service)] = frozenset().union(*(e.imported_ports(service) for e in self.egress))
        return known

    def route_listener(self, name: str) -> EgressListener | None:
        """The egress listener whose services make the route configuration `name` (istiod's
        GetEgressListenerForRDS): the first one on that port (or socket), else the catch-all."""
        return next((e for e in self.egress if e.port is None or e.route_name == name), None)


def sidecar_scope(proxy: Proxy, snapshot: Snapshot) -> SidecarScope:
    sidecar = _select(proxy, snapshot)
    policy = snapshot.mesh.outbound_traffic_policy.mode
    passthrough = PASSTHROUGH
    if sidecar is None:
        return SidecarScope(sidecar=None, egress=(EgressListener(hosts=(("*", "*"),)),), outbound_policy=policy,
                            passthrough_cluster=passthrough)  # fmt: skip
    spec = sidecar.spec
    if spec.outbound_traffic_policy is not None:
        policy = spec.outbound_traffic_policy.mode
        proxy_destination = spec.outbound_traffic_policy.egress_proxy
        if proxy_destination is not None:
            assert proxy_destination.port is not None  # the Sidecar's validation
            passthrough = subset_key(proxy_destination.host, proxy_destination.port.number, proxy_destination.subset)
    egress = tuple(_listener(sidecar, listener) for listener in spec.egress)
    if not egress:
        egress = (EgressListener(hosts=(("*", "*"),)),)
    return SidecarScope(sidecar=sidecar, egress=egress, outbound_policy=policy, passthrough_cluster=passthrough)


def _listener(sidecar: Resource, listener: IstioEgressListener) -> EgressListener:
    hosts: list[tuple[str, str]] = []
    for entry in listener.hosts:
        namespace, _, host = entry.partition("/")
        if namespace != "~":
            hosts.append((sidecar.namespace if namespace == "." else namespace, host))
    return EgressListener(hosts=tuple(hosts), port=listener.port, bind=listener.bind, capture_mode=listener.capture_mode)


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
    """The visible services of which the scope imports a port (of `hostnames` only, if given)."""
    return [s for s in snapshot.visible_services(proxy.namespace, hostnames) if scope.imported_ports(s)]


def listener_services(services: list[Service], listener: EgressListener) -> list[Service]:
    """The services (of `scoped_services`) of which `listener` imports a port."""
    return [s for s in services if listener.imported_ports(s)]


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


def mesh_virtual_services(proxy: Proxy, snapshot: Snapshot, listener: EgressListener) -> list[Resource]:
    """VirtualServices for sidecars (no gateways, or `mesh` among them) visible to the proxy and imported by the
    egress listener."""
    out = []
    for vs in sorted(snapshot.virtual_services, key=lambda v: (v.namespace, v.name)):
        if vs.spec.gateways and "mesh" not in vs.spec.gateways:
            continue
        if not snapshot.virtual_service_visible(vs, proxy.namespace):
            continue
        if any(listener.allows(vs.namespace, resolve_short_name(h, vs.namespace)) for h in vs.spec.hosts):
            out.append(vs)
    return out
