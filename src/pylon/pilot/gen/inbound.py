"""A sidecar's inbound side, as istiod builds it (pilot/pkg/networking/core/listener_inbound.go, cluster.go).

Which ports: without a Sidecar `ingress`, one per target port of the services that select the proxy
(`inbound_ports`; none in interception mode NONE, where they would take the app's own ports). With
`ingress`, those listeners instead of the services (istiod's default, without
PILOT_ALLOW_SIDECAR_SERVICE_INBOUND_LISTENER_MERGE): each its port and protocol, its `bind` (else the proxy's
first global unicast IP, else 0.0.0.0), and a real listener of its own on bind:port when its `captureMode` is
NONE, or DEFAULT in interception mode NONE - else chains of virtualInbound matched by destination port.

Each port's chains are named `<bind>_<port>` and route everything to `inbound|<port>||`: an HCM with one
`inbound|http|<port>` virtual host, or a tcp_proxy, behind the AuthorizationPolicies' RBAC (gen/authz.py), in
the PeerAuthentication mode of the port (gen/mtls.py). An ingress `tls` replaces the mesh TLS only when that mode
is DISABLE (istiod: the two would conflict); it then ends TLS with the workload's files, served by the agent over
SDS (`file-cert:`, `file-root:`), and the protocol behind it is HTTP for HTTPS and TCP for TLS. In any other mode
istiod leaves the `tls` out, as pylon does, with a warning in the log.

`inbound|<port>||` goes to the connection's original destination (ORIGINAL_DST) from 127.0.0.6, or to an
ingress `defaultEndpoint`: `127.0.0.1:PORT` (STATIC, from the sidecar's own address), `0.0.0.0:PORT` (the
proxy's IPv4 address, from 127.0.0.6), `[::1]`/`[::]` likewise for IPv6 (pylon pilot serves IPv4 proxies:
`[::1]` is 127.0.0.1 as istiod does for them), `unix://PATH` (a pipe). Its connection pool is the ingress
listener's, else the Sidecar's `inboundConnectionPool`, else the DestinationRule's of the service on the port.
Departure: istiod reads ingress `tls` only with ENABLE_TLS_ON_SIDECAR_INGRESS set (off by default); pylon always
does, rather than parse a setting to ignore it.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from pylon.pilot.gen.authz import SelectedPolicies, http_rbac_filters, network_rbac_filters
from pylon.pilot.gen.client_tls import file_cert, file_root
from pylon.pilot.gen.clusters import apply_inbound_policy
from pylon.pilot.gen.credentials import HTTPS_ALPN, server_tls_params
from pylon.pilot.gen.filters import (INBOUND_SOURCE, LOCALHOST, VIRTUAL_INBOUND_PORT, WILDCARD, hcm, original_dst_cluster,
                                     socket_address, tcp_proxy_to, tls_inspector)  # fmt: skip
from pylon.pilot.gen.mtls import TLS_SOCKET, PeerModes, inbound_chains, sds_secret
from pylon.pilot.gen.names import BLACKHOLE, INBOUND_PASSTHROUGH, subset_key
from pylon.pilot.gen.policy import effective_policy
from pylon.pilot.gen.scope import SidecarScope, own_services
from pylon.pilot.gen.types import DOWNSTREAM_TLS, ORIGINAL_DST_FILTER, Json
from pylon.pilot.istio.common import format_duration
from pylon.pilot.istio.networking import HTTP_PROTOCOLS, ConnectionPoolSettings
from pylon.pilot.istio.resources import Resource
from pylon.pilot.istio.sidecar import DefaultEndpoint, IstioIngressListener, SidecarIngressTLS
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Service, Snapshot

log = logging.getLogger("pylon.pilot.gen")

# Where istiod's default endpoints point for a proxy of IPv4 (the only kind pylon pilot serves).
LOCAL_ENDPOINTS = {"127.0.0.1": LOCALHOST, "::1": LOCALHOST}


@dataclass(frozen=True)
class InboundPort:
    """One inbound port (istiod's inboundChainConfig), from a service selecting the proxy or an ingress listener."""

    port: int  # what connections arrive on (the service's target port): chains match it, the cluster is named by it
    protocol: str  # upper case; behind the ingress TLS, if any
    bind: str
    bound: bool  # a listener of its own on bind:port, not chains of virtualInbound
    operation: str  # the route's decorator: `<host>:<port>/*` of the service, or of `<sidecar>.<namespace>`
    vhost_port: int  # the port of the `inbound|http|<port>` virtual host: the service's port, or the listener's
    service: Service | None  # the service on the port: the cluster's telemetry metadata, its DestinationRule
    endpoint: DefaultEndpoint = DefaultEndpoint()
    tls: SidecarIngressTLS | None = None
    pool: ConnectionPoolSettings | None = None  # the Sidecar's for the port
    sidecar: Resource | None = None  # the Sidecar of an ingress listener: config metadata on its chains

    @property
    def name(self) -> str:
        return f"{self.bind}_{self.port}"

    @property
    def cluster(self) -> str:
        return subset_key("", self.port, direction="inbound")

    @property
    def http(self) -> bool:
        return self.protocol in HTTP_PROTOCOLS


def inbound_ports(proxy: Proxy, snapshot: Snapshot, scope: SidecarScope, capture: bool) -> list[InboundPort]:
    """The proxy's inbound ports, by port number (`capture`: interception REDIRECT rather than NONE)."""
    sidecar = scope.sidecar
    if sidecar is not None and sidecar.spec.ingress:
        services = own_services(proxy, snapshot)
        ports = [_ingress_port(proxy, sidecar, listener, services, capture) for listener in sidecar.spec.ingress]
        return sorted(ports, key=lambda p: p.port)
    if not capture:
        return []
    out: dict[int, InboundPort] = {}
    for service in own_services(proxy, snapshot):
        for port in service.ports:
            number = port.target_port or port.number
            if number not in out:  # the first service (by hostname) on a target port has it, as istiod's oldest
                out[number] = InboundPort(port=number, protocol=port.protocol.upper(), bind=WILDCARD, bound=False,
                                          operation=f"{service.hostname}:{port.number}/*", vhost_port=port.number,
                                          service=service, pool=sidecar.spec.ingress_pool(number) if sidecar else None)  # fmt: skip
    return [out[number] for number in sorted(out)]


def _ingress_port(proxy: Proxy, sidecar: Resource, listener: IstioIngressListener, services: list[Service],
                  capture: bool) -> InboundPort:  # fmt: skip
    number = listener.port.number
    bound = listener.capture_mode == "NONE" or (listener.capture_mode == "DEFAULT" and not capture)
    # istiod's findOrCreateService: a service of the proxy whose target port is the listener's, for telemetry
    service = next((s for s in services for p in s.ports if (p.target_port or p.number) == number), None)
    return InboundPort(port=number, protocol=listener.protocol, bind=listener.bind or _bind_ip(proxy), bound=bound,
                       operation=f"{sidecar.name}.{sidecar.namespace}:{number}/*", vhost_port=number, service=service,
                       endpoint=listener.endpoint, tls=listener.tls, pool=sidecar.spec.ingress_pool(number),
                       sidecar=sidecar)  # fmt: skip


def _bind_ip(proxy: Proxy) -> str:
    """istiod's getSidecarInboundBindIPs: the proxy's first global unicast IP (Go's IsGlobalUnicast), else 0.0.0.0."""
    for text in proxy.ip_addresses:
        ip = ipaddress.ip_address(text)
        if not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified
                or text == "255.255.255.255"):  # fmt: skip
            return text
    return WILDCARD


