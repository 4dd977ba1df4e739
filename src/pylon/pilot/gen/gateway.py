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

from pylon.pilot.gen.authz import http_rbac_filters, policies_for
from pylon.pilot.gen.clusters import blackhole_cluster, outbound_clusters
from pylon.pilot.gen.endpoints import outbound_assignments
from pylon.pilot.gen.credentials import ads_secret_names, gateway_secrets, server_transport_socket
from pylon.pilot.gen.names import domain_name, gateway_http_route_name, gateway_https_route_name, listener_name
from pylon.pilot.gen.routes import RouteContext, build_http_routes, is_catch_all
from pylon.pilot.gen.types import (ADS_SOURCE, CLUSTER, ENDPOINT, FAULT, HCM, LISTENER, ROUTE, ROUTER, SECRET,
                                   TLS_INSPECTOR, Json, Resources)  # fmt: skip
from pylon.pilot.hosts import intersection
from pylon.pilot.istio.networking import Server
from pylon.pilot.istio.resources import Resource
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Snapshot

log = logging.getLogger("pylon.pilot.gen")

WILDCARD = "0.0.0.0"
HCM_FILTER = "envoy.filters.network.http_connection_manager"


@dataclass
class _PortServers:
    """Servers sharing one listener route configuration: every plain-HTTP server of a (bind, port), or one
    HTTPS server (its own filter chain and route configuration, `tls` set)."""

    bind: str
    port: int
    route_name: str
    servers: list[tuple[Resource, Server]] = field(default_factory=list)
    tls: Server | None = None


class GatewayGenerator:
    def generate(self, proxy: Proxy, snapshot: Snapshot) -> Resources:
        ports = _merge_servers(snapshot.gateways_for(proxy))
        rbac = http_rbac_filters(policies_for(proxy, snapshot))
        listeners = [_listener(bind, port, groups, rbac) for (bind, port), groups in ports.items()]
        routes = [_route_configuration(proxy, snapshot, group) for groups in ports.values() for group in groups]
        clusters: list[Json] = [blackhole_cluster(snapshot.mesh)]
        endpoints: list[Json] = []
        for service in snapshot.visible_services(proxy.namespace):
            rule = snapshot.destination_rule(service.hostname, proxy.namespace, service.namespace)
            clusters += outbound_clusters(snapshot, service, rule, for_sidecar=False)
            endpoints += outbound_assignments(snapshot, service, rule)
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
        out: dict[str, Json] = {}
        for service in snapshot.visible_services(proxy.namespace, hostnames):
            rule = snapshot.destination_rule(service.hostname, proxy.namespace, service.namespace)
            out.update((item["cluster_name"], item) for item in outbound_assignments(snapshot, service, rule))
        return out


def _merge_servers(gateways: list[Resource]) -> dict[tuple[str, int], list[_PortServers]]:
    """Per (bind, port): the plain-HTTP servers merged into one group, or one group per HTTPS server.

    As istiod's MergeGateways: a port serves plain HTTP or TLS, never both (the servers of the other kind
    that come later are dropped with a warning), and an HTTPS server whose SNI hosts another server on the
    port already has is dropped too (two filter chains cannot match the same names).
    """
    merged: dict[tuple[str, int], list[_PortServers]] = {}
    sni_seen: dict[tuple[str, int], set[str]] = {}
    for gateway in sorted(gateways, key=lambda g: (g.namespace, g.name)):
        for server in gateway.spec.servers:
            key = (server.bind, server.port.number)
            groups = merged.setdefault(key, [])
            if groups and (groups[0].tls is not None) != server.terminates_tls:
                log.warning("gateway %s/%s: server on port %d (%s) conflicts with the %s servers already on that "
                            "port; dropped", gateway.namespace, gateway.name, server.port.number, server.port.protocol,
                            "HTTPS" if groups[0].tls is not None else "plain HTTP")  # fmt: skip
                continue
            if not server.terminates_tls:
                if not groups:
                    groups.append(_PortServers(server.bind, server.port.number,
                                               gateway_http_route_name(server.port.number, server.bind)))
                groups[0].servers.append((gateway, server))
                continue
            hosts = set(sni_hosts(server))
            seen = sni_seen.setdefault(key, set())
            if hosts & seen:
                log.warning("gateway %s/%s: HTTPS server on port %d repeats host(s) %s of another server on that "
                            "port; dropped", gateway.namespace, gateway.name, server.port.number,
                            ", ".join(sorted(hosts & seen)))  # fmt: skip
                continue
            seen |= hosts
            route = gateway_https_route_name(server.port.number, server.port.name, gateway.name, gateway.namespace,
                                             server.bind)  # fmt: skip
            groups.append(_PortServers(server.bind, server.port.number, route, [(gateway, server)], tls=server))
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
            {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT}},
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


def _listener(bind: str, port: int, groups: list[_PortServers], rbac: list[Json]) -> Json:
    address = bind or WILDCARD
    name = listener_name(address, port)
    listener: Json = {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "traffic_direction": "OUTBOUND",
    }
    if groups[0].tls is None:
        hcm = _hcm(groups[0].route_name, f"outbound_{name}", rbac)
        listener["filter_chains"] = [{"filters": [{"name": HCM_FILTER, "typed_config": hcm}]}]
        return listener
    chains = []
    for group in groups:
        server = group.tls
        assert server is not None and server.tls is not None
        chain: Json = {"filters": [{"name": HCM_FILTER,
                                    "typed_config": _hcm(group.route_name, server.name or f"outbound_{name}", rbac)}],
                       "transport_socket": server_transport_socket(server.tls)}  # fmt: skip
        names = sni_hosts(server)
        if "*" not in names:
            chain["filter_chain_match"] = {"server_names": names}
        chains.append(chain)
    # A chain without a match takes every connection: Istio keeps such chains last.
    listener["filter_chains"] = sorted(chains, key=lambda c: "filter_chain_match" not in c)
    listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector",
                                     "typed_config": {"@type": TLS_INSPECTOR}}]  # fmt: skip
    return listener


def _route_configuration(proxy: Proxy, snapshot: Snapshot, ports: _PortServers) -> Json:
    vhosts: dict[str, Json] = {}
    for gateway, server in ports.servers:
        gateway_name = f"{gateway.namespace}/{gateway.name}"
        redirect = server.tls is not None and server.tls.https_redirect
        for vs in snapshot.virtual_services_for_gateway(gateway_name, proxy.namespace):
            hosts = intersection(_server_hosts(server, gateway, vs), vs.spec.hosts)
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


def _server_hosts(server: Server, gateway: Resource, vs: Resource) -> list[str]:
    """The server's hosts that a VirtualService in `vs`'s namespace may claim (`ns/host`, `./host`, `*/host`)."""
    out = []
    for host in server.hosts:
        namespace, _, name = host.rpartition("/")
        if namespace in ("", "*") or (namespace == "." and vs.namespace == gateway.namespace) or namespace == vs.namespace:
            out.append(name)
    return out


def _virtual_host(host: str, port: int) -> Json:
    domains = [host] if host == "*" else [host, f"{host}:*"]
    return {"name": domain_name(host, port), "domains": domains, "routes": [], "include_request_attempt_count": True}


def _sorted_routes(vhost: Json) -> Json:
    """Istio moves catch-all routes after the others, keeping the order within each group."""
    routes = vhost["routes"]
    vhost["routes"] = [r for r in routes if not is_catch_all(r)] + [r for r in routes if is_catch_all(r)]
    return vhost
