"""Config for gateway proxies (`router~…`): listeners on the Gateway servers' ports, routes from bound
VirtualServices, clusters and endpoints for every visible service.

As istiod's gateway builder does: servers of every Gateway selecting the proxy
are merged by (bind, port); each plain-HTTP port becomes one listener
`<bind>_<port>` (bind defaults to 0.0.0.0) whose HTTP connection manager takes
RDS `http.<port>[.<bind>]`; that route configuration holds one virtual host
`<host>:<port>` per host both a server exposes and a bound VirtualService claims,
or a `blackhole:<port>` host that 404s everything when none does. The
AuthorizationPolicies selecting the gateway become RBAC filters ahead of the
others (gen/authz.py). Without a
Kubernetes Service in front of the gateway, a server's port number is the port
listened on (Istio's behaviour when no Service matches the gateway's pod).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pylon.pilot.gen.authz import http_rbac_filters, policies_for
from pylon.pilot.gen.clusters import blackhole_cluster, build_clusters
from pylon.pilot.gen.endpoints import build_load_assignments
from pylon.pilot.gen.names import domain_name, gateway_http_route_name, listener_name
from pylon.pilot.gen.routes import RouteContext, build_http_routes, is_catch_all
from pylon.pilot.gen.types import ADS_SOURCE, CLUSTER, ENDPOINT, FAULT, HCM, LISTENER, ROUTE, ROUTER, Json, Resources
from pylon.pilot.hosts import intersection
from pylon.pilot.istio.networking import Server
from pylon.pilot.istio.resources import Resource
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Snapshot

WILDCARD = "0.0.0.0"


@dataclass
class _PortServers:
    """The servers of all selected Gateways that share one (bind, port)."""

    bind: str
    port: int
    servers: list[tuple[Resource, Server]] = field(default_factory=list)

    @property
    def route_name(self) -> str:
        return gateway_http_route_name(self.port, self.bind)


class GatewayGenerator:
    def generate(self, proxy: Proxy, snapshot: Snapshot) -> Resources:
        ports = _merge_servers(snapshot.gateways_for(proxy))
        rbac = http_rbac_filters(policies_for(proxy, snapshot))
        listeners = [_listener(p, rbac) for p in ports]
        routes = [_route_configuration(proxy, snapshot, p) for p in ports]
        clusters: list[Json] = [blackhole_cluster(snapshot.mesh)]
        endpoints: list[Json] = []
        for service in snapshot.visible_services(proxy.namespace):
            rule = snapshot.destination_rule(service.hostname, proxy.namespace, service.namespace)
            spec = rule.spec if rule is not None else None
            clusters += build_clusters(service, spec, snapshot.mesh)
            endpoints += build_load_assignments(service, spec)
        return {
            LISTENER: {item["name"]: item for item in listeners},
            ROUTE: {item["name"]: item for item in routes},
            CLUSTER: {item["name"]: item for item in clusters},
            ENDPOINT: {item["cluster_name"]: item for item in endpoints},
        }


def _merge_servers(gateways: list[Resource]) -> list[_PortServers]:
    merged: dict[tuple[str, int], _PortServers] = {}
    for gateway in sorted(gateways, key=lambda g: (g.namespace, g.name)):
        for server in gateway.spec.servers:
            key = (server.bind, server.port.number)
            merged.setdefault(key, _PortServers(bind=server.bind, port=server.port.number)).servers.append((gateway, server))
    return [merged[key] for key in sorted(merged, key=lambda k: (k[1], k[0]))]


def _listener(ports: _PortServers, rbac: list[Json]) -> Json:
    bind = ports.bind or WILDCARD
    name = listener_name(bind, ports.port)
    hcm: Json = {
        "@type": HCM,
        "stat_prefix": f"outbound_{name}",
        "rds": {"config_source": ADS_SOURCE, "route_config_name": ports.route_name},
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
    return {
        "name": name,
        "address": {"socket_address": {"address": bind, "port_value": ports.port}},
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }


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