# --------------------------------------------------------------------------- clusters


def inbound_cluster(inbound: InboundPort, proxy: Proxy, snapshot: Snapshot) -> Json:
    """`inbound|<port>||`: to the original destination, or to the ingress listener's default endpoint."""
    timeout = snapshot.mesh.connect_timeout
    address = _endpoint_address(inbound.endpoint, proxy)
    if address is None:
        cluster = original_dst_cluster(inbound.cluster, timeout, source=INBOUND_SOURCE)
    else:
        cluster = {"name": inbound.cluster, "type": "STATIC", "connect_timeout": format_duration(timeout),
                   "load_assignment": {"cluster_name": inbound.cluster,
                                       "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]}}  # fmt: skip
        if address.get("socket_address", {}).get("address") != LOCALHOST:
            # istiod binds every inbound connection but those to localhost: capture rules let 127.0.0.6 through
            cluster["upstream_bind_config"] = {"source_address": {"address": INBOUND_SOURCE, "port_value": 0}}
    service = inbound.service
    if service is not None:
        cluster["metadata"] = {"filter_metadata": {"istio": {"services": [
            {"host": service.hostname, "name": service.hostname.split(".")[0], "namespace": service.namespace}]}}}  # fmt: skip
    apply_inbound_policy(cluster, inbound.protocol, inbound.pool or _rule_pool(inbound, proxy, snapshot))
    return cluster


def _endpoint_address(endpoint: DefaultEndpoint, proxy: Proxy) -> Json | None:
    """The address a default endpoint names for this proxy (None: the original destination), as istiod's
    buildInboundClustersFromSidecar resolves it."""
    if endpoint.unix_path:
        return {"pipe": {"path": endpoint.unix_path}}
    if not endpoint.host:
        return None
    if endpoint.host in LOCAL_ENDPOINTS:
        return socket_address(LOCAL_ENDPOINTS[endpoint.host], endpoint.port)
    version, fallback = (4, LOCALHOST) if endpoint.host == "0.0.0.0" else (6, "::1")
    own = next((ip for ip in proxy.ip_addresses if ipaddress.ip_address(ip).version == version), fallback)
    return socket_address(own, endpoint.port)


def _rule_pool(inbound: InboundPort, proxy: Proxy, snapshot: Snapshot) -> ConnectionPoolSettings | None:
    """The connection pool of the DestinationRule of the service on the port (istiod applies it on the receiving
    side too, so the app's sidecar can take what its clients may send)."""
    service = inbound.service
    if service is None:
        return None
    rule = snapshot.destination_rule(service.hostname, proxy.namespace, service.namespace)
    return effective_policy(rule.spec, inbound.vhost_port).connection_pool if rule is not None else None


# --------------------------------------------------------------------------- listeners


def inbound_listeners(ports: list[InboundPort], policies: SelectedPolicies, modes: PeerModes,
                      capture: bool) -> list[Json]:  # fmt: skip
    """virtualInbound (in capture mode) with the chains of the ports that are not bound, then a listener for each
    bound port."""
    listeners: list[Json] = []
    if capture:
        chains: list[Json] = [{"name": "virtualInbound-blackhole", "filter_chain_match": {"destination_port": VIRTUAL_INBOUND_PORT},
                               "filters": [tcp_proxy_to(BLACKHOLE)]}]  # fmt: skip
        for inbound in ports:
            if not inbound.bound:
                chains += _chains(inbound, policies, modes)
        chains += inbound_chains("virtualInbound-catchall-tcp", None, modes.default,
                                 [*network_rbac_filters(policies), tcp_proxy_to(INBOUND_PASSTHROUGH)], http=False)
        listeners.append({
            "name": "virtualInbound",
            "address": socket_address(WILDCARD, VIRTUAL_INBOUND_PORT),
            "traffic_direction": "INBOUND",
            "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": ORIGINAL_DST_FILTER}},
                                 *_inspectors(chains)],
            "filter_chains": chains,
        })  # fmt: skip
    for inbound in ports:
        if inbound.bound:
            chains = _chains(inbound, policies, modes)
            listener: Json = {"name": inbound.name, "address": socket_address(inbound.bind, inbound.port),
                              "traffic_direction": "INBOUND", "filter_chains": chains}  # fmt: skip
            if _inspectors(chains):
                listener["listener_filters"] = _inspectors(chains)
            listeners.append(listener)
    return listeners


