"""Outbound clusters, `outbound|<port>|<subset>|<fqdn>`, with DestinationRule traffic policy applied.

Shapes follow istiod's cluster builder: EDS over ADS with `service_name` = the
cluster name, MeshConfig `connectTimeout` (10s by default) unless the rule's connection pool
sets one, LEAST_REQUEST by default (Istio's default
since 1.14), circuit-breaker thresholds at UINT32_MAX with track_remaining
(Envoy's 1024 defaults trip during endpoint churn), then the policy.
"""

from __future__ import annotations


from pylon.pilot.gen import dfp
from pylon.pilot.gen.client_tls import auto_sni_options, user_tls_socket
from pylon.pilot.gen.mtls import apply_client_tls
from pylon.pilot.gen.names import BLACKHOLE, sni_dnat_key, subset_key
from pylon.pilot.gen.policy import EffectivePolicy, effective_policy
from pylon.pilot.gen.types import ADS_SOURCE, HTTP_PROTOCOL_OPTIONS, Json
from pylon.pilot.istio.common import format_duration
from pylon.pilot.istio.mesh import MeshConfig
from pylon.pilot.istio.networking import (HTTP2_PROTOCOLS, ClientTLSSettings, ConnectionPoolSettings,
                                         DestinationRuleSpec, ServicePort, TcpKeepalive)  # fmt: skip
from pylon.pilot.gen.endpoints import assignment
from pylon.pilot.istio.resources import Resource
from pylon.pilot.snapshot import Endpoint, Service, Snapshot

UINT32_MAX = 2**32 - 1


def outbound_clusters(snapshot: Snapshot, service: Service, rule: Resource | None, for_sidecar: bool) -> list[Json]:
    """`build_clusters` of the service under its DestinationRule, built once for every proxy (of the kind
    `for_sidecar` says: credentialName TLS is for gateways only) and snapshot that has the same service, rule
    and mesh objects (shared: not to be changed; pieces.py)."""
    return snapshot.pieces.get("clusters", (service, rule, snapshot.mesh), (for_sidecar,), lambda: build_clusters(
        service, rule.spec if rule is not None else None, snapshot.mesh, for_sidecar))


def sni_dnat_clusters(snapshot: Snapshot, service: Service, rule: Resource | None) -> list[Json]:
    """A gateway's SNI-DNAT clusters of the service (AUTO_PASSTHROUGH servers), shared as `outbound_clusters`."""
    return snapshot.pieces.get("sni-dnat-clusters", (service, rule, snapshot.mesh), (), lambda: build_clusters(
        service, rule.spec if rule is not None else None, snapshot.mesh, for_sidecar=False, sni_dnat=True))


def build_clusters(service: Service, rule: DestinationRuleSpec | None, mesh: MeshConfig, for_sidecar: bool,
                   sni_dnat: bool = False) -> list[Json]:  # fmt: skip
    """The default cluster of every port, then one per DestinationRule subset, as Istio orders them.

    `sni_dnat`: a gateway's SNI-DNAT clusters instead (istiod's buildOutboundSniDnatClusters), named
    `outbound_.<port>_.<subset>_.<fqdn>`, the rule's policy but no TLS: they forward the client's mTLS as it is.
    A DYNAMIC_DNS wildcard host has a dynamic forward proxy cluster per port and no subsets (gen/dfp.py), and no
    SNI-DNAT clusters: it has no endpoints to forward to."""
    if dfp.is_dynamic_dns(service):
        return [] if sni_dnat else [build_dfp_cluster(service, port, effective_policy(rule, port.number), mesh,
                                                      for_sidecar) for port in service.ports]  # fmt: skip
    out = []
    for port in service.ports:
        if sni_dnat and port.protocol.upper() == "UDP":
            continue
        out.append(build_cluster(service, port, "", effective_policy(rule, port.number), mesh, for_sidecar=for_sidecar,
                                 sni_dnat=sni_dnat))  # fmt: skip
        for subset in rule.subsets if rule is not None else []:
            out.append(build_cluster(service, port, subset.name, effective_policy(rule, port.number, subset.name),
                                     mesh, subset.labels, for_sidecar=for_sidecar, sni_dnat=sni_dnat))  # fmt: skip
    return out


