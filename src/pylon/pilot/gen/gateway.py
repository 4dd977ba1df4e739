"""Config for gateway proxies (`router~…`): listeners on the Gateway servers' ports, routes from bound
VirtualServices, clusters and endpoints for every visible service.

As istiod's gateway builder does: servers of every Gateway selecting the proxy
are merged by (bind, port); each plain-HTTP port becomes one listener
`<bind>_<port>` (bind defaults to 0.0.0.0) whose HTTP connection manager takes
RDS `http.<port>[.<bind>]`; that route configuration holds one virtual host
`<host>:<port>` per host both a server exposes and a bound VirtualService claims,
or a `blackhole:<port>` host that 404s everything when none does. An HTTPS port's
listener has one TLS filter chain per server, matched by SNI (gen/credentials.py
terminates it), each with its own RDS `https.<port>.<portName>.<gateway>.<ns>`. The
AuthorizationPolicies selecting the gateway become RBAC filters ahead of the
others (gen/authz.py). Without a
Kubernetes Service in front of the gateway, a server's port number is the port
listened on (Istio's behaviour when no Service matches the gateway's pod).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pylon.pilot.gen.authz import SelectedPolicies, http_rbac_filters, network_rbac_filters, policies_for
from pylon.pilot.gen.clusters import blackhole_cluster, outbound_clusters, sni_dnat_clusters
from pylon.pilot.gen.endpoints import outbound_assignments
from pylon.pilot.gen.credentials import ads_secret_names, gateway_secrets, server_transport_socket
from pylon.pilot.gen.names import domain_name, gateway_http_route_name, gateway_https_route_name, listener_name
from pylon.pilot.gen.routes import RouteContext, build_http_routes, is_catch_all
from pylon.pilot.gen.tcp import (auto_passthrough_chains, bound_contexts, claimable_hosts, gateway_passthrough_chains,
                                 gateway_tcp_chain)  # fmt: skip
from pylon.pilot.gen.types import (ADS_SOURCE, CLUSTER, ENDPOINT, HCM, LISTENER, ROUTE, ROUTER, SECRET,
                                   TLS_INSPECTOR, Json, Resources, route_configured_filters)  # fmt: skip
from pylon.pilot.hosts import intersection
from pylon.pilot.istio.networking import Server
from pylon.pilot.istio.resources import Resource
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Service, Snapshot

log = logging.getLogger("pylon.pilot.gen")

WILDCARD = "0.0.0.0"
HCM_FILTER = "envoy.filters.network.http_connection_manager"


@dataclass
class _PortServers:
    """Servers sharing one filter chain kind on a (bind, port): every plain-HTTP server (`http`, one route
    configuration), one HTTPS server ending TLS (`https`, its own chain and route configuration), one TLS server
    passed through or ended with TCP behind it (`tls`), or the one plain TCP server (`tcp`)."""

    bind: str
    port: int
    kind: str
    route_name: str = ""
    servers: list[tuple[Resource, Server]] = field(default_factory=list)

    @property
    def server(self) -> Server:
        return self.servers[0][1]


class GatewayGenerator:
    def generate(self, proxy: Proxy, snapshot: Snapshot) -> Resources:
        ports = _merge_servers(snapshot.gateways_for(proxy))
        policies = policies_for(proxy, snapshot)
        services = snapshot.visible_services(proxy.namespace)
        listeners = [listener for (bind, port), groups in ports.items()
                     if (listener := _listener(proxy, snapshot, bind, port, groups, policies, services)) is not None]
        routes = [_route_configuration(proxy, snapshot, group) for groups in ports.values() for group in groups
                  if group.route_name]  # fmt: skip
        sni_dnat = _has_auto_passthrough(ports)
        clusters: list[Json] = [blackhole_cluster(snapshot.mesh)]
        endpoints: list[Json] = []
        for service in services:
            rule = snapshot.destination_rule(service.hostname, proxy.namespace, service.namespace)
            clusters += outbound_clusters(snapshot, service, rule, for_sidecar=False)
            endpoints += outbound_assignments(snapshot, service, rule)
            if sni_dnat and service.entry.spec.location == "MESH_INTERNAL":
                clusters += sni_dnat_clusters(snapshot, service, rule)
                endpoints += outbound_assignments(snapshot, service, rule, sni_dnat=True)
        return {
            LISTENER: {item["name"]: item for item in listeners},
            ROUTE: {item["name"]: item for item in routes},
            CLUSTER: {item["name"]: item for item in clusters},
            ENDPOINT: {item["cluster_name"]: item for item in endpoints},
            SECRET: gateway_secrets(proxy, snapshot, ads_secret_names(listeners, clusters)),
        }

    def endpoints(self, proxy: Proxy, snapshot: Snapshot, hostnames: frozenset[str]) -> dict[str, Json]:
        """The EDS part of `generate` for the services of `hostnames` alone (what an endpoint change needs:
        SharedGenerations)."""
        sni_dnat = _has_auto_passthrough(_merge_servers(snapshot.gateways_for(proxy)))
        out: dict[str, Json] = {}
        for service in snapshot.visible_services(proxy.namespace, hostnames):
            rule = snapshot.destination_rule(service.hostname, proxy.namespace, service.namespace)
            out.update((item["cluster_name"], item) for item in outbound_assignments(snapshot, service, rule))
            if sni_dnat and service.entry.spec.location == "MESH_INTERNAL":
                out.update((item["cluster_name"], item)
                           for item in outbound_assignments(snapshot, service, rule, sni_dnat=True))  # fmt: skip
        return out


def _has_auto_passthrough(ports: dict[tuple[str, int], list[_PortServers]]) -> bool:
    """Whether an AUTO_PASSTHROUGH server is served: then the gateway gets the SNI-DNAT clusters (istiod's
    ContainsAutoPassthroughGateways)."""
    return any(g.kind == "tls" and g.server.tls is not None and g.server.tls.mode == "AUTO_PASSTHROUGH"
               for groups in ports.values() for g in groups)  # fmt: skip


def _merge_servers(gateways: list[Resource]) -> dict[tuple[str, int], list[_PortServers]]:
    """Per (bind, port): the plain-HTTP servers merged into one group, the one TCP server, or one group per TLS
    server (HTTPS ending TLS, or passed through, or TLS ended with TCP behind it).

    As istiod's MergeGateways: a port serves plain text (HTTP servers, or a single TCP server) or TLS, never both
    (the servers of the other kind that come later are dropped with a warning), and a TLS server whose hosts
    another TLS server on the port already has is dropped too (two filter chains cannot match the same names).
    """
    merged: dict[tuple[str, int], list[_PortServers]] = {}
    sni_seen: dict[tuple[str, int], set[str]] = {}
    for gateway in sorted(gateways, key=lambda g: (g.namespace, g.name)):
        for server in gateway.spec.servers:
            key = (server.bind, server.port.number)
            groups = merged.setdefault(key, [])
            kind = server.kind
            tls_kinds = ("https", "tls")
            if groups and not ((groups[0].kind == kind == "http") or (groups[0].kind in tls_kinds and kind in tls_kinds)):
                log.warning("gateway %s/%s: server on port %d (%s) conflicts with the %s server(s) already on that "
                            "port; dropped", gateway.namespace, gateway.name, server.port.number, server.port.protocol,
                            groups[0].server.port.protocol)  # fmt: skip
                continue
            if kind == "http":
                if not groups:
                    groups.append(_PortServers(server.bind, server.port.number, kind,
                                               gateway_http_route_name(server.port.number, server.bind)))
                groups[0].servers.append((gateway, server))
                continue
            if kind == "tcp":
                groups.append(_PortServers(server.bind, server.port.number, kind, servers=[(gateway, server)]))
                continue
            hosts = set(sni_hosts(server))
            seen = sni_seen.setdefault(key, set())
            if hosts & seen:
                log.warning("gateway %s/%s: TLS server on port %d repeats host(s) %s of another server on that "
                            "port; dropped", gateway.namespace, gateway.name, server.port.number,
                            ", ".join(sorted(hosts & seen)))  # fmt: skip
                continue
            seen |= hosts
            route = ""
            if kind == "https":
                route = gateway_https_route_name(server.port.number, server.port.name, gateway.name,
                                                 gateway.namespace, server.bind)  # fmt: skip
            groups.append(_PortServers(server.bind, server.port.number, kind, route, [(gateway, server)]))
    return {key: merged[key] for key in sorted(merged, key=lambda k: (k[1], k[0])) if merged[key]}


def sni_hosts(server: Server) -> list[str]:
    """The server names a TLS server's filter chain matches: its hosts without namespace, sorted, once each."""
    return sorted({host.rpartition("/")[2] for host in server.hosts})


