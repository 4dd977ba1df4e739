"""Config for sidecar proxies (`sidecar~…`), with Istio's names and shapes.

Outbound: `virtualOutbound` on 15001 (`use_original_dst`) hands captured
connections to the listener of their original destination port, else to its
catch-all chain `virtualOutbound-catchall-tcp` (PassthroughCluster, or the Sidecar's
egress proxy, under ALLOW_ANY; BlackHoleCluster under REGISTRY_ONLY). The Sidecar's
egress listeners (gen/scope.py; by default one catch-all importing every service)
make the per-port listeners, as istiod's buildSidecarOutboundListeners: a listener
with a `port` makes that port's listener for its own services, with its own protocol;
the catch-all then makes one for every other port of its services (a port already
made, at the same address, is not touched). An HTTP port is `<bind>_<port>` with RDS
named by the port, whose virtual hosts are `<host>:<port>` per service on that port of
the first egress listener on the port, else of the catch-all (the routes of its mesh
VirtualServices, else a default route to `outbound|<port>||<host>`), and then
`allow_any` or `block_all`; the DYNAMIC_DNS services of an HTTP listener put their dynamic
forward proxy filters before the router (gen/dfp.py). Other ports get tcp_proxy chains (gen/tcp.py). An egress
listener with the HTTP_PROXY protocol, or on a unix socket (port 0, `unix://` bind, its RDS
named by the socket), is one HTTP listener whose route configuration has the virtual hosts
of every port of its services. A listener is bound for real (on its `bind`, else
127.0.0.1) when its `captureMode` is NONE, its bind a socket, or the proxy's interception
mode NONE; otherwise it only receives hand-offs (`bind_to_port: false`, on its `bind`,
else 0.0.0.0). Clusters are those of the ports the egress listeners import.

Inbound: gen/inbound.py (`virtualInbound` on 15006, or the Sidecar's ingress listeners).

Interception mode NONE (node metadata `INTERCEPTION_MODE`, no capture rules):
no virtual listeners, no inbound but the Sidecar's ingress listeners (bound); outbound listeners bind for real on
`127.0.0.1_<port>`, as istiod does, so an application reaches them directly.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from pylon.pilot.gen import dfp
from pylon.pilot.gen.authz import policies_for
from pylon.pilot.gen.clusters import blackhole_cluster, outbound_clusters
from pylon.pilot.gen.endpoints import outbound_assignments
from pylon.pilot.gen.filters import (INBOUND_SOURCE, LOCALHOST, VIRTUAL_OUTBOUND_PORT, WILDCARD, hcm, original_dst_cluster,
                                     socket_address, tcp_proxy_to, tls_inspector)  # fmt: skip
from pylon.pilot.gen.inbound import inbound_cluster, inbound_listeners, inbound_ports
from pylon.pilot.gen.mtls import PeerModes
from pylon.pilot.gen.name_table import name_table
from pylon.pilot.gen.names import BLACKHOLE, INBOUND_PASSTHROUGH, PASSTHROUGH, domain_name, listener_name, subset_key
from pylon.pilot.gen.routes import RouteContext, build_http_routes, is_catch_all, translate_retry
from pylon.pilot.gen.tcp import sidecar_tcp_chains, sidecar_tls_chains
from pylon.pilot.gen.scope import (EgressListener, SidecarScope, listener_services, mesh_virtual_services, scoped_services,
                                   sidecar_scope)  # fmt: skip
from pylon.pilot.gen.types import ADS_SOURCE, CLUSTER, ENDPOINT, LISTENER, NAME_TABLE, ROUTE, Json, Resources
from pylon.pilot.hosts import matches, resolve_short_name
from pylon.pilot.istio.networking import HTTP_PROTOCOLS, ServicePort
from pylon.pilot.istio.resources import Resource
from pylon.pilot.istio.sidecar import UNIX_PREFIX, unix_path
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Service, Snapshot

INTERCEPTION_MODES = ("REDIRECT", "NONE")
TLS_PROTOCOLS = ("TLS", "HTTPS")  # Istio's Protocol.IsTLS: outbound chains by SNI


def is_http(port: ServicePort) -> bool:
    """Istio's HTTP family; an unspecified protocol is treated as TCP (pylon pilot does not sniff protocols)."""
    return port.protocol.upper() in HTTP_PROTOCOLS


