"""Small builders of Envoy-shaped config dicts, so each test states only the part it is about."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from pylon.config.envoy import Bootstrap
from pylon.config.loader import parse_bootstrap

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
DOWNSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"
TLS_INSPECTOR_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
HTTP_INSPECTOR_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
ORIGINAL_DST_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

#: Path prefix of the HCM typed_config in configs built by `http_bootstrap`.
HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
ROUTES_PATH = f"{HCM_PATH}.route_config.virtual_hosts[0].routes"


def y(text: str) -> Any:
    """Parse a YAML snippet (keeps test configs in Envoy's own notation)."""
    return yaml.safe_load(text)


def router_filter() -> dict[str, Any]:
    return {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}


def hcm(routes: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    """An HttpConnectionManager typed_config with one catch-all virtual host."""
    config: dict[str, Any] = {
        "@type": HCM_TYPE,
        "stat_prefix": "ingress_http",
        "route_config": {
            "name": "local_route",
            "virtual_hosts": [
                {
                    "name": "backend",
                    "domains": ["*"],
                    "routes": routes if routes is not None else [{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}],
                }
            ],
        },
        "http_filters": [router_filter()],
    }
    config.update(fields)
    return config


def listener(typed_config: dict[str, Any], name: str = "listener_0", **fields: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 10000}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.any", "typed_config": typed_config}]}],
    }
    config.update(fields)
    return config


def cluster(name: str = "svc", *addresses: tuple[str, int], **fields: Any) -> dict[str, Any]:
    endpoints = addresses or (("127.0.0.1", 8080),)
    config: dict[str, Any] = {
        "name": name,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                        for host, port in endpoints
                    ]
                }
            ],
        },
    }
    config.update(fields)
    return config


def bootstrap(listeners: list[dict[str, Any]] | None = None, clusters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "static_resources": {
            "listeners": listeners if listeners is not None else [listener(hcm())],
            "clusters": clusters if clusters is not None else [cluster()],
        }
    }


def http_bootstrap(routes: list[dict[str, Any]] | None = None, clusters: list[dict[str, Any]] | None = None, **hcm_fields: Any) -> dict[str, Any]:
    """A bootstrap with one HCM listener (routes and HCM fields given) and the clusters given."""
    return bootstrap([listener(hcm(routes, **hcm_fields))], clusters)


def load(data: dict[str, Any]) -> Bootstrap:
    """Validate a config dict as if it came from the file `test.yaml` (copying: decoding must not mutate)."""
    return parse_bootstrap(copy.deepcopy(data), "test.yaml")


def the_hcm(boot: Bootstrap) -> Any:
    return boot.static_resources.listeners[0].filter_chains[0].filters[0].typed_config