def _hcm(route_name: str, stat_prefix: str, rbac: list[Json]) -> Json:
    return {
        "@type": HCM,
        "stat_prefix": stat_prefix,
        "rds": {"config_source": ADS_SOURCE, "route_config_name": route_name},
        "http_filters": [
            *rbac,
            *route_configured_filters(),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
        "use_remote_address": True,
        "server_name": "istio-envoy",
        "normalize_path": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"subject": True, "cert": True, "uri": True, "dns": True},
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "http_protocol_options": {},
    }


def _listener(proxy: Proxy, snapshot: Snapshot, bind: str, port: int, groups: list[_PortServers],
              policies: SelectedPolicies, services: list[Service]) -> Json | None:  # fmt: skip
    """The listener of one (bind, port), or None when no server on it has a filter chain (a TCP or TLS server
    without a matching route: istiod warns and builds none)."""
    address = bind or WILDCARD
    name = listener_name(address, port)
    listener: Json = {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "traffic_direction": "OUTBOUND",
    }
    if groups[0].kind == "http":
        hcm = _hcm(groups[0].route_name, f"outbound_{name}", http_rbac_filters(policies))
        listener["filter_chains"] = [{"filters": [{"name": HCM_FILTER, "typed_config": hcm}]}]
        return listener
    chains = []
    known_sni: set[str] = set()
    for group in groups:
        gateway, server = group.servers[0]
        assert group.kind == "tcp" or server.tls is not None
        if group.kind == "https":
            assert server.tls is not None
            chain: Json = {"filters": [{"name": HCM_FILTER, "typed_config": _hcm(
                group.route_name, server.name or f"outbound_{name}", http_rbac_filters(policies))}],
                "transport_socket": server_transport_socket(server.tls)}  # fmt: skip
            names = sni_hosts(server)
            if "*" not in names:
                chain["filter_chain_match"] = {"server_names": names}
            chains.append(chain)
        elif server.tls is not None and server.tls.mode == "AUTO_PASSTHROUGH":
            chains += auto_passthrough_chains(snapshot, proxy.namespace, services, server)
        else:
            contexts = bound_contexts(proxy, snapshot, gateway, server)
            found = (gateway_passthrough_chains(contexts, server, known_sni) if server.passthrough
                     else [c for c in [gateway_tcp_chain(contexts, server)] if c is not None])  # fmt: skip
            if not found:
                log.warning("gateway %s/%s: no VirtualService %s route for the %s server on port %d: no filter chain",
                            gateway.namespace, gateway.name, "tls" if server.passthrough else "tcp",
                            server.port.protocol, port)  # fmt: skip
            rbac = network_rbac_filters(policies)
            chains += [{**c, "filters": [*rbac, *c["filters"]]} for c in found]
    if not chains:
        return None
    # A chain without a match takes every connection: Istio keeps such chains last.
    listener["filter_chains"] = sorted(chains, key=lambda c: "filter_chain_match" not in c)
    if groups[0].kind != "tcp":  # every TLS chain has SNI hosts or ALPN to read (istiod: `*` hosts too)
        listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector",
                                         "typed_config": {"@type": TLS_INSPECTOR}}]  # fmt: skip
    return listener