class SidecarGenerator:
    def generate(self, proxy: Proxy, snapshot: Snapshot) -> Resources:
        mode = str(proxy.metadata.get("INTERCEPTION_MODE") or "REDIRECT")
        if mode not in INTERCEPTION_MODES:
            raise ValueError(f"INTERCEPTION_MODE {mode!r} is not supported by pylon pilot yet (REDIRECT or NONE)")
        capture = mode == "REDIRECT"
        scope = sidecar_scope(proxy, snapshot)
        services = scoped_services(proxy, snapshot, scope)
        timeout = snapshot.mesh.connect_timeout
        clusters: list[Json] = [blackhole_cluster(snapshot.mesh), original_dst_cluster(PASSTHROUGH, timeout)]
        endpoints: list[Json] = []
        for service in services:
            rule = snapshot.destination_rule(service.hostname, proxy.namespace, service.namespace)
            clusters += _imported(scope, service, outbound_clusters(snapshot, service, rule, for_sidecar=True))
            endpoints += _imported(scope, service, outbound_assignments(snapshot, service, rule))
        listeners, routes = _outbound(proxy, snapshot, scope, services, capture)
        inbound = inbound_ports(proxy, snapshot, scope, capture)
        clusters += [inbound_cluster(port, proxy, snapshot) for port in inbound]
        if capture:
            clusters.append(original_dst_cluster(INBOUND_PASSTHROUGH, timeout, source=INBOUND_SOURCE))
            listeners.append(_virtual_outbound(scope))
        listeners += inbound_listeners(inbound, policies_for(proxy, snapshot), PeerModes(proxy, snapshot), capture)
        return {
            LISTENER: {item["name"]: item for item in listeners},
            ROUTE: {item["name"]: item for item in routes},
            CLUSTER: {item["name"]: item for item in clusters},
            ENDPOINT: {item["cluster_name"]: item for item in endpoints},
            NAME_TABLE: {"": name_table(services)},  # one unnamed table, for the agent's DNS proxy (if it asks)
        }

    def endpoints(self, proxy: Proxy, snapshot: Snapshot, hostnames: frozenset[str]) -> dict[str, Json]:
        """The EDS part of `generate` for the services of `hostnames` alone (what an endpoint change needs:
        SharedGenerations)."""
        out: dict[str, Json] = {}
        scope = sidecar_scope(proxy, snapshot)
        for service in scoped_services(proxy, snapshot, scope, hostnames):
            rule = snapshot.destination_rule(service.hostname, proxy.namespace, service.namespace)
            out.update((item["cluster_name"], item) for item in _imported(scope, service, outbound_assignments(
                snapshot, service, rule)))  # fmt: skip
        return out


def _imported(scope: SidecarScope, service: Service, items: list[Json]) -> list[Json]:
    """The clusters or load assignments (`outbound|<port>|<subset>|<host>`) of the ports the scope imports: the
    shared pieces are built for every port of the service."""
    ports = scope.imported_ports(service)
    if len(ports) == len(service.ports):
        return items
    return [item for item in items if int((item.get("name") or item["cluster_name"]).split("|")[1]) in ports]


# --------------------------------------------------------------------------- outbound


def _outbound(proxy: Proxy, snapshot: Snapshot, scope: SidecarScope, services: list[Service],
              capture: bool) -> tuple[list[Json], list[Json]]:  # fmt: skip
    """The per-port listeners of every egress listener, in order, and the route configurations of their HTTP
    ports (istiod's buildSidecarOutboundListeners; one listener per port, not per service address)."""
    built: dict[tuple[str, int], Json] = {}
    routes: set[str] = set()
    for egress in scope.egress:
        bound = not capture or egress.capture_mode == "NONE" or egress.bind.startswith(UNIX_PREFIX)
        bind = egress.bind or (LOCALHOST if bound else WILDCARD)
        imported = listener_services(services, egress)
        if egress.merges_ports:  # one HTTP listener for all the ports of its services
            assert egress.port is not None
            if imported and (bind, egress.port.number) not in built:
                built[(bind, egress.port.number)] = _http_listener(bind, egress.port.number, egress.route_name, bound,
                                                                   imported)  # fmt: skip
                routes.add(egress.route_name)
            continue
        on_ports = _ports(imported, egress)
        locked = set(built)  # ports made by the listeners before: the catch-all adds nothing to them
        claiming = _claims(mesh_virtual_services(proxy, snapshot, egress))
        for number in sorted(on_ports):
            if (bind, number) in locked:
                continue
            if is_http(on_ports[number][0][1]):
                built[(bind, number)] = _http_listener(bind, number, str(number), bound,
                                                       [service for service, _ in on_ports[number]])  # fmt: skip
                routes.add(str(number))
            else:
                built[(bind, number)] = _tcp_listener(proxy, snapshot, bind, number, on_ports[number], claiming, bound)
    listeners = [built[key] for key in sorted(built, key=lambda k: (k[1], k[0]))]
    return listeners, [_route_configuration(proxy, snapshot, scope, name, services) for name in sorted(routes)]