def _inspectors(chains: list[Json]) -> list[Json]:
    """The tls_inspector, if a chain matches on TLS."""
    tls = any(c.get("filter_chain_match", {}).get("transport_protocol") == "tls" for c in chains)
    return [tls_inspector()] if tls else []


def _chains(inbound: InboundPort, policies: SelectedPolicies, modes: PeerModes) -> list[Json]:
    if inbound.http:
        route_config = {"name": inbound.cluster, "validate_clusters": False, "virtual_hosts": [{
            "name": f"inbound|http|{inbound.vhost_port}", "domains": ["*"], "routes": [{
                "name": "default", "match": {"prefix": "/"},
                "route": {"cluster": inbound.cluster, "timeout": "0s", "max_grpc_timeout": "0s"},
                "decorator": {"operation": inbound.operation}}]}]}  # fmt: skip
        filters = [hcm(f"inbound_{inbound.name}", {"route_config": route_config}, inbound=True,
                       rbac=http_rbac_filters(policies))]  # fmt: skip
    else:
        filters = [*network_rbac_filters(policies), tcp_proxy_to(inbound.cluster)]
    mode = modes.mode(inbound.port)
    if inbound.tls is not None and mode == "DISABLE":
        chains = [{"name": inbound.name, "filter_chain_match": {"destination_port": inbound.port, "transport_protocol": "tls"},
                   "filters": filters, "transport_socket": ingress_tls_socket(inbound.tls)}]  # fmt: skip
    else:
        if inbound.tls is not None:
            log.warning("Sidecar %s/%s: the tls of ingress port %d is not used while its PeerAuthentication mode is %s "
                        "(as in Istio: only DISABLE lets a Sidecar's own TLS replace mesh mTLS)", inbound.sidecar.namespace,
                        inbound.sidecar.name, inbound.port, mode)  # fmt: skip
        chains = inbound_chains(inbound.name, inbound.port, mode, filters, http=inbound.http)
    if inbound.sidecar is not None:
        for chain in chains:
            chain["metadata"] = config_metadata(inbound.sidecar)
    return chains