def _apply_resolution(cluster: Json, service: Service, port: ServicePort, labels: dict[str, str]) -> None:
    """ServiceEntry resolution as istiod maps it: STATIC stays EDS; NONE forwards to the address the client
    connected to (ORIGINAL_DST); DNS is STRICT_DNS (every address of every name), DNS_ROUND_ROBIN LOGICAL_DNS
    (one address at a time), their endpoints inline: a ServiceEntry's endpoints, else its host on the port."""
    resolution = service.entry.spec.resolution
    if resolution == "STATIC":
        return
    del cluster["eds_cluster_config"]
    if resolution == "NONE":
        cluster.update(type="ORIGINAL_DST", lb_policy="CLUSTER_PROVIDED")
        return
    cluster["type"] = "STRICT_DNS" if resolution == "DNS" else "LOGICAL_DNS"
    cluster["dns_lookup_family"] = "V4_ONLY"
    cluster["respect_dns_ttl"] = True
    chosen = [ep for ep in service.endpoints if all(ep.labels.get(k) == v for k, v in labels.items())]
    if not service.entry.spec.endpoints:
        chosen = [Endpoint(address=service.hostname, ports={}, labels={}, weight=0, locality="")]
    if resolution == "DNS_ROUND_ROBIN":
        chosen = chosen[:1]  # Envoy's LOGICAL_DNS takes exactly one name
    cluster["load_assignment"] = assignment(cluster["name"], chosen, port)


def blackhole_cluster(mesh: MeshConfig) -> Json:
    """Where routes to nothing go: a STATIC cluster with no endpoints."""
    return {"name": BLACKHOLE, "type": "STATIC", "connect_timeout": format_duration(mesh.connect_timeout)}


def build_cluster(service: Service, port: ServicePort, subset: str, policy: EffectivePolicy, mesh: MeshConfig,
                  subset_labels: dict[str, str] | None = None, *, for_sidecar: bool, sni_dnat: bool = False) -> Json:  # fmt: skip
    name = (sni_dnat_key if sni_dnat else subset_key)(service.hostname, port.number, subset)
    cluster: Json = {
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": ADS_SOURCE, "service_name": name},
        "connect_timeout": format_duration(mesh.connect_timeout),
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [_default_thresholds()]},
        "metadata": {"filter_metadata": {"istio": _istio_metadata(service, port, subset)}},
    }
    _apply_resolution(cluster, service, port, subset_labels or {})
    _apply_load_balancer(cluster, policy)
    common = _apply_connection_pool(cluster, policy)
    _apply_outlier_detection(cluster, policy)
    protocol = _upstream_protocol(port, policy)
    http2 = protocol is not None and "http2_protocol_options" in protocol.get("explicit_http_config", {})
    upstream_options = {} if sni_dnat else _apply_tls(cluster, service, port, subset, policy, mesh, http2, for_sidecar)
    _set_protocol_options(cluster, protocol, common, upstream_options)
    return cluster


