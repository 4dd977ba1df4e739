"""What a sidecar's inbound and outbound sides share: addresses, the connection managers and tcp_proxies of its
chains, and the ORIGINAL_DST clusters, in Istio's shapes."""

from __future__ import annotations

from pylon.pilot.gen.types import HCM, ROUTER, TCP_PROXY, TLS_INSPECTOR, Json, route_configured_filters
from pylon.pilot.istio.common import format_duration

WILDCARD = "0.0.0.0"
LOCALHOST = "127.0.0.1"
# The source of the sidecar's connections to its own app: capture rules let it through, the app sees the sidecar.
INBOUND_SOURCE = "127.0.0.6"
VIRTUAL_OUTBOUND_PORT = 15001
VIRTUAL_INBOUND_PORT = 15006


def socket_address(address: str, port: int) -> Json:
    return {"socket_address": {"address": address, "port_value": port}}


def hcm(stat_prefix: str, routes: Json, inbound: bool = False, rbac: list[Json] | None = None,
        last: list[Json] | None = None) -> Json:
    """An HTTP connection manager (`routes`: `rds` or an inline `route_config`), inbound ones forwarding the
    client certificate's details as Istio's do; `rbac` filters first, `last` ones just before the router (as
    istiod orders them)."""
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


def tcp_proxy_to(cluster: str) -> Json:
    """A tcp_proxy to `cluster`, with the cluster's name as stat prefix."""
    return {"name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY, "stat_prefix": cluster, "cluster": cluster}}  # fmt: skip


def tls_inspector() -> Json:
    return {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}}


def original_dst_cluster(name: str, connect_timeout: float, source: str = "") -> Json:
    """Connections go where they were addressed (PassthroughCluster, InboundPassthroughCluster, inbound|port||)."""
    cluster: Json = {"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                     "connect_timeout": format_duration(connect_timeout)}  # fmt: skip
    if source:
        cluster["upstream_bind_config"] = {"source_address": {"address": source, "port_value": 0}}
    return cluster
