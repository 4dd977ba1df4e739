"""Config for sidecar proxies (`sidecar~…`), with Istio's names and shapes.

Outbound: `virtualOutbound` on 15001 (`use_original_dst`) hands captured
connections to the listener of their original destination port, else to its
catch-all chain `virtualOutbound-catchall-tcp` (PassthroughCluster under
ALLOW_ANY, BlackHoleCluster under REGISTRY_ONLY). Each HTTP service port gets
`0.0.0.0_<port>` (not bound: it only receives hand-offs) with RDS named by the
port, whose virtual hosts are `<host>:<port>` per service on that port (the
routes of mesh VirtualServices, else a default route to
`outbound|<port>||<host>`) and then `allow_any` or `block_all`. Other ports get
a tcp_proxy listener to the first service on the port. A port with DYNAMIC_DNS
services has their dynamic forward proxy filters before the router (gen/dfp.py).

Inbound: `virtualInbound` on 15006 (original_dst listener filter) has one chain
per port of the services that select the proxy (`destination_port` match),
routing to `inbound|<port>||`: an ORIGINAL_DST cluster whose connections leave
from 127.0.0.6, so the app sees the sidecar, not the peer, and capture rules
let the traffic through. Unknown ports go to InboundPassthroughCluster.
AuthorizationPolicies selecting the proxy guard every inbound chain: HTTP RBAC
ahead of the HTTP filters, network RBAC ahead of tcp_proxy (gen/authz.py).
PeerAuthentication decides each port's chains: TLS only (STRICT), TLS and
plaintext told apart by tls_inspector (PERMISSIVE, the default), plaintext
(DISABLE) - gen/mtls.py.

Interception mode NONE (node metadata `INTERCEPTION_MODE`, no capture rules):
no virtual listeners and no inbound; outbound listeners bind for real on
`127.0.0.1_<port>`, as istiod does, so an application reaches them directly.
"""

from __future__ import annotations

from collections.abc import Callable

from pylon.pilot.gen import dfp
from pylon.pilot.gen.authz import SelectedPolicies, http_rbac_filters, network_rbac_filters, policies_for
from pylon.pilot.gen.clusters import blackhole_cluster, outbound_clusters
from pylon.pilot.gen.endpoints import outbound_assignments
from pylon.pilot.gen.mtls import PeerModes, inbound_chains
from pylon.pilot.gen.name_table import name_table
from pylon.pilot.gen.names import BLACKHOLE, INBOUND_PASSTHROUGH, PASSTHROUGH, domain_name, listener_name, subset_key
from pylon.pilot.gen.routes import RouteContext, build_http_routes, is_catch_all, translate_retry
from pylon.pilot.gen.tcp import sidecar_tcp_chains, sidecar_tls_chains
from pylon.pilot.gen.scope import SidecarScope, mesh_virtual_services, own_services, scoped_services, sidecar_scope
from pylon.pilot.gen.types import (ADS_SOURCE, CLUSTER, ENDPOINT, HCM, LISTENER, NAME_TABLE, ORIGINAL_DST_FILTER,
                                   ROUTE, ROUTER, TCP_PROXY, TLS_INSPECTOR, Json, Resources,
                                   route_configured_filters)  # fmt: skip
from pylon.pilot.hosts import matches, resolve_short_name
from pylon.pilot.istio.common import format_duration
from pylon.pilot.istio.networking import HTTP_PROTOCOLS, ServicePort
from pylon.pilot.istio.resources import Resource
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Service, Snapshot

VIRTUAL_OUTBOUND_PORT = 15001
VIRTUAL_INBOUND_PORT = 15006
WILDCARD = "0.0.0.0"
LOCALHOST = "127.0.0.1"
INBOUND_SOURCE = "127.0.0.6"
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
        clusters: list[Json] = [blackhole_cluster(snapshot.mesh), _original_dst_cluster(PASSTHROUGH, timeout)]
        endpoints: list[Json] = []
        for service in services:
            rule = snapshot.destination_rule(service.hostname, proxy.namespace, service.namespace)
            clusters += outbound_clusters(snapshot, service, rule, for_sidecar=True)
            endpoints += outbound_assignments(snapshot, service, rule)
        bind = WILDCARD if capture else LOCALHOST
        listeners, routes = _outbound(proxy, snapshot, scope, services, bind, bound=not capture)
        if capture:
            inbound = _inbound_ports(proxy, snapshot)
            clusters.append(_original_dst_cluster(INBOUND_PASSTHROUGH, timeout, source=INBOUND_SOURCE))
            clusters += [_inbound_cluster(service, port, timeout) for port, (service, _) in inbound.items()]
            listeners += [_virtual_outbound(scope), _virtual_inbound(inbound, policies_for(proxy, snapshot),
                                                                       PeerModes(proxy, snapshot))]
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
        for service in scoped_services(proxy, snapshot, sidecar_scope(proxy, snapshot), hostnames):
            rule = snapshot.destination_rule(service.hostname, proxy.namespace, service.namespace)
            out.update((item["cluster_name"], item) for item in outbound_assignments(snapshot, service, rule))
        return out