def _route_configuration(proxy: Proxy, snapshot: Snapshot, ports: _PortServers) -> Json:
    vhosts: dict[str, Json] = {}
    for gateway, server in ports.servers:
        gateway_name = f"{gateway.namespace}/{gateway.name}"
        redirect = server.tls is not None and server.tls.https_redirect
        for vs in snapshot.virtual_services_for_gateway(gateway_name, proxy.namespace):
            hosts = intersection(claimable_hosts(server, gateway, vs), vs.spec.hosts)
            if not hosts:
                continue
            ctx = RouteContext(proxy=proxy, snapshot=snapshot, vs=vs, listen_port=ports.port,
                               gateways=frozenset({gateway_name}))  # fmt: skip
            routes = build_http_routes(ctx)
            if not routes:
                continue
            for host in hosts:
                vhost = vhosts.setdefault(host, _virtual_host(host, ports.port))
                vhost["routes"] += routes
                if redirect:
                    vhost["require_tls"] = "ALL"
        if redirect:
            for host in server.hosts:
                bare = host.rpartition("/")[2]
                vhosts.setdefault(bare, _virtual_host(bare, ports.port))["require_tls"] = "ALL"
    if not vhosts:
        virtual_hosts = [{"name": domain_name("blackhole", ports.port), "domains": ["*"], "routes": []}]
    else:
        virtual_hosts = [_sorted_routes(vhosts[host]) for host in sorted(vhosts, key=lambda h: domain_name(h, ports.port))]
    return {"name": ports.route_name, "virtual_hosts": virtual_hosts, "validate_clusters": False}


def _virtual_host(host: str, port: int) -> Json:
    domains = [host] if host == "*" else [host, f"{host}:*"]
    return {"name": domain_name(host, port), "domains": domains, "routes": [], "include_request_attempt_count": True}


def _sorted_routes(vhost: Json) -> Json:
    """Istio moves catch-all routes after the others, keeping the order within each group."""
    routes = vhost["routes"]
    vhost["routes"] = [r for r in routes if not is_catch_all(r)] + [r for r in routes if is_catch_all(r)]
    return vhost