def _ports(services: list[Service], egress: EgressListener) -> dict[int, list[tuple[Service, ServicePort]]]:
    """Port -> the services on it, with the port as the listener serves it: for a listener with a port, its number
    and its protocol; for the catch-all, every port of its services, an HTTP port's HTTP services only (a TCP
    service on a port that some service serves as HTTP gets no chain: pylon's listeners are per port)."""
    if egress.port is not None:
        number, protocol = egress.port.number, egress.port.protocol
        return {number: [(s, msgspec.structs.replace(p, protocol=protocol)) for s in services for p in s.ports
                         if p.number == number]}  # fmt: skip
    http = {p.number for s in services for p in s.ports if is_http(p)}
    out: dict[int, list[tuple[Service, ServicePort]]] = {}
    for service in services:
        for port in service.ports:
            if is_http(port) or port.number not in http:
                out.setdefault(port.number, []).append((service, port))
    return out


def _http_listener(bind: str, number: int, route_name: str, bound: bool, services: list[Service]) -> Json:
    """An HTTP listener; the DYNAMIC_DNS services among `services` (its routes') put their dynamic forward proxy
    filters just before the router, by hostname (gen/dfp.py)."""
    name = listener_name(bind, number)
    rds = {"rds": {"config_source": ADS_SOURCE, "route_config_name": route_name}}
    forward = [dfp.http_filter(s) for s in sorted(services, key=lambda s: s.hostname) if dfp.is_dynamic_dns(s)]
    return _listener_at(bind, number, [{"filters": [hcm(f"outbound_{name}", rds, last=forward)]}], bound)


def _tcp_listener(proxy: Proxy, snapshot: Snapshot, bind: str, number: int, on_port: list[tuple[Service, ServicePort]],
                  claiming: Callable[[str], list[Resource]], bound: bool) -> Json:  # fmt: skip
    listener = _listener_at(bind, number, _tcp_chains(proxy, snapshot, number, on_port, claiming), bound)
    if any("server_names" in c.get("filter_chain_match", {}) for c in listener["filter_chains"]):
        listener["listener_filters"] = [tls_inspector()]
    return listener


def _listener_at(bind: str, number: int, chains: list[Json], bound: bool) -> Json:
    """`<bind>_<port>` on bind:port, or on the socket of a `unix://` bind."""
    address = {"pipe": {"path": unix_path(bind)}} if bind.startswith(UNIX_PREFIX) else socket_address(bind, number)
    listener: Json = {"name": listener_name(bind, number), "address": address, "traffic_direction": "OUTBOUND",
                      "filter_chains": chains}  # fmt: skip
    if not bound:
        listener["bind_to_port"] = False
    return listener


def _tcp_chains(proxy: Proxy, snapshot: Snapshot, number: int, on_port: list[tuple[Service, ServicePort]],
                claiming: Callable[[str], list[Resource]]) -> list[Json]:  # fmt: skip
    """The chains of a port outside the HTTP family (gen/tcp.py): by SNI per service when the first service's port
    is TLS or HTTPS (each TLS service of the port), else the first service's TCP routes (Istio gives each service
    address a listener of its own; pylon's one listener per port serves the first service, as before)."""

    def contexts(service: Service) -> list[RouteContext]:
        return [RouteContext(proxy=proxy, snapshot=snapshot, vs=vs, listen_port=number, gateways=frozenset({"mesh"}))
                for vs in claiming(service.hostname)]  # fmt: skip

    first, port = on_port[0]
    if port.protocol.upper() in TLS_PROTOCOLS:
        tls_services = [service for service, p in on_port if p.protocol.upper() in TLS_PROTOCOLS]
        return sidecar_tls_chains(contexts, tls_services, number, snapshot, proxy.namespace)
    return sidecar_tcp_chains(contexts(first), first, number, snapshot, proxy.namespace)


def _route_configuration(proxy: Proxy, snapshot: Snapshot, scope: SidecarScope, name: str,
                         services: list[Service]) -> Json:  # fmt: skip
    """RDS `name` (a port, or a socket): the virtual hosts of the HTTP services on the port that its egress
    listener imports (istiod's GetEgressListenerForRDS: the first listener on the port, else the catch-all),
    with its VirtualServices' routes, then the fallback. An HTTP proxy port or a socket has those of every port
    (istiod's mergeAllVirtualHosts: off port 80, a virtual host keeps its `host:port` domains only)."""
    egress = scope.route_listener(name)
    assert egress is not None  # a listener on the port made this route's listener
    claiming = _claims(mesh_virtual_services(proxy, snapshot, egress))
    imported = listener_services(services, egress)
    if not egress.merges_ports:
        vhosts = _port_virtual_hosts(proxy, snapshot, int(name), imported, claiming)
    else:
        vhosts = []
        for port in sorted({p.number for s in imported for p in s.ports if is_http(p)}):
            for vhost in _port_virtual_hosts(proxy, snapshot, port, imported, claiming):
                if port != 80:  # a copy: default virtual hosts are shared pieces
                    vhost = {**vhost, "domains": [d for d in vhost["domains"] if ":" in d]}
                if vhost["domains"]:
                    vhosts.append(vhost)
    vhosts.append(_fallback_virtual_host(scope))
    return {"name": name, "virtual_hosts": vhosts, "validate_clusters": False}