def ingress_tls_socket(tls: SidecarIngressTLS) -> Json:
    """The DownstreamTlsContext of an ingress listener's `tls` (istiod's BuildListenerTLSContext for a sidecar):
    the workload's certificate files, the client CA file for MUTUAL and OPTIONAL_MUTUAL, ALPN `h2,http/1.1`."""
    common: Json = {"alpn_protocols": list(HTTPS_ALPN),
                    "tls_certificate_sds_secret_configs": [sds_secret(file_cert(tls.server_certificate, tls.private_key))]}  # fmt: skip
    if tls.checks_clients:
        default: Json = {}
        if tls.ca_crl:
            default["crl"] = {"filename": tls.ca_crl}
        if tls.insecure_skip_verify:
            default["trust_chain_verification"] = "ACCEPT_UNTRUSTED"
        common["combined_validation_context"] = {"default_validation_context": default,
                                                 "validation_context_sds_secret_config": sds_secret(file_root(tls.ca_certificates))}  # fmt: skip
    params = server_tls_params(tls.min_protocol_version, tls.max_protocol_version, tls.cipher_suites, tls.ecdh_curves)
    if params:
        common["tls_params"] = params
    context = {"@type": DOWNSTREAM_TLS, "common_tls_context": common, "require_client_certificate": tls.mode == "MUTUAL"}
    return {"name": TLS_SOCKET, "typed_config": context}


def config_metadata(resource: Resource) -> Json:
    """istiod's BuildConfigInfoMetadata: which resource a generated piece comes from."""
    path = f"/apis/networking.istio.io/v1/namespaces/{resource.namespace}/{resource.kind.lower()}/{resource.name}"
    return {"filter_metadata": {"istio": {"config": path}}}
