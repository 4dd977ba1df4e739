"""xDS type URLs and the shape generators return."""

from __future__ import annotations

from typing import Any

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
NAME_TABLE = "type.googleapis.com/istio.networking.nds.v1.NameTable"  # Istio's DNS table, for agents (not Envoy)

# Istio's push order: clusters before the endpoints they name, listeners before their routes, then secrets; the
# agent's DNS table last.
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, NAME_TABLE)
SHORT_NAMES = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds", SECRET: "sds", NAME_TABLE: "nds"}

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ORIGINAL_DST_FILTER = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RAW_BUFFER = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
TLS_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
RBAC_HTTP = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_NETWORK = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
HTTP_PROTOCOL_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
PREVIOUS_PRIORITIES = "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig"

def route_configured_filters() -> list[dict[str, Any]]:
    """The filters istiod puts in every HTTP connection manager just before the router (after RBAC), whether or
    not a route uses them, because routes may carry per-route configs for them (listener_builder.go)."""
    return [{"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT}},
            {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS}}]


# A resource as proto-JSON, and a proxy's resources: {type URL: {resource name: resource}}.
Json = dict[str, Any]
Resources = dict[str, dict[str, Json]]

# ADS as the config source of RDS and EDS, as Istio writes it.
ADS_SOURCE: Json = {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
