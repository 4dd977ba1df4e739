"""VirtualService `tcp` and `tls` routes as tcp_proxy filter chains, for gateways and sidecars (istiod's
pilot/pkg/networking/core/networkfilter.go, tls.go and gateway.go, in their shapes).

A route's destinations become one tcp_proxy: a single destination goes to its cluster with the
cluster's name as stat prefix, several to `weighted_clusters` (those of weight > 0) with stat
prefix `<vs name>.<vs namespace>`. The destination's DestinationRule (its top-level
connection pool) gives `idle_timeout` and `max_downstream_connection_duration`, and
`consistentHash.useSourceIp` a source-IP hash. A match's `port`, `gateways`,
`sourceLabels` and `sourceNamespace` are decided here, for the proxy being generated
(gateways read port and gateways only, as istiod's l4SingleMatch); `sniHosts` and
`destinationSubnets` go to the filter chain match (server names, prefix ranges).

Gateways: a TCP server takes the first bound VirtualService's first `tcp` route that
matches (one chain, no match); a TLS server that terminates (SIMPLE, MUTUAL, ...) the
same, behind its TLS context and an SNI match on its hosts; a PASSTHROUGH server one
chain per matching `tls` route match, by SNI, without TLS (an SNI another chain on the
port already has is dropped with a warning, as istiod); AUTO_PASSTHROUGH one chain per
port and subset of every mesh-internal service under the server's hosts, by the SNI
`outbound_.<port>_.<subset>_.<host>` Istio's clients send and Istio's mTLS ALPNs, to an
SNI-DNAT cluster of that name (gen/clusters.py `sni_dnat_clusters`).

Sidecars: a TLS or HTTPS port gets, per service on it, the chains of its VirtualServices'
`tls` routes, else one to the service by its name as SNI; any other TCP port the chains
of its service's `tcp` routes (a route without match, or one matching without
destination subnets, ends the list), else one to the service.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

from pylon.pilot.gen import dfp
from pylon.pilot.gen.credentials import server_transport_socket
from pylon.pilot.gen.names import sni_dnat_key, subset_key
from pylon.pilot.gen.routes import RouteContext, destination_cluster
from pylon.pilot.gen.types import TCP_PROXY, Json
from pylon.pilot.hosts import intersection, matches, resolve_short_name
from pylon.pilot.istio.common import format_duration
from pylon.pilot.istio.networking import L4MatchAttributes, RouteDestination, Server, TLSMatchAttributes
from pylon.pilot.istio.resources import Resource
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Service, Snapshot

log = logging.getLogger("pylon.pilot.gen")

TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
# What Istio's mTLS clients offer (listener.go allIstioMtlsALPNs): AUTO_PASSTHROUGH chains match them.
ISTIO_MTLS_ALPNS = ["istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"]
# The ALPN of a TLS (not HTTPS) gateway server ending ISTIO_MUTUAL: metadata exchange first (listener.go).
ISTIO_MUTUAL_TCP_ALPN = ["istio-peer-exchange", "h2", "http/1.1"]


# --------------------------------------------------------------------------- the tcp_proxy of a route


def route_filters(ctx: RouteContext, routes: list[RouteDestination]) -> list[Json]:
    """istiod's buildOutboundNetworkFilters: the tcp_proxy of one route's destinations."""
    first = routes[0].destination
    host = resolve_short_name(first.host, ctx.vs.namespace)
    if len(routes) == 1:
        cluster = destination_cluster(ctx, first)
        return [tcp_proxy(ctx.snapshot, ctx.proxy.namespace, host, cluster, cluster, first.subset)]
    weighted = [{"name": destination_cluster(ctx, r.destination), "weight": r.weight} for r in routes if r.weight > 0]
    return [tcp_proxy(ctx.snapshot, ctx.proxy.namespace, host, f"{ctx.vs.name}.{ctx.vs.namespace}", weighted, "")]


def tcp_proxy(snapshot: Snapshot, proxy_namespace: str, host: str, stat_prefix: str, cluster: str | list[Json],
              subset: str) -> Json:  # fmt: skip
    """A tcp_proxy to `cluster` (a name, or weighted clusters), with the connection settings of `host`'s
    DestinationRule as istiod reads them (its top-level policy; the subset's load balancer for the hash)."""
    config: Json = {"@type": TCP_PROXY, "stat_prefix": stat_prefix}
    if isinstance(cluster, str):
        config["cluster"] = cluster
    else:
        config["weighted_clusters"] = {"clusters": cluster}
    service = snapshot.service(host, proxy_namespace, proxy_namespace)
    rule = snapshot.destination_rule(host, proxy_namespace, service.namespace) if service is not None else None
    policy = rule.spec.traffic_policy if rule is not None else None
    tcp = policy.connection_pool.tcp if policy is not None and policy.connection_pool is not None else None
    if tcp is not None and tcp.idle_timeout is not None:
        config["idle_timeout"] = format_duration(tcp.idle_timeout)
    if tcp is not None and tcp.max_connection_duration is not None:
        config["max_downstream_connection_duration"] = format_duration(tcp.max_connection_duration)
    if rule is not None and _use_source_ip(rule, subset):
        config["hash_policy"] = [{"source_ip": {}}]
    return {"name": TCP_PROXY_FILTER, "typed_config": config}


def _use_source_ip(rule: Resource, subset: str) -> bool:
    """istiod's maybeSetHashPolicy: the rule's consistentHash.useSourceIp, unless the subset has a load balancer."""
    policy = rule.spec.traffic_policy
    lb = policy.load_balancer if policy is not None else None
    use = bool(lb is not None and lb.consistent_hash is not None and lb.consistent_hash.use_source_ip)
    for candidate in rule.spec.subsets:
        if candidate.name == subset:
            own = candidate.traffic_policy.load_balancer if candidate.traffic_policy is not None else None
            if own is not None:
                use = bool(own.consistent_hash is not None and own.consistent_hash.use_source_ip)
            break
    return use


def _chain(filters: list[Json], sni: list[str] | None = None, subnets: list[str] | None = None,
           alpn: list[str] | None = None) -> Json:  # fmt: skip
    """A filter chain and its match as istiod's toFilterChainMatch writes it (none when it matches all)."""
    match: Json = {}
    if sni and "*" not in sni:
        match["server_names"] = sorted(sni)
    if subnets:
        match["prefix_ranges"] = [_cidr(s) for s in sorted(subnets)]
    if alpn:
        match["application_protocols"] = list(alpn)
    chain: Json = {"filters": filters}
    if match:
        chain["filter_chain_match"] = match
    return chain


def _cidr(subnet: str) -> Json:
    network = ipaddress.ip_network(subnet, strict=False)
    return {"address_prefix": str(network.network_address), "prefix_len": network.prefixlen}


# --------------------------------------------------------------------------- gateways


def claimable_hosts(server: Server, gateway: Resource, vs: Resource) -> list[str]:
    """The server's hosts that a VirtualService in `vs`'s namespace may claim (`ns/host`, `./host`, `*/host`)."""
    out = []
    for host in server.hosts:
        namespace, _, name = host.rpartition("/")
        if namespace in ("", "*") or (namespace == "." and vs.namespace == gateway.namespace) or namespace == vs.namespace:
            out.append(name)
    return out


def _gateway_match(match: L4MatchAttributes | TLSMatchAttributes, ctx: RouteContext) -> bool:
    """istiod's l4SingleMatch: the server's port and the gateway."""
    if match.port and match.port != ctx.listen_port:
        return False
    return not match.gateways or any(_qualify(g, ctx.vs.namespace) in ctx.gateways for g in match.gateways)


def _qualify(gateway: str, namespace: str) -> str:
    return gateway if "/" in gateway or gateway == "mesh" else f"{namespace}/{gateway}"


def bound_contexts(proxy: Proxy, snapshot: Snapshot, gateway: Resource, server: Server) -> list[RouteContext]:
    """A route context per VirtualService bound to the gateway that claims one of the server's hosts (istiod's
    VirtualServicesForGateway + pickMatchingGatewayHosts)."""
    name = f"{gateway.namespace}/{gateway.name}"
    out = []
    for vs in snapshot.virtual_services_for_gateway(name, proxy.namespace):
        if intersection(claimable_hosts(server, gateway, vs), vs.spec.hosts):
            out.append(RouteContext(proxy=proxy, snapshot=snapshot, vs=vs, listen_port=server.port.number,
                                    gateways=frozenset({name})))  # fmt: skip
    return out


def gateway_tcp_chain(contexts: list[RouteContext], server: Server) -> Json | None:
    """The one chain of a TCP server, or of a TLS server ending TLS: the first matching `tcp` route's tcp_proxy
    (behind the server's TLS and an SNI match on its hosts when it has TLS); None without one (istiod warns)."""
    for ctx in contexts:
        for tcp in ctx.vs.spec.tcp:
            if not tcp.match or any(_gateway_match(m, ctx) for m in tcp.match):
                filters = route_filters(ctx, tcp.route)
                if server.tls is None:
                    return _chain(filters)
                alpn = ISTIO_MUTUAL_TCP_ALPN if server.tls.mode == "ISTIO_MUTUAL" else None
                chain = _chain(filters, sni=sorted({h.rpartition("/")[2] for h in server.hosts}))
                chain["transport_socket"] = server_transport_socket(server.tls, alpn)
                return chain
    return None


def gateway_passthrough_chains(contexts: list[RouteContext], server: Server, known_sni: set[str]) -> list[Json]:
    """A PASSTHROUGH server's chains: one per matching `tls` route match, by its SNI hosts, no TLS context."""
    chains = []
    for ctx in contexts:
        for i, tls in enumerate(ctx.vs.spec.tls):
            for match in tls.match:
                if not _gateway_match(match, ctx):
                    continue
                duplicates = sorted(set(match.sni_hosts) & known_sni)
                if duplicates:
                    log.warning("skipping VirtualService %s rule #%d on server port %d of gateway %s, duplicate SNI "
                                "host names: %s", ctx.vs.name, i, server.port.number, ", ".join(sorted(ctx.gateways)),
                                ", ".join(duplicates))  # fmt: skip
                    continue
                known_sni.update(match.sni_hosts)
                chains.append(_chain(route_filters(ctx, tls.route), sni=list(match.sni_hosts)))
    return chains


def auto_passthrough_chains(snapshot: Snapshot, proxy_namespace: str, services: list[Service],
                            server: Server) -> list[Json]:  # fmt: skip
    """An AUTO_PASSTHROUGH server's chains: every port and subset of the mesh-internal services under its hosts,
    matched by the SNI-DNAT cluster name (what a sidecar's ISTIO_MUTUAL SNI is) and Istio's mTLS ALPNs."""
    hosts = [h.rpartition("/")[2] for h in server.hosts]
    chains = []
    for service in auto_passthrough_services(services, hosts):
        rule = snapshot.destination_rule(service.hostname, proxy_namespace, service.namespace)
        for port in service.ports:
            for subset in ["", *(s.name for s in rule.spec.subsets)] if rule is not None else [""]:
                name = sni_dnat_key(service.hostname, port.number, subset)
                filters = [tcp_proxy(snapshot, proxy_namespace, service.hostname, name, name, subset)]
                chains.append(_chain(filters, sni=[name], alpn=ISTIO_MTLS_ALPNS))
    return chains


def auto_passthrough_services(services: list[Service], hosts: list[str]) -> list[Service]:
    """The services an AUTO_PASSTHROUGH server with `hosts` reaches: mesh-internal, named within one of them."""
    return [s for s in services
            if s.entry.spec.location == "MESH_INTERNAL" and any(matches(h, s.hostname) for h in hosts)]


# --------------------------------------------------------------------------- sidecars


def _sidecar_match(match: L4MatchAttributes | TLSMatchAttributes, ctx: RouteContext) -> bool:
    """istiod's matchTCP / matchTLS: gateways (`mesh`), source labels, port and source namespace."""
    if match.gateways and not any(_qualify(g, ctx.vs.namespace) in ctx.gateways for g in match.gateways):
        return False
    if not all(ctx.proxy.labels.get(k) == v for k, v in match.source_labels.items()):
        return False
    if match.port and match.port != ctx.listen_port:
        return False
    return not match.source_namespace or match.source_namespace == ctx.proxy.namespace


def sidecar_tls_chains(contexts: Callable[[Service], list[RouteContext]], services: list[Service], port: int,
                       snapshot: Snapshot, proxy_namespace: str) -> list[Json]:  # fmt: skip
    """The chains of a TLS or HTTPS port: per service, its VirtualServices' `tls` routes by SNI (and destination
    subnets), else the service itself by its name; a chain whose SNI and subnets an earlier one has is left out
    (Envoy refuses two chains with one match)."""
    chains: list[Json] = []
    seen: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()

    def add(chain: Json, sni: list[str], subnets: list[str]) -> None:
        key = (tuple(sorted(sni)), tuple(sorted(subnets)))
        if key not in seen:
            seen.add(key)
            chains.append(chain)

    for service in services:
        routed = False
        for ctx in contexts(service):
            for tls in ctx.vs.spec.tls:
                for match in tls.match:
                    if _sidecar_match(match, ctx):
                        routed = True
                        subnets = list(match.destination_subnets)
                        add(_chain(route_filters(ctx, tls.route), sni=list(match.sni_hosts), subnets=subnets),
                            list(match.sni_hosts), subnets)  # fmt: skip
        if not routed:
            add(_default_chain(service, port, snapshot, proxy_namespace, sni=[service.hostname]), [service.hostname], [])
    return chains


def sidecar_tcp_chains(contexts: list[RouteContext], service: Service, port: int, snapshot: Snapshot,
                       proxy_namespace: str) -> list[Json]:  # fmt: skip
    """The chains of a plain TCP port: its service's VirtualServices' `tcp` routes in order, up to the first that
    matches any destination (the last chain), then the service itself if none did."""
    chains: list[Json] = []
    for ctx in contexts:
        for tcp in ctx.vs.spec.tcp:
            if not tcp.match:
                return [*chains, _chain(route_filters(ctx, tcp.route))]
            subnets: list[str] = []
            for match in tcp.match:
                if _sidecar_match(match, ctx):
                    if not match.destination_subnets:
                        return [*chains, _chain(route_filters(ctx, tcp.route))]
                    subnets += match.destination_subnets
            if subnets:
                chains.append(_chain(route_filters(ctx, tcp.route), subnets=subnets))
    return [*chains, _default_chain(service, port, snapshot, proxy_namespace)]


def _default_chain(service: Service, port: int, snapshot: Snapshot, proxy_namespace: str,
                   sni: list[str] | None = None) -> Json:  # fmt: skip
    """To the service's own cluster on the port (its only port when it has one, as istiod); a DYNAMIC_DNS service's
    connections resolve their SNI first (gen/dfp.py, on the listener's port as istiod's buildCompleteNetworkFilters)."""
    number = service.ports[0].number if len(service.ports) == 1 else port
    cluster = subset_key(service.hostname, number)
    filters = [tcp_proxy(snapshot, proxy_namespace, service.hostname, cluster, cluster, "")]
    if dfp.is_dynamic_dns(service):
        filters.insert(0, dfp.sni_filter(service, port))
    return _chain(filters, sni=sni)