def apply_inbound_policy(cluster: Json, protocol: str, pool: ConnectionPoolSettings | None) -> None:
    """What istiod's buildInboundCluster applies to an `inbound|<port>||` cluster: circuit breakers (every
    inbound cluster has them), the connection pool (`pool`: the Sidecar's for the port, else the
    DestinationRule's) and the app's HTTP version (HTTP/2 for HTTP2 and gRPC ports, the client's with
    useClientProtocol; never an h2UpgradePolicy, which is outbound only); no load balancer, outlier
    detection or TLS."""
    cluster["circuit_breakers"] = {"thresholds": [_default_thresholds()]}
    common = _apply_connection_pool(cluster, EffectivePolicy(connection_pool=pool))
    http = pool.http if pool is not None else None
    upstream: Json | None = None
    if http is not None and http.use_client_protocol:
        upstream = {"use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}}
    elif protocol.upper() in HTTP2_PROTOCOLS:
        streams = http.max_concurrent_streams if http is not None else 0
        upstream = {"explicit_http_config": {"http2_protocol_options": _h2_options(streams)}}
    _set_protocol_options(cluster, upstream, common, {})


def _set_protocol_options(cluster: Json, protocol: Json | None, common: Json, upstream_options: Json) -> None:
    """The cluster's HttpProtocolOptions, when it needs any (HTTP/1.1 unless `protocol` says otherwise)."""
    if protocol is None and not common and not upstream_options:
        return
    options: Json = {"@type": HTTP_PROTOCOL_OPTIONS, **(protocol or {"explicit_http_config": {"http_protocol_options": {}}})}
    if common:
        options["common_http_protocol_options"] = common
    if upstream_options:
        options["upstream_http_protocol_options"] = upstream_options
    cluster["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options}


def build_dfp_cluster(service: Service, port: ServicePort, policy: EffectivePolicy, mesh: MeshConfig,
                      for_sidecar: bool) -> Json:  # fmt: skip
    """istiod's buildDFPCluster under the rule's policy (applyDestinationRule): no endpoints and no load balancing
    of its own (CLUSTER_PROVIDED: the host is the request's), connection pool, outlier detection, the upstream
    protocol, TLS with the request's host as SNI; istio metadata `external` for a MESH_EXTERNAL service."""
    cluster: Json = {
        "name": subset_key(service.hostname, port.number),
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": dfp.cluster_type(service),
        "connect_timeout": format_duration(mesh.connect_timeout),
        "circuit_breakers": {"thresholds": [_default_thresholds()]},
    }
    if service.entry.spec.location == "MESH_EXTERNAL":
        cluster["metadata"] = {"filter_metadata": {"istio": {"external": True}}}
    common = _apply_connection_pool(cluster, policy)
    _apply_outlier_detection(cluster, policy)
    protocol = _upstream_protocol(port, policy)
    http2 = protocol is not None and "http2_protocol_options" in protocol.get("explicit_http_config", {})
    upstream_options = _apply_dfp_tls(cluster, service, port, policy, mesh, http2, for_sidecar)
    if (protocol is not None or common) and not upstream_options:
        # Departure: typed options without these make Envoy refuse the cluster (its factory implies them only for a
        # cluster without typed options), which istiod's shape for a GRPC port or a connection pool gets.
        upstream_options = dfp.IMPLIED_OPTIONS
    _set_protocol_options(cluster, protocol, common, upstream_options)
    return cluster


def _user_tls(cluster: Json, tls: ClientTLSSettings, service: Service, mesh: MeshConfig, http2: bool,
              for_sidecar: bool) -> bool:  # fmt: skip
    """A DestinationRule's SIMPLE or MUTUAL TLS as the cluster's transport socket; False when there is none to give
    (gen/client_tls.py says why)."""
    socket = user_tls_socket(tls, service, mesh, http2, for_sidecar)
    if socket is not None:
        cluster["transport_socket"] = socket
    return socket is not None


def _apply_dfp_tls(cluster: Json, service: Service, port: ServicePort, policy: EffectivePolicy, mesh: MeshConfig,
                   http2: bool, for_sidecar: bool) -> Json:  # fmt: skip
    """A DFP cluster's TLS as istiod's cluster_tls.go: SNI from each request (never the generated mesh SNI), the
    upstream options of dfp.auto_sni_options; auto mTLS as other clusters' (its hosts carry no tlsMode: plaintext)."""
    tls = policy.tls
    if tls is not None and tls.mode in ("SIMPLE", "MUTUAL"):
        return dfp.auto_sni_options(cluster, tls) if _user_tls(cluster, tls, service, mesh, http2, for_sidecar) else {}
    internal = service.entry.spec.location == "MESH_INTERNAL"
    auto_mtls = tls is None and mesh.enable_auto_mtls and internal
    apply_client_tls(cluster, tls, auto_mtls, service.hostname, port.number, "", generated_sni=False)
    if tls is not None and tls.mode == "ISTIO_MUTUAL":
        return dfp.auto_sni_options(cluster, tls)
    return dfp.auto_sni_options(cluster, ClientTLSSettings(mode="ISTIO_MUTUAL")) if auto_mtls else {}


def _apply_tls(cluster: Json, service: Service, port: ServicePort, subset: str, policy: EffectivePolicy,
               mesh: MeshConfig, http2: bool, for_sidecar: bool) -> Json:  # fmt: skip
    """The cluster's upstream TLS by the rule's mode (auto mTLS when the rule sets none); returns the upstream
    HTTP protocol options it needs (auto SNI and SAN validation)."""
    tls = policy.tls
    if tls is not None and tls.mode in ("SIMPLE", "MUTUAL"):
        return auto_sni_options(tls) if _user_tls(cluster, tls, service, mesh, http2, for_sidecar) else {}
    # Istio's auto mTLS is for mesh services only: MESH_EXTERNAL hosts get TLS only when a DestinationRule asks
    internal = service.entry.spec.location == "MESH_INTERNAL"
    apply_client_tls(cluster, tls, mesh.enable_auto_mtls and internal, service.hostname, port.number, subset)
    return {}


def _istio_metadata(service: Service, port: ServicePort, subset: str) -> Json:
    meta: Json = {
        "services": [{"host": service.hostname, "name": service.hostname.split(".")[0], "namespace": service.namespace}],
        "default_original_port": port.number,
    }
    if subset:
        meta["subset"] = subset
    return meta


def _default_thresholds() -> Json:
    return {"max_connections": UINT32_MAX, "max_pending_requests": UINT32_MAX, "max_requests": UINT32_MAX,
            "max_retries": UINT32_MAX, "track_remaining": True}  # fmt: skip


def _apply_load_balancer(cluster: Json, policy: EffectivePolicy) -> None:
    lb = policy.load_balancer
    if lb is None:
        return
    simple = lb.simple
    if simple == "RANDOM":
        cluster["lb_policy"] = "RANDOM"
    elif simple == "ROUND_ROBIN":
        cluster["lb_policy"] = "ROUND_ROBIN"
    elif simple == "PASSTHROUGH":
        cluster["lb_policy"] = "CLUSTER_PROVIDED"
        cluster["type"] = "ORIGINAL_DST"
        cluster.pop("eds_cluster_config")
    hashing = lb.consistent_hash
    if hashing is None:
        return
    if hashing.maglev is not None:
        cluster["lb_policy"] = "MAGLEV"
        if hashing.maglev.table_size:
            cluster["maglev_lb_config"] = {"table_size": hashing.maglev.table_size}
    elif hashing.ring_hash is not None:
        cluster["lb_policy"] = "RING_HASH"
        if hashing.ring_hash.minimum_ring_size:
            cluster["ring_hash_lb_config"] = {"minimum_ring_size": hashing.ring_hash.minimum_ring_size}
    else:
        cluster["lb_policy"] = "RING_HASH"
        cluster["ring_hash_lb_config"] = {"minimum_ring_size": hashing.minimum_ring_size or 1024}


def _upstream_protocol(port: ServicePort, policy: EffectivePolicy) -> Json | None:
    """The upstream HTTP version Istio picks: the client's (useClientProtocol), HTTP/2 for HTTP2/gRPC ports or an
    UPGRADE policy (the mesh default is DO_NOT_UPGRADE), else none (Envoy's HTTP/1.1)."""
    http = policy.connection_pool.http if policy.connection_pool is not None else None
    if http is not None and http.use_client_protocol:
        return {"use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}}
    upgrade = http is not None and http.h2_upgrade_policy == "UPGRADE"
    if port.protocol.upper() in HTTP2_PROTOCOLS or upgrade:
        streams = http.max_concurrent_streams if http is not None else 0
        return {"explicit_http_config": {"http2_protocol_options": _h2_options(streams)}}
    return None


def _apply_connection_pool(cluster: Json, policy: EffectivePolicy) -> Json:
    """Circuit-breaker thresholds, connect timeout and keepalive on the cluster; returns the
    common_http_protocol_options (idle timeout, requests and lifetime per connection) the pool asks for."""
    pool = policy.connection_pool
    common: Json = {}
    if pool is None:
        return common
    thresholds = cluster["circuit_breakers"]["thresholds"][0]
    idle_timeout = None
    if pool.http is not None:
        http = pool.http
        if http.http2_max_requests > 0:
            thresholds["max_requests"] = http.http2_max_requests
        if http.http1_max_pending_requests > 0:
            thresholds["max_pending_requests"] = http.http1_max_pending_requests
        if http.max_retries > 0:
            thresholds["max_retries"] = http.max_retries
        idle_timeout = http.idle_timeout
        if http.max_requests_per_connection > 0:
            common["max_requests_per_connection"] = http.max_requests_per_connection
    if pool.tcp is not None:
        tcp = pool.tcp
        if tcp.connect_timeout is not None:
            cluster["connect_timeout"] = format_duration(tcp.connect_timeout)
        if tcp.max_connections > 0:
            thresholds["max_connections"] = tcp.max_connections
        if tcp.max_connection_duration is not None:
            common["max_connection_duration"] = format_duration(tcp.max_connection_duration)
        if idle_timeout is None:
            idle_timeout = tcp.idle_timeout
        if tcp.tcp_keepalive is not None:
            cluster["upstream_connection_options"] = {"tcp_keepalive": _keepalive(tcp.tcp_keepalive)}
    if idle_timeout is not None:
        common["idle_timeout"] = format_duration(idle_timeout)
    return common


def _h2_options(max_concurrent_streams: int) -> Json:
    return {"max_concurrent_streams": max_concurrent_streams} if max_concurrent_streams > 0 else {}


def _keepalive(keepalive: TcpKeepalive) -> Json:
    out: Json = {}
    if keepalive.probes > 0:
        out["keepalive_probes"] = keepalive.probes
    if keepalive.time is not None:
        out["keepalive_time"] = int(keepalive.time)
    if keepalive.interval is not None:
        out["keepalive_interval"] = int(keepalive.interval)
    return out


def _apply_outlier_detection(cluster: Json, policy: EffectivePolicy) -> None:
    outlier = policy.outlier_detection
    if outlier is None:
        return
    out: Json = {"enforcing_success_rate": 0}
    if outlier.consecutive_5xx_errors is not None:
        out["consecutive_5xx"] = outlier.consecutive_5xx_errors
        out["enforcing_consecutive_5xx"] = 100 if outlier.consecutive_5xx_errors > 0 else 0
    if outlier.consecutive_gateway_errors is not None:
        out["consecutive_gateway_failure"] = outlier.consecutive_gateway_errors
        out["enforcing_consecutive_gateway_failure"] = 100 if outlier.consecutive_gateway_errors > 0 else 0
    if outlier.interval is not None:
        out["interval"] = format_duration(outlier.interval)
    if outlier.base_ejection_time is not None:
        out["base_ejection_time"] = format_duration(outlier.base_ejection_time)
    if outlier.max_ejection_percent > 0:
        out["max_ejection_percent"] = outlier.max_ejection_percent
    if outlier.split_external_local_origin_errors:
        out["split_external_local_origin_errors"] = True
        failures = outlier.consecutive_local_origin_failures
        if failures:
            out["consecutive_local_origin_failure"] = failures
            out["enforcing_consecutive_local_origin_failure"] = 100
        out["enforcing_local_origin_success_rate"] = 0
    cluster["outlier_detection"] = out
    # Istio sets the panic threshold even at 0 (Envoy's default is 50): few endpoints per service in a mesh.
    cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": float(outlier.min_health_percent)}}