# --------------------------------------------------------------------------- outbound


def _outbound(proxy: Proxy, snapshot: Snapshot, scope: SidecarScope, services: list[Service], bind: str,
              bound: bool) -> tuple[list[Json], list[Json]]:  # fmt: skip
    http_ports: dict[int, list[Service]] = {}
    tcp_ports: dict[int, list[tuple[Service, ServicePort]]] = {}
    for service in services:
        for port in service.ports:
            if is_http(port):
                http_ports.setdefault(port.number, []).append(service)
    for service in services:
        for port in service.ports:
            if not is_http(port) and port.number not in http_ports:
                tcp_ports.setdefault(port.number, []).append((service, port))
    virtual_services = mesh_virtual_services(proxy, snapshot, scope)
    claiming = _claims(virtual_services)
    listeners: list[Json] = []
    routes: list[Json] = []
    for number in sorted(set(http_ports) | set(tcp_ports)):
        name = listener_name(bind, number)
        listener: Json = {
            "name": name,
            "address": {"socket_address": {"address": bind, "port_value": number}},
            "traffic_direction": "OUTBOUND",
        }
        if number in http_ports:
            # DYNAMIC_DNS services of the port: their dynamic forward proxy filters (gen/dfp.py), by hostname
            forward = [dfp.http_filter(s) for s in sorted(http_ports[number], key=lambda s: s.hostname)
                       if dfp.is_dynamic_dns(s)]
            filters = [_hcm(f"outbound_{name}", {"rds": {"config_source": ADS_SOURCE, "route_config_name": str(number)}},
                            last=forward)]
            routes.append(_route_configuration(proxy, snapshot, scope, number, http_ports[number], virtual_services))
            listener["filter_chains"] = [{"filters": filters}]
        else:
            listener["filter_chains"] = _tcp_chains(proxy, snapshot, number, tcp_ports[number], claiming)
            if any("server_names" in c.get("filter_chain_match", {}) for c in listener["filter_chains"]):
                listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector",
                                                 "typed_config": {"@type": TLS_INSPECTOR}}]  # fmt: skip
        if not bound:
            listener["bind_to_port"] = False
        listeners.append(listener)
    return listeners, routes


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


def _route_configuration(proxy: Proxy, snapshot: Snapshot, scope: SidecarScope, port: int, services: list[Service],
                         virtual_services: list[Resource]) -> Json:  # fmt: skip
    claiming = _claims(virtual_services)
    vhosts = []
    for service in sorted(services, key=lambda s: s.hostname):
        routes: list[Json] = []
        for vs in claiming(service.hostname):
            ctx = RouteContext(proxy=proxy, snapshot=snapshot, vs=vs, listen_port=port, gateways=frozenset({"mesh"}))
            routes += build_http_routes(ctx)
        if routes:
            vhosts.append(_virtual_host(service, port, routes))
        else:  # most services: no VirtualService, a virtual host that depends on the service and port alone
            vhosts.append(snapshot.pieces.get("default-vhost", (service,), (port,), lambda: _virtual_host(
                service, port, [_default_route(service.hostname, port)])))  # fmt: skip
    vhosts.append(_fallback_virtual_host(scope.outbound_policy))
    return {"name": str(port), "virtual_hosts": vhosts, "validate_clusters": False}


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


def _fallback_virtual_host(policy: str) -> Json:
    """`allow_any` (unknown hosts pass through) or `block_all` (502), Istio's last virtual host of every port."""
    if policy == "ALLOW_ANY":
        return {"name": "allow_any", "domains": ["*"], "include_request_attempt_count": True, "routes": [{
            "name": "allow_any", "match": {"prefix": "/"},
            "route": {"cluster": PASSTHROUGH, "timeout": "0s", "max_grpc_timeout": "0s"}}]}  # fmt: skip
    return {"name": "block_all", "domains": ["*"], "include_request_attempt_count": True, "routes": [{
        "name": "block_all", "match": {"prefix": "/"}, "direct_response": {"status": 502}}]}  # fmt: skip


