"""ServiceEntry `resolution: DYNAMIC_DNS`: wildcard hosts served by Envoy's dynamic forward proxy, as istiod does.

istiod (pilot/pkg/networking/core: cluster_builder.go buildDFPCluster, listener_builder.go, cluster_tls.go
setAutoSniAndAutoSanValidation, networkfilter.go buildSNIDFPFilter, tls.go) gives each HTTP-family or TLS port of
such a service a cluster `outbound|<port>||<host>`
of type `envoy.clusters.dynamic_forward_proxy` (lb_policy CLUSTER_PROVIDED, no endpoints, no subsets) whose DNS
cache is named `<host>_dfp_dns_cache`, and puts a dynamic forward proxy HTTP filter naming the same cache (same
settings: Envoy shares caches by name and refuses two settings) in the sidecar's outbound connection manager of the
port: requests to `*.example.com` are resolved by their Host and sent there. A TLS port's outbound chain matches
the wildcard host as server name and puts the SNI dynamic forward proxy network filter (same cache, `port_value`
the listener's port) before its tcp_proxy to the cluster: the connection's SNI is resolved and the connection
passed through to it (the cluster has no TLS of its own there). Gateways get the clusters (Envoy 1.40's
cluster resolves a name itself), not the filter. Upstream TLS from a DestinationRule: the request's name as SNI
unless the rule sets one, and the server must carry it unless verification is skipped; whatever turns either off
sets the cluster's `allow_insecure_cluster_options`.

Departures: the lookup family is V4_ONLY, as pylon pilot's DNS clusters (istiod picks by the proxy's addresses:
V6_ONLY for an IPv6-only proxy); pylon's one outbound listener per port carries a filter for each DYNAMIC_DNS
service of the port (istiod's listener per service carries its own); a cluster whose typed protocol options have
no TLS by request host (a GRPC port, a connection pool setting) gets `auto_sni` and `auto_san_validation` there
(`IMPLIED_OPTIONS`, what Envoy implies without typed options), where istiod's shape has none and Envoy refuses it.
"""

from __future__ import annotations

from typing import Any

from pylon.pilot.gen.types import Json
from pylon.pilot.istio.networking import ClientTLSSettings
from pylon.pilot.snapshot import Service

CLUSTER_TYPE = "envoy.clusters.dynamic_forward_proxy"
CLUSTER_CONFIG = "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig"
FILTER = "envoy.filters.http.dynamic_forward_proxy"
FILTER_CONFIG = "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig"
SNI_FILTER = "envoy.filters.network.sni_dynamic_forward_proxy"
SNI_FILTER_CONFIG = "type.googleapis.com/envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig"
#: What Envoy's factory gives a DFP cluster without upstream options of its own; written out where typed options
#: would otherwise go without them (Envoy refuses that).
IMPLIED_OPTIONS: Json = {"auto_sni": True, "auto_san_validation": True}


def is_dynamic_dns(service: Service) -> bool:
    """A wildcard host of a DYNAMIC_DNS ServiceEntry (the check of ServiceEntry makes every host of one wildcard)."""
    return service.entry.spec.resolution == "DYNAMIC_DNS" and service.hostname.startswith("*")


def dns_cache_config(service: Service) -> Json:
    """The cache the service's cluster and filter share (model.BuildDNSCacheName: `<host>_dfp_dns_cache`)."""
    return {"name": f"{service.hostname}_dfp_dns_cache", "dns_lookup_family": "V4_ONLY"}


def cluster_type(service: Service) -> Json:
    return {"name": CLUSTER_TYPE, "typed_config": {"@type": CLUSTER_CONFIG, "dns_cache_config": dns_cache_config(service)}}


def http_filter(service: Service) -> Json:
    """The sidecar outbound HCM's filter for the service (BuildSidecarOutboundDynamicForwardProxyFilter)."""
    return {"name": FILTER, "typed_config": {"@type": FILTER_CONFIG, "dns_cache_config": dns_cache_config(service)}}


def sni_filter(service: Service, port: int) -> Json:
    """The sidecar outbound TLS chain's filter for the service, before its tcp_proxy (buildSNIDFPFilter): the
    connection's SNI resolved through the cluster's cache, the upstream on the listener's port."""
    return {"name": SNI_FILTER, "typed_config": {"@type": SNI_FILTER_CONFIG, "dns_cache_config": dns_cache_config(service),
                                                 "port_value": port}}


def auto_sni_options(cluster: Json, tls: ClientTLSSettings) -> dict[str, Any]:
    """istiod's setAutoSniAndAutoSanValidation for a DFP cluster with upstream TLS: the upstream options to add;
    `allow_insecure_cluster_options` when the rule's `sni` or `insecureSkipVerify` turns one of the two off."""
    skip_verify = bool(tls.insecure_skip_verify)
    options: dict[str, Any] = {}
    if not tls.sni:
        options["auto_sni"] = True
    if not skip_verify:
        options["auto_san_validation"] = True
    if skip_verify or tls.sni:
        cluster["cluster_type"]["typed_config"]["allow_insecure_cluster_options"] = True
    return options