def _port_virtual_hosts(proxy: Proxy, snapshot: Snapshot, port: int, services: list[Service],
                        claiming: Callable[[str], list[Resource]]) -> list[Json]:  # fmt: skip
    """`<host>:<port>` of each of `services` with an HTTP `port`, by hostname."""
    vhosts = []
    on_port = [s for s in services if any(p.number == port and is_http(p) for p in s.ports)]
    for service in sorted(on_port, key=lambda s: s.hostname):
        routes: list[Json] = []
        for vs in claiming(service.hostname):
            ctx = RouteContext(proxy=proxy, snapshot=snapshot, vs=vs, listen_port=port, gateways=frozenset({"mesh"}))
            routes += build_http_routes(ctx)
        if routes:
            vhosts.append(_virtual_host(service, port, routes))
        else:  # most services: no VirtualService, a virtual host that depends on the service and port alone
            vhosts.append(snapshot.pieces.get("default-vhost", (service,), (port,), lambda: _virtual_host(
                service, port, [_default_route(service.hostname, port)])))  # fmt: skip
    return vhosts


def _claims(virtual_services: list[Resource]) -> Callable[[str], list[Resource]]:
    """hostname -> the VirtualServices whose hosts cover it, in their order: exact hosts by lookup, wildcards by
    `matches` (a port's route configuration asks for each of its services: a thousand, against every VirtualService)."""
    exact: dict[str, set[int]] = {}
    wildcards: list[tuple[int, str]] = []
    for index, vs in enumerate(virtual_services):
        for host in vs.spec.hosts:
            pattern = resolve_short_name(host, vs.namespace)
            if pattern.startswith("*"):
                wildcards.append((index, pattern))
            else:
                exact.setdefault(pattern, set()).add(index)

    def claiming(hostname: str) -> list[Resource]:
        found = exact.get(hostname, set()) | {index for index, pattern in wildcards if matches(pattern, hostname)}
        return [virtual_services[index] for index in sorted(found)]

    return claiming


def _virtual_host(service: Service, port: int, routes: list[Json]) -> Json:
    """`<host>:<port>`: the service's names (and addresses) on the port, catch-all routes last."""
    routes = [r for r in routes if not is_catch_all(r)] + [r for r in routes if is_catch_all(r)]
    domains = [service.hostname, f"{service.hostname}:{port}"]
    for address in service.entry.spec.addresses:
        domains += [address, f"{address}:{port}"]
    return {"name": domain_name(service.hostname, port), "domains": domains, "routes": routes,
            "include_request_attempt_count": True}  # fmt: skip


def _default_route(host: str, port: int) -> Json:
    """Istio's route for a service no VirtualService claims: everything to its default cluster."""
    return {
        "name": "default",
        "match": {"prefix": "/"},
        "route": {"cluster": subset_key(host, port), "timeout": "0s", "max_grpc_timeout": "0s",
                  "retry_policy": translate_retry(None)},
        "decorator": {"operation": f"{host}:{port}/*"},
    }  # fmt: skip


def _fallback_virtual_host(scope: SidecarScope) -> Json:
    """`allow_any` (unknown hosts pass through, or go to the egress proxy) or `block_all` (502), Istio's last
    virtual host of every port."""
    if scope.outbound_policy == "ALLOW_ANY":
        return {"name": "allow_any", "domains": ["*"], "include_request_attempt_count": True, "routes": [{
            "name": "allow_any", "match": {"prefix": "/"},
            "route": {"cluster": scope.passthrough_cluster, "timeout": "0s", "max_grpc_timeout": "0s"}}]}  # fmt: skip
    return {"name": "block_all", "domains": ["*"], "include_request_attempt_count": True, "routes": [{
        "name": "block_all", "match": {"prefix": "/"}, "direct_response": {"status": 502}}]}  # fmt: skip


def _virtual_outbound(scope: SidecarScope) -> Json:
    catch_all = scope.passthrough_cluster if scope.outbound_policy == "ALLOW_ANY" else BLACKHOLE
    return {
        "name": "virtualOutbound",
        "address": socket_address(WILDCARD, VIRTUAL_OUTBOUND_PORT),
        "use_original_dst": True,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [
            # connections addressed to 15001 itself would loop back forever
            {"name": "virtualOutbound-blackhole", "filter_chain_match": {"destination_port": VIRTUAL_OUTBOUND_PORT},
             "filters": [tcp_proxy_to(BLACKHOLE)]},
            {"name": "virtualOutbound-catchall-tcp", "filters": [tcp_proxy_to(catch_all)]},
        ],
    }  # fmt: skip