def _virtual_outbound(scope: SidecarScope) -> Json:
    catch_all = PASSTHROUGH if scope.outbound_policy == "ALLOW_ANY" else BLACKHOLE
    return {
        "name": "virtualOutbound",
        "address": {"socket_address": {"address": WILDCARD, "port_value": VIRTUAL_OUTBOUND_PORT}},
        "use_original_dst": True,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [
            # connections addressed to 15001 itself would loop back forever
            {"name": "virtualOutbound-blackhole", "filter_chain_match": {"destination_port": VIRTUAL_OUTBOUND_PORT},
             "filters": [_tcp_proxy(BLACKHOLE)]},
            {"name": "virtualOutbound-catchall-tcp", "filters": [_tcp_proxy(catch_all)]},
        ],
    }  # fmt: skip


# --------------------------------------------------------------------------- inbound


def _inbound_ports(proxy: Proxy, snapshot: Snapshot) -> dict[int, tuple[Service, ServicePort]]:
    """Target port -> the first service port (by hostname) that lands on it."""
    out: dict[int, tuple[Service, ServicePort]] = {}
    for service in own_services(proxy, snapshot):
        for port in service.ports:
            out.setdefault(port.target_port or port.number, (service, port))
    return dict(sorted(out.items()))


def _inbound_cluster(service: Service, port: int, connect_timeout: float) -> Json:
    cluster = _original_dst_cluster(subset_key("", port, direction="inbound"), connect_timeout, source=INBOUND_SOURCE)
    cluster["metadata"] = {"filter_metadata": {"istio": {"services": [
        {"host": service.hostname, "name": service.hostname.split(".")[0], "namespace": service.namespace}]}}}  # fmt: skip
    return cluster


def _virtual_inbound(inbound: dict[int, tuple[Service, ServicePort]], policies: SelectedPolicies, modes: PeerModes) -> Json:
    chains: list[Json] = [{"name": "virtualInbound-blackhole", "filter_chain_match": {"destination_port": VIRTUAL_INBOUND_PORT},
                           "filters": [_tcp_proxy(BLACKHOLE)]}]  # fmt: skip
    for number, (service, port) in inbound.items():
        cluster = subset_key("", number, direction="inbound")
        if is_http(port):
            route_config = {"name": cluster, "validate_clusters": False, "virtual_hosts": [{
                "name": f"inbound|http|{number}", "domains": ["*"], "routes": [{
                    "name": "default", "match": {"prefix": "/"},
                    "route": {"cluster": cluster, "timeout": "0s", "max_grpc_timeout": "0s"},
                    "decorator": {"operation": f"{service.hostname}:{port.number}/*"}}]}]}  # fmt: skip
            filters = [_hcm(f"inbound_0.0.0.0_{number}", {"route_config": route_config}, inbound=True,
                            rbac=http_rbac_filters(policies))]  # fmt: skip
        else:
            filters = [*network_rbac_filters(policies), _tcp_proxy(cluster)]
        chains += inbound_chains(f"{WILDCARD}_{number}", number, modes.mode(number), filters, http=is_http(port))
    chains += inbound_chains("virtualInbound-catchall-tcp", None, modes.default,
                             [*network_rbac_filters(policies), _tcp_proxy(INBOUND_PASSTHROUGH)], http=False)
    listener_filters = [{"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": ORIGINAL_DST_FILTER}}]
    if modes.any_tls:
        listener_filters.append({"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}})
    return {
        "name": "virtualInbound",
        "address": {"socket_address": {"address": WILDCARD, "port_value": VIRTUAL_INBOUND_PORT}},
        "traffic_direction": "INBOUND",
        "listener_filters": listener_filters,
        "filter_chains": chains,
    }


# --------------------------------------------------------------------------- shared pieces


def _hcm(stat_prefix: str, routes: Json, inbound: bool = False, rbac: list[Json] | None = None,
         last: list[Json] | None = None) -> Json:
    """A connection manager: `rbac` filters first, `last` ones just before the router (as istiod orders them)."""
    config: Json = {
        "@type": HCM,
        "stat_prefix": stat_prefix,
        **routes,
        "http_filters": [
            *(rbac or []),
            *route_configured_filters(),
            *(last or []),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
        "use_remote_address": False,
        "normalize_path": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
    }
    if inbound:
        config["forward_client_cert_details"] = "APPEND_FORWARD"
        config["set_current_client_cert_details"] = {"subject": True, "uri": True, "dns": True}
        config["server_name"] = "istio-envoy"
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": config}


def _tcp_proxy(cluster: str) -> Json:
    return {"name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY, "stat_prefix": cluster, "cluster": cluster}}  # fmt: skip


def _original_dst_cluster(name: str, connect_timeout: float, source: str = "") -> Json:
    """Connections go where they were addressed (PassthroughCluster, InboundPassthroughCluster, inbound|port||)."""
    cluster: Json = {"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                     "connect_timeout": format_duration(connect_timeout)}  # fmt: skip
    if source:
        cluster["upstream_bind_config"] = {"source_address": {"address": source, "port_value": 0}}
    return cluster
