"""Configs at the edge of Envoy's rules, each with the outcome pylon must give.

`test_envoy.py` checks pylon against `error` (None: the config loads); the
reference test runs the same configs through `envoy --mode validate` and checks
that Envoy accepts or refuses each one as pylon does. Every outcome here was
first observed with Envoy 1.40.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.config.builders import (
    HCM_PATH,
    HTTP_OPTIONS_TYPE,
    ROUTER_TYPE,
    ROUTES_PATH,
    STDOUT_LOG_TYPE,
    bootstrap,
    cluster,
    hcm,
    http_bootstrap,
    listener,
)

CLUSTER = "static_resources.clusters[0]"


@dataclass(frozen=True)
class Case:
    id: str
    data: dict[str, Any]
    #: "field.path: message" pylon must report (None: pylon and Envoy accept the config)
    error: str | None


def _listeners(*specs: tuple[str, str, int], **fields: Any) -> dict[str, Any]:
    """A bootstrap with one HCM listener per (name, address, port)."""
    return bootstrap([
        listener(hcm(), name=name, address={"socket_address": {"address": host, "port_value": port}}, **fields)
        for name, host, port in specs
    ])  # fmt: skip


def _route(**fields: Any) -> dict[str, Any]:
    return http_bootstrap([{"match": {"prefix": "/"}, **fields}])


def _route_action(**fields: Any) -> dict[str, Any]:
    return _route(route={"cluster": "svc", **fields})


def _add_header(key: str, value: str = "v") -> dict[str, Any]:
    return _route(route={"cluster": "svc"}, request_headers_to_add=[{"header": {"key": key, "value": value}}])


_MUTATION = {"name": "m", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"}}
_CODEC = {"name": "envoy.filters.http.upstream_codec",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}}
ROUTER_PATH = f"{HCM_PATH}.http_filters[0].typed_config"


def _upstream_filters(filters: list[dict[str, Any]]) -> dict[str, Any]:
    data = http_bootstrap()
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][-1]["typed_config"]["upstream_http_filters"] = filters
    return data


def _log_filter(log_filter: dict[str, Any]) -> dict[str, Any]:
    return http_bootstrap(access_log=[{"name": "log", "filter": log_filter, "typed_config": {"@type": STDOUT_LOG_TYPE}}])


def _cluster(**fields: Any) -> dict[str, Any]:
    return http_bootstrap(clusters=[cluster("svc", **fields)])


UDP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
UDP_FILTER = "static_resources.listeners[0].listener_filters[0]"


def _udp_listener(port: int = 10000, protocol: str = "UDP", **proxy: Any) -> dict[str, Any]:
    """A listener whose one listener filter is the UDP proxy (to `svc`, unless `proxy` says otherwise)."""
    return {"name": f"udp_{port}", "address": {"socket_address": {"protocol": protocol, "address": "127.0.0.1",
                                                                   "port_value": port}},
            "listener_filters": [{"name": "envoy.filters.udp_listener.udp_proxy", "typed_config": {
                "@type": UDP_PROXY_TYPE, "stat_prefix": "u", "cluster": "svc", **proxy}}]}


_UDP_TUNNEL = {"proxy_host": "proxy.example", "target_host": "target.example", "default_target_port": 443}
_UDP_CAPSULES = [{"name": "envoy.filters.udp.session.http_capsule", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.session.http_capsule.v3.FilterConfig"}}]


def _udp(*listeners: dict[str, Any]) -> dict[str, Any]:
    return bootstrap(list(listeners) or [_udp_listener()])


HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _common_options(**common: Any) -> dict[str, Any]:
    """Cluster fields: the typed HttpProtocolOptions (HTTP/1.1) with these common_http_protocol_options."""
    return {"typed_extension_protocol_options": {HTTP_OPTIONS_KEY: {
        "@type": HTTP_OPTIONS_TYPE, "common_http_protocol_options": common,
        "explicit_http_config": {"http_protocol_options": {}}}}}


_HEAP = "envoy.resource_monitors.fixed_heap"
_HEAP_TYPE = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
_HEAP_MONITOR = {"name": _HEAP, "typed_config": {"@type": _HEAP_TYPE, "max_heap_size_bytes": 1 << 30}}
_CX = "envoy.resource_monitors.global_downstream_max_connections"
_CX_MONITOR = {"name": _CX, "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
             "DownstreamConnectionsConfig", "max_active_downstream_connections": 1000}}


def _overload(monitors: list[dict[str, Any]], actions: list[dict[str, Any]]) -> dict[str, Any]:
    return {**bootstrap(), "overload_manager": {"resource_monitors": monitors, "actions": actions}}


def _action(name: str, trigger: dict[str, Any], monitor: str = _HEAP) -> dict[str, Any]:
    return {"name": f"envoy.overload_actions.{name}", "triggers": [{"name": monitor, **trigger}]}


DFP_CLUSTER_TYPE = "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig"
DFP_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig"


def _dfp(filter_cache: dict[str, Any] | None = None, typed: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A dynamic forward proxy cluster (cache `dfp`, or `typed`'s) with cluster `fields`; with `filter_cache`, an
    HTTP DFP filter naming that cache config too."""
    config = {"name": "svc", "lb_policy": "CLUSTER_PROVIDED", "cluster_type": {
        "name": "envoy.clusters.dynamic_forward_proxy",
        "typed_config": {"@type": DFP_CLUSTER_TYPE, "dns_cache_config": {"name": "dfp"}, **(typed or {})}}, **fields}
    filters = [] if filter_cache is None else [{"name": "envoy.filters.http.dynamic_forward_proxy", "typed_config": {
        "@type": DFP_FILTER_TYPE, "dns_cache_config": filter_cache}}]
    data = http_bootstrap(clusters=[config])
    hcm_config = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm_config["http_filters"] = filters + hcm_config["http_filters"]
    return data


def _health_check(**fields: Any) -> dict[str, Any]:
    check = {"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1}
    check.update(fields if "http_health_check" in fields else {"tcp_health_check": {}, **fields})
    return _cluster(health_checks=[check])


def _route_config(**fields: Any) -> dict[str, Any]:
    data = http_bootstrap()
    data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"].update(fields)
    return data


def _domains(*domains: str) -> dict[str, Any]:
    data = http_bootstrap()
    hcm_config = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm_config["route_config"]["virtual_hosts"][0]["domains"] = list(domains)
    return data


def _node(**fields: Any) -> dict[str, Any]:
    data = bootstrap()
    data["node"] = fields
    return data


def _typed_struct(wrapper: str, type_url: str | None, value: dict[str, Any] | None) -> dict[str, Any]:
    """An HTTP bootstrap whose router filter's config is a TypedStruct (`wrapper`) of `type_url` and `value`."""
    data = http_bootstrap()
    typed: dict[str, Any] = {"@type": f"type.googleapis.com/{wrapper}"}
    typed.update({"type_url": type_url} if type_url is not None else {})
    typed.update({"value": value} if value is not None else {})
    data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
        {"name": "envoy.filters.http.router", "typed_config": typed}]
    return data


def _nested(levels: int) -> dict[str, Any]:
    """A bootstrap whose JSON nests `levels` objects deep in total (node.metadata carries the depth)."""
    inner: dict[str, Any] = {}
    for _ in range(levels - 3):  # the bootstrap, node and metadata objects make 3 levels
        inner = {"a": inner}
    data = bootstrap()
    data["node"] = {"metadata": inner}
    return data


L0, L1 = "static_resources.listeners[0]", "static_resources.listeners[1]"
SAME = "two listeners cannot bind one address and port"
NS_A, NS_B = "/var/run/netns/pylon-case-a", "/var/run/netns/pylon-case-b"


def _namespaced(namespace: str, **fields: Any) -> dict[str, Any]:
    socket_address = {"address": "127.0.0.1", "port_value": 10000, **fields}
    if namespace:
        socket_address["network_namespace_filepath"] = namespace
    return {"socket_address": socket_address}


def _in_namespace(name: str, namespace: str, **fields: Any) -> dict[str, Any]:
    """An HCM listener on 127.0.0.1:10000 in `namespace` ("": the proxy's own)."""
    return listener(hcm(), name=name, address=_namespaced(namespace), **fields)


def _extra(namespace: str, **fields: Any) -> dict[str, Any]:
    """An AdditionalAddress, 127.0.0.1:10000 in `namespace`."""
    return {"address": _namespaced(namespace, **fields)}

CASES: tuple[Case, ...] = (
    # ---- item 4: listeners on one address
    Case("same-address", _listeners(("a", "127.0.0.1", 10000), ("b", "127.0.0.1", 10000)),
         f"{L1}.address: listener 'b' has the same address 127.0.0.1:10000 as listener 'a' ({L0}); {SAME}"),
    Case("same-wildcard", _listeners(("a", "0.0.0.0", 10000), ("b", "0.0.0.0", 10000)),
         f"{L1}.address: listener 'b' has the same address 0.0.0.0:10000 as listener 'a' ({L0}); {SAME}"),
    Case("same-ipv6-spelled-differently", _listeners(("a", "::1", 10000), ("b", "0:0::1", 10000)),
         f"{L1}.address: listener 'b' has the same address [::1]:10000 as listener 'a' ({L0}); {SAME}"),
    Case("same-address-unnamed", _listeners(("", "127.0.0.1", 10000), ("", "127.0.0.1", 10000)),
         f"{L1}.address: listener (unnamed) has the same address 127.0.0.1:10000 as listener (unnamed) ({L0}); {SAME}"),
    Case("same-address-without-reuse-port",
         _listeners(("a", "127.0.0.1", 10000), ("b", "127.0.0.1", 10000), enable_reuse_port=False),
         f"{L1}.address: listener 'b' has the same address 127.0.0.1:10000 as listener 'a' ({L0}); {SAME}"),
    Case("wildcard-and-loopback-on-one-port", _listeners(("a", "0.0.0.0", 10000), ("b", "127.0.0.1", 10000)), None),
    Case("ipv6-and-ipv4-wildcards", _listeners(("a", "::", 10000), ("b", "0.0.0.0", 10000)), None),
    Case("port-0-twice", _listeners(("a", "127.0.0.1", 0), ("b", "127.0.0.1", 0)), None),
    Case("different-ports", _listeners(("a", "127.0.0.1", 10000), ("b", "127.0.0.1", 10001)), None),
    # ---- network namespaces (the file is opened when serving, not here) and additional addresses
    Case("same-address-two-namespaces", bootstrap([_in_namespace("a", NS_A), _in_namespace("b", NS_B)]), None),
    Case("same-address-namespace-and-root", bootstrap([_in_namespace("a", NS_A), _in_namespace("b", "")]), None),
    Case("same-address-same-namespace", bootstrap([_in_namespace("a", NS_A), _in_namespace("b", NS_A)]),
         f"{L1}.address: listener 'b' has the same address 127.0.0.1:10000 in network namespace {NS_A} as listener "
         f"'a' ({L0}); {SAME}"),
    Case("additional-address-in-other-namespaces",
         bootstrap([_in_namespace("a", NS_A, additional_addresses=[_extra(NS_B), _extra("")])]), None),
    Case("additional-address-same-as-its-address", bootstrap([_in_namespace("a", NS_A, additional_addresses=[
        _extra(NS_A)])]), None),  # Envoy 1.40 serves it too: two SO_REUSEPORT sockets
    Case("additional-address-same-as-another-listener", bootstrap([
        _in_namespace("a", NS_A), _in_namespace("b", "", additional_addresses=[_extra(NS_A)])]),
         f"{L1}.additional_addresses[0].address: listener 'b' has the same address 127.0.0.1:10000 in network "
         f"namespace {NS_A} as listener 'a' ({L0}); {SAME}"),
    Case("additional-address-udp-on-tcp",
         bootstrap([_in_namespace("a", NS_A, additional_addresses=[_extra("", protocol="UDP")])]),
         f"{L0}.additional_addresses[0].address.socket_address.protocol: listener a: has different socket type. "
         "The listener only support same socket type for all the addresses."),
    Case("additional-address-on-internal-listener", {
        **bootstrap([listener(hcm(), name="i", address=None, internal_listener={},
                              additional_addresses=[_extra("")])]),
        "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}]},
         f"{L0}.additional_addresses: error adding listener 'i': address should not be used when an internal "
         "listener config is provided"),
    Case("endpoint-in-namespace", bootstrap(clusters=[{**cluster(), "load_assignment": {
        "cluster_name": "svc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": 80, "network_namespace_filepath": NS_A}}}}]}]}}]),
         f"{CLUSTER}.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address."
         "network_namespace_filepath: Invalid host configuration: hosts cannot specify network namespaces with their "
         "address"),
    # ---- item 11: how many pending connections one wake-up takes (unset: all)
    Case("accept-per-event-2", _listeners(("a", "127.0.0.1", 10000), max_connections_to_accept_per_socket_event=2),
         None),
    Case("accept-per-event-0", _listeners(("a", "127.0.0.1", 10000), max_connections_to_accept_per_socket_event=0),
         f"{L0}.max_connections_to_accept_per_socket_event: Expected `int` >= 1"),
    # ---- item 10: durations (Envoy's range applies to every Duration; gt/lt per field)
    Case("duration-max", _cluster(connect_timeout="9223372035.999999999s"), None),
    Case("duration-above-max", _cluster(connect_timeout="9223372036s"),
         f"{CLUSTER}.connect_timeout: invalid duration '9223372036s': out of range"),
    Case("duration-above-protobuf-max", _route_action(timeout="315576000001s"),
         f"{ROUTES_PATH}[0].route.timeout: invalid duration '315576000001s': out of range"),
    Case("duration-negative-nanos", _route_action(timeout={"seconds": 1, "nanos": -1}),
         f"{ROUTES_PATH}[0].route.timeout: invalid duration {{'seconds': 1, 'nanos': -1}}: must not be negative"),
    Case("connect-timeout-0", _cluster(connect_timeout="0s"), f"{CLUSTER}.connect_timeout: must be greater than 0s"),
    Case("dns-refresh-1ms", _cluster(dns_refresh_rate="0.001s"),
         f"{CLUSTER}.dns_refresh_rate: must be greater than 0.001s"),
    Case("dns-refresh-2ms", _cluster(dns_refresh_rate="0.002s"), None),
    Case("health-check-timeout-0", _health_check(timeout="0s"),
         f"{CLUSTER}.health_checks[0].timeout: must be greater than 0s"),
    Case("health-check-interval-0", _health_check(interval="0s"),
         f"{CLUSTER}.health_checks[0].interval: must be greater than 0s"),
    Case("health-check-no-traffic-0", _health_check(no_traffic_interval="0s"),
         f"{CLUSTER}.health_checks[0].no_traffic_interval: must be greater than 0s"),
    Case("outlier-interval-0", _cluster(outlier_detection={"interval": "0s"}),
         f"{CLUSTER}.outlier_detection.interval: must be greater than 0s"),
    Case("outlier-ejection-0", _cluster(outlier_detection={"base_ejection_time": "0s"}),
         f"{CLUSTER}.outlier_detection.base_ejection_time: must be greater than 0s"),
    Case("retry-back-off-base-0", _route_action(retry_policy={"retry_back_off": {"base_interval": "0s"}}),
         f"{ROUTES_PATH}[0].route.retry_policy.retry_back_off.base_interval: must be greater than 0s"),
    Case("retry-back-off-max-0", _route_action(retry_policy={"retry_back_off": {"base_interval": "1s", "max_interval": "0s"}}),
         f"{ROUTES_PATH}[0].route.retry_policy.retry_back_off.max_interval: must be greater than 0s"),
    Case("route-timeout-0", _route_action(timeout="0s"), None),
    # ---- numbers
    Case("direct-response-199", _route(direct_response={"status": 199}),
         f"{ROUTES_PATH}[0].direct_response.status: Expected `int` >= 200"),
    Case("direct-response-200", _route(direct_response={"status": 200}), None),
    Case("redirect-port-above-65535", _route(redirect={"port_redirect": 65536}), None),
    Case("max-requests-per-connection-0", _cluster(max_requests_per_connection=0), None),
    # ---- issue 11 item 6: a cluster's connection options, in the typed HttpProtocolOptions or deprecated fields
    Case("upstream-connection-options", _cluster(**_common_options(
        idle_timeout="0.5s", max_connection_duration="60s", max_requests_per_connection=2, max_headers_count=50)),
         None),
    Case("upstream-idle-timeout-0", _cluster(**_common_options(idle_timeout="0s")), None),
    Case("upstream-options-deprecated-field", _cluster(common_http_protocol_options={"idle_timeout": "0.5s"}), None),
    Case("max-requests-per-connection-deprecated-with-typed-options",
         _cluster(max_requests_per_connection=3, **_common_options(idle_timeout="1s")), None),
    Case("max-requests-per-connection-twice",
         _cluster(max_requests_per_connection=3, **_common_options(max_requests_per_connection=2)),
         f"{CLUSTER}.max_requests_per_connection: only one of max_requests_per_connection from Cluster or "
         "HttpProtocolOptions can be specified"),
    Case("upstream-max-headers-count-0", _cluster(**_common_options(max_headers_count=0)),
         f"{CLUSTER}.typed_extension_protocol_options[{HTTP_OPTIONS_KEY}].common_http_protocol_options"
         ".max_headers_count: Expected `int` >= 1"),
    Case("port-65536", _listeners(("a", "127.0.0.1", 65536)),
         f"{L0}.address.socket_address.port_value: Expected `int` <= 65535"),
    # ---- header text (PGV well_known_regex, max_bytes, max_items)
    Case("header-key-lf", _add_header("a\nb"),
         f"{ROUTES_PATH}[0].request_headers_to_add[0].header.key: must not contain NUL, CR or LF"),
    Case("header-key-ctl-and-space", _add_header("a\x01 b"), None),
    Case("header-value-cr", _add_header("a", "v\rx"),
         f"{ROUTES_PATH}[0].request_headers_to_add[0].header.value: must not contain NUL, CR or LF"),
    Case("header-value-nul", _add_header("a", "v\x00x"),
         f"{ROUTES_PATH}[0].request_headers_to_add[0].header.value: must not contain NUL, CR or LF"),
    Case("header-key-16385-bytes", _add_header("k" * 16385),
         f"{ROUTES_PATH}[0].request_headers_to_add[0].header.key: must be at most 16384 bytes"),
    Case("header-value-18000-utf8-bytes", _add_header("a", "\u20ac" * 6000),
         f"{ROUTES_PATH}[0].request_headers_to_add[0].header.value: must be at most 16384 bytes"),
    Case("1001-headers-to-add", _route(route={"cluster": "svc"}, request_headers_to_add=[
        {"header": {"key": f"h{i}", "value": "v"}} for i in range(1001)]),
         f"{ROUTES_PATH}[0].request_headers_to_add: Expected `array` of length <= 1000"),
    Case("route-header-to-remove-lf", _route(route={"cluster": "svc"}, request_headers_to_remove=["a\nb"]),
         f"{ROUTES_PATH}[0].request_headers_to_remove[0]: must not contain NUL, CR or LF"),
    Case("route-header-to-remove-empty", _route(route={"cluster": "svc"}, request_headers_to_remove=[""]),
         f"{ROUTES_PATH}[0].request_headers_to_remove[0]: must not be empty"),
    Case("route-config-header-to-remove-empty", _route_config(request_headers_to_remove=[""]), None),
    Case("weighted-cluster-header-to-remove-empty", _route(route={"weighted_clusters": {
        "clusters": [{"name": "svc", "weight": 1, "response_headers_to_remove": [""]}]}}), None),
    Case("route-config-header-to-remove-lf", _route_config(response_headers_to_remove=["a\nb"]),
         f"{HCM_PATH}.route_config.response_headers_to_remove[0]: must not contain NUL, CR or LF"),
    Case("weighted-cluster-header-to-remove-cr", _route(route={"weighted_clusters": {
        "clusters": [{"name": "svc", "weight": 1, "request_headers_to_remove": ["a\rb"]}]}}),
         f"{ROUTES_PATH}[0].route.weighted_clusters.clusters[0].request_headers_to_remove[0]: must not contain NUL, CR or LF"),
    Case("domain-empty", _domains(""), None),
    Case("domain-lf", _domains("a\nb"),
         f"{HCM_PATH}.route_config.virtual_hosts[0].domains[0]: must not contain NUL, CR or LF"),
    Case("prefix-rewrite-lf", _route_action(prefix_rewrite="/a\nb"),
         f"{ROUTES_PATH}[0].route.prefix_rewrite: must not contain NUL, CR or LF"),
    Case("host-rewrite-nul", _route_action(host_rewrite_literal="a\x00"),
         f"{ROUTES_PATH}[0].route.host_rewrite_literal: must not contain NUL, CR or LF"),
    Case("regex-rewrite-substitution-lf", _route_action(regex_rewrite={"pattern": {"regex": "a"}, "substitution": "\n"}),
         f"{ROUTES_PATH}[0].route.regex_rewrite.substitution: must not contain NUL, CR or LF"),
    Case("redirect-path-cr", _route(redirect={"path_redirect": "/a\rb"}),
         f"{ROUTES_PATH}[0].redirect.path_redirect: must not contain NUL, CR or LF"),
    Case("redirect-host-lf", _route(redirect={"host_redirect": "a\nb"}),
         f"{ROUTES_PATH}[0].redirect.host_redirect: must not contain NUL, CR or LF"),
    Case("redirect-prefix-rewrite-nul", _route(redirect={"prefix_rewrite": "/\x00"}),
         f"{ROUTES_PATH}[0].redirect.prefix_rewrite: must not contain NUL, CR or LF"),
    Case("hash-header-lf", _route_action(hash_policy=[{"header": {"header_name": "a\nb"}}]),
         f"{ROUTES_PATH}[0].route.hash_policy[0].header.header_name: must not contain NUL, CR or LF"),
    Case("header-matcher-name-lf", http_bootstrap([{"match": {"prefix": "/", "headers": [{"name": "a\nb"}]},
                                                   "route": {"cluster": "svc"}}]),
         f"{ROUTES_PATH}[0].match.headers[0].name: must not contain NUL, CR or LF"),
    Case("query-parameter-name-1025-bytes", http_bootstrap([{"match": {"prefix": "/", "query_parameters": [
        {"name": "q" * 1025}]}, "route": {"cluster": "svc"}}]),
         f"{ROUTES_PATH}[0].match.query_parameters[0].name: must be at most 1024 bytes"),
    Case("server-name-lf", http_bootstrap(server_name="a\nb"), f"{HCM_PATH}.server_name: must not contain NUL, CR or LF"),
    Case("via-cr", http_bootstrap(via="a\rb"), f"{HCM_PATH}.via: must not contain NUL, CR or LF"),
    Case("log-content-type-lf", http_bootstrap(access_log=[{"name": "log", "typed_config": {
        "@type": STDOUT_LOG_TYPE, "log_format": {"text_format_source": {"inline_string": "x"}, "content_type": "a\nb"}}}]),
         f"{HCM_PATH}.access_log[0].typed_config.log_format.content_type: must not contain NUL, CR or LF"),
    # ---- upstream HTTP filters
    Case("upstream-filters", _upstream_filters([_MUTATION, _CODEC]), None),
    Case("upstream-filters-codec-only", _upstream_filters([_CODEC]), None),
    Case("upstream-filters-rbac", _upstream_filters([{"name": "r", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC", "rules": {"policies": {"p": {
            "permissions": [{"header": {"name": "x-forwarded-proto", "present_match": True}}],
            "principals": [{"any": True}]}}}}}, _CODEC]), None),
    Case("upstream-filters-without-codec", _upstream_filters([_MUTATION]),
         f"{ROUTER_PATH}.upstream_http_filters[0]: the last filter must be the upstream codec filter "
         "(envoy.filters.http.upstream_codec), got m"),
    Case("upstream-filters-codec-first", _upstream_filters([_CODEC, _MUTATION]),
         f"{ROUTER_PATH}.upstream_http_filters[0]: envoy.filters.http.upstream_codec is terminal and must be the "
         "last filter"),
    Case("upstream-filters-cluster", _cluster(typed_extension_protocol_options={HTTP_OPTIONS_TYPE.split("/")[-1]: {
        "@type": HTTP_OPTIONS_TYPE, "explicit_http_config": {"http_protocol_options": {}},
        "http_filters": [_MUTATION, _CODEC]}}), None),
    # ---- access log filters and local_reply_config
    Case("log-filter-status-ge", _log_filter({"status_code_filter": {"comparison": {
        "op": "GE", "value": {"default_value": 400, "runtime_key": "access_log.errors"}}}}), None),
    Case("log-filter-unknown-flag", _log_filter({"response_flag_filter": {"flags": ["XX"]}}),
         f"{HCM_PATH}.access_log[0].filter.response_flag_filter.flags[0]: 'XX' is not a response flag (one of DC, DF, "
         "DI, DO, DPE, DR, DT, FI, IH, LH, LR, NC, NFCF, NR, OM, RFCF, RL, RLSE, SI, UAEX, UC, UDO, UF, UH, UMSDR, UO, "
         "UPE, UR, URX, UT)"),
    Case("log-filter-and-of-one", _log_filter({"and_filter": {"filters": [{"not_health_check_filter": {}}]}}),
         f"{HCM_PATH}.access_log[0].filter.and_filter.filters: Expected `array` of length >= 2"),
    Case("log-filter-comparison-without-value", _log_filter({"duration_filter": {"comparison": {"op": "GE"}}}),
         f"{HCM_PATH}.access_log[0].filter.duration_filter.comparison.value: missing required field"),
    Case("log-filter-empty", _log_filter({}), f"{HCM_PATH}.access_log[0].filter: exactly one of status_code_filter, "
         "duration_filter, not_health_check_filter, traceable_filter, runtime_filter, and_filter, or_filter, "
         "header_filter, response_flag_filter, grpc_status_filter, extension_filter, metadata_filter, log_type_filter "
         "must be set"),
    Case("local-reply-mapper", http_bootstrap(local_reply_config={"mappers": [
        {"filter": {"response_flag_filter": {"flags": ["NR"]}}, "status_code": 403,
         "body": {"inline_string": "no"}}], "body_format": {"text_format": "%LOCAL_REPLY_BODY%"}}), None),
    Case("local-reply-status-600", http_bootstrap(local_reply_config={"mappers": [
        {"filter": {"not_health_check_filter": {}}, "status_code": 600}]}),
         f"{HCM_PATH}.local_reply_config.mappers[0].status_code: Expected `int` <= 599"),
    Case("local-reply-mapper-without-filter", http_bootstrap(local_reply_config={"mappers": [{"status_code": 500}]}),
         f"{HCM_PATH}.local_reply_config.mappers[0].filter: missing required field"),
    Case("health-check-path-ctl", _health_check(http_health_check={"path": "/a\x01"}),
         f"{CLUSTER}.health_checks[0].http_health_check.path: must not contain control characters other than tab"),
    Case("health-check-host-ctl", _health_check(http_health_check={"path": "/", "host": "a\x7f"}),
         f"{CLUSTER}.health_checks[0].http_health_check.host: must not contain control characters other than tab"),
    Case("health-check-host-tab-and-space", _health_check(http_health_check={"path": "/", "host": "a\t b"}), None),
    # ---- the dynamic forward proxy
    Case("dfp", _dfp({"name": "dfp"}), None),
    Case("dfp-round-robin", _dfp(lb_policy="ROUND_ROBIN"), f"{CLUSTER}.lb_policy: cluster provided LB not specified "
         "but cluster 'svc' provided one: a cluster_type cluster picks its hosts itself (lb_policy CLUSTER_PROVIDED)"),
    Case("dfp-type-too", _dfp(type="STRICT_DNS"),
         f"{CLUSTER}.type: type and cluster_type are one choice (cluster_discovery_type): set one"),
    Case("dfp-typed-options-without-auto-sni", _dfp(**_common_options()),
         f"{CLUSTER}.typed_extension_protocol_options: dynamic_forward_proxy cluster must have auto_sni and "
         "auto_san_validation true unless allow_insecure_cluster_options is set."),
    Case("dfp-insecure-options", _dfp(typed={"allow_insecure_cluster_options": True}, **_common_options()), None),
    Case("dfp-cache-settings-differ", _dfp({"name": "dfp", "max_hosts": 3}),
         f"{HCM_PATH}.http_filters[0].typed_config.dns_cache_config: config specified DNS cache 'dfp' with different "
         "settings"),
    Case("dfp-min-refresh-below-1s", _dfp(typed={"dns_cache_config": {"name": "dfp", "dns_min_refresh_rate": "0.5s"}}),
         f"{CLUSTER}.cluster_type.typed_config.dns_cache_config.dns_min_refresh_rate: must be at least 1s"),
    # ---- subset load balancing
    Case("subset-selectors", _cluster(lb_subset_config={
        "fallback_policy": "DEFAULT_SUBSET", "default_subset": {"stage": "prod"}, "panic_mode_any": True,
        "list_as_any": True, "locality_weight_aware": True, "subset_selectors": [
            {"keys": ["version", "stage"], "fallback_policy": "KEYS_SUBSET", "fallback_keys_subset": ["version"]},
            {"keys": ["stage"], "fallback_policy": "ANY_ENDPOINT"}]},
        common_lb_config={"locality_weighted_lb_config": {}}), None),
    Case("subset-locality-aware-without-weights", _cluster(lb_subset_config={
        "locality_weight_aware": True, "subset_selectors": [{"keys": ["a"]}]}),
         f"{CLUSTER}.lb_subset_config.locality_weight_aware: Locality weight aware subset LB requires that a "
         "locality_weighted_lb_config be set"),
    Case("subset-route-metadata-match", _route_action(metadata_match={"filter_metadata": {"envoy.lb": {"v": "1"}}}),
         None),
    Case("subset-weighted-metadata-match", _route(route={"weighted_clusters": {"clusters": [
        {"name": "svc", "weight": 1, "metadata_match": {"filter_metadata": {"envoy.lb": {"v": 1}}}}]}}), None),
    Case("subset-keys-not-in-selector", _cluster(lb_subset_config={"subset_selectors": [
        {"keys": ["a", "b"], "fallback_policy": "KEYS_SUBSET", "fallback_keys_subset": ["c"]}]}),
         f"{CLUSTER}.lb_subset_config.subset_selectors[0].fallback_keys_subset: fallback_keys_subset must be a "
         "subset of selector keys"),
    Case("subset-keys-equal", _cluster(lb_subset_config={"subset_selectors": [
        {"keys": ["a", "b"], "fallback_policy": "KEYS_SUBSET", "fallback_keys_subset": ["b", "a"]}]}),
         f"{CLUSTER}.lb_subset_config.subset_selectors[0].fallback_keys_subset: fallback_keys_subset cannot be "
         "equal to keys"),
    Case("subset-keys-empty", _cluster(lb_subset_config={"subset_selectors": [
        {"keys": ["a"], "fallback_policy": "KEYS_SUBSET"}]}),
         f"{CLUSTER}.lb_subset_config.subset_selectors[0].fallback_keys_subset: fallback_keys_subset cannot be empty"),
    Case("subset-keys-without-keys-subset", _cluster(lb_subset_config={"subset_selectors": [
        {"keys": ["a", "b"], "fallback_policy": "ANY_ENDPOINT", "fallback_keys_subset": ["a"]}]}),
         f"{CLUSTER}.lb_subset_config.subset_selectors[0].fallback_keys_subset: fallback_keys_subset can be set "
         "only for KEYS_SUBSET fallback_policy"),
    Case("subset-cluster-provided", bootstrap(clusters=[{
        "name": "svc", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
        "lb_subset_config": {"subset_selectors": [{"keys": ["a"]}]}}]),
         f"{CLUSTER}.lb_subset_config: LB policy CLUSTER_PROVIDED cannot be combined with lb_subset_config"),
    # ---- protobuf JSON names: lowerCamelCase takes the place of the field name, at any depth
    Case("json-names", bootstrap(clusters=[{
        "name": "svc", "connectTimeout": "2s", "lbPolicy": "ROUND_ROBIN", "loadAssignment": {
            "clusterName": "svc", "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {
                "address": "127.0.0.1", "portValue": 8080}}}}]}]}}]), None),
    Case("original-dst-lb-config", bootstrap(clusters=[{
        "name": "svc", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "original_dst_lb_config": {
            "use_http_header": True, "http_header_name": ":authority", "upstream_port_override": 8080}}]), None),
    Case("original-dst-lb-port-above-max", bootstrap(clusters=[{
        "name": "svc", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
        "original_dst_lb_config": {"upstream_port_override": 65536}}]),
         f"{CLUSTER}.original_dst_lb_config.upstream_port_override: Expected `int` <= 65535"),
    Case("subset-redundant-keys-unknown", _cluster(lb_subset_config={"allow_redundant_keys": True}),
         f"{CLUSTER}.lb_subset_config.allow_redundant_keys: unknown field"),
    # ---- null: protobuf's JSON mapping reads it as "unset" for every field, and as a value inside a Struct
    Case("null-repeated-field", _listeners(("a", "127.0.0.1", 10000), listener_filters=None), None),
    Case("null-message-field", _cluster(connect_timeout=None, load_assignment=None), None),
    Case("null-in-typed-config", _route_config(response_headers_to_add=None, validate_clusters=None), None),
    Case("null-in-struct", _node(metadata={"key": None, "list": [None]}), None),
    Case("null-in-list", _listeners(("a", "127.0.0.1", 10000), listener_filters=[None]),
         f"{L0}.listener_filters[0]: Expected `object`, got `null`"),
    # ---- the cluster manager's own settings: only Envoy's defaults
    Case("cluster-manager-empty", {**bootstrap(), "cluster_manager": {}}, None),
    # ---- TypedStruct: an extension's config as JSON beside its type URL, in place of its Any
    Case("typed-struct", _typed_struct("xds.type.v3.TypedStruct", ROUTER_TYPE, {"suppress_envoy_headers": True}),
         None),
    Case("typed-struct-udpa", _typed_struct("udpa.type.v1.TypedStruct", ROUTER_TYPE, None), None),
    Case("typed-struct-bad-field", _typed_struct("xds.type.v3.TypedStruct", ROUTER_TYPE, {"no_such_field": 1}),
         f"{HCM_PATH}.http_filters[0].typed_config.value.no_such_field: unknown field"),
    Case("typed-struct-unknown-type", _typed_struct("xds.type.v3.TypedStruct", "type.googleapis.com/x.y.Z", {}),
         f"{HCM_PATH}.http_filters[0].typed_config.type_url: unknown HTTP filter type type.googleapis.com/x.y.Z"),
    Case("typed-struct-without-type-url", _typed_struct("xds.type.v3.TypedStruct", None, {}),
         f"{HCM_PATH}.http_filters[0].typed_config.type_url: missing required field"),
    # ---- overload manager
    Case("overload-monitors-and-actions", _overload([_HEAP_MONITOR, _CX_MONITOR], [
        _action("stop_accepting_requests", {"threshold": {"value": 0.9}}),
        _action("disable_http_keepalive", {"scaled": {"scaling_threshold": 0.8, "saturation_threshold": 0.95}}),
        _action("reject_incoming_connections", {"threshold": {"value": 0.9}}, monitor=_CX),
        _action("stop_accepting_connections", {"threshold": {"value": 0.99}})]), None),
    Case("overload-no-monitors", _overload([], []),
         "overload_manager.resource_monitors: value must contain at least 1 item(s)"),
    Case("overload-unknown-action", _overload([_HEAP_MONITOR], [_action("bogus", {"threshold": {"value": 0.9}})]),
         "overload_manager.actions[0].name: Unknown Overload Manager Action envoy.overload_actions.bogus"),
    Case("overload-unknown-trigger", _overload([_HEAP_MONITOR], [
        _action("stop_accepting_requests", {"threshold": {"value": 0.9}}, monitor="envoy.resource_monitors.nope")]),
         "overload_manager.actions[0].triggers[0].name: Unknown trigger resource envoy.resource_monitors.nope for "
         "overload action envoy.overload_actions.stop_accepting_requests"),
    Case("overload-duplicate-monitor", _overload([_HEAP_MONITOR, _HEAP_MONITOR], []),
         f"overload_manager.resource_monitors[1].name: Duplicate resource monitor {_HEAP}"),
    Case("overload-scaled-backwards", _overload([_HEAP_MONITOR], [
        _action("stop_accepting_requests", {"scaled": {"scaling_threshold": 0.9, "saturation_threshold": 0.8}})]),
         "overload_manager.actions[0].triggers[0].scaled: scaling_threshold must be less than saturation_threshold"),
    Case("overload-heap-zero", _overload([{"name": _HEAP, "typed_config": {"@type": _HEAP_TYPE}}], []),
         "overload_manager.resource_monitors[0].typed_config.max_heap_size_bytes: fixed_heap: max heap size must be "
         "greater than 0"),
    Case("overload-runtime-connections-limit", {**bootstrap(), "layered_runtime": {"layers": [
        {"name": "static", "static_layer": {"overload.global_downstream_max_connections": 100}}]}}, None),
    # ---- stats sinks
    Case("stats-sink-statsd", {**bootstrap(), "stats_flush_interval": "1s", "stats_sinks": [
        {"name": "envoy.stat_sinks.statsd", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.metrics.v3.StatsdSink", "prefix": "edge",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8125}}}}]}, None),
    Case("stats-sink-dog-statsd", {**bootstrap(), "stats_sinks": [
        {"name": "envoy.stat_sinks.dog_statsd", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8125}}}}]}, None),
    Case("bootstrap-extension-unknown-type", {**bootstrap(), "bootstrap_extensions": [
        {"name": "x", "typed_config": {"@type": "type.googleapis.com/acme.NoSuchExtension"}}]},
         "bootstrap_extensions[0].typed_config.@type: bootstrap extension type.googleapis.com/acme.NoSuchExtension is "
         "not supported: not a bootstrap extension pylon knows"),
    # ---- UDP listeners and the UDP proxy
    Case("udp-proxy-cluster", _udp(), None),
    Case("udp-proxy-socket-configs", _udp({**_udp_listener(
        upstream_socket_config={"max_rx_datagram_size": 9000, "prefer_gro": False}, idle_timeout="5s",
        hash_policies=[{"key": "rtp"}], use_per_packet_load_balancing=True),
        "udp_listener_config": {"downstream_socket_config": {"max_rx_datagram_size": 9000, "prefer_gro": True}}}),
         None),
    Case("udp-and-tcp-listener-one-port", _udp(_udp_listener(), listener(hcm(), address={"socket_address": {
        "address": "127.0.0.1", "port_value": 10000}})), None),
    Case("udp-proxy-on-tcp-listener", _udp(_udp_listener(protocol="TCP")),
         f"{UDP_FILTER}: Didn't find a registered implementation for 'envoy.filters.udp_listener.udp_proxy' with "
         "type URL: 'envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig' (a UDP listener filter; its "
         "listener's address says protocol: UDP)"),
    Case("udp-proxy-no-stat-prefix", _udp(_udp_listener(stat_prefix="")),
         f"{UDP_FILTER}.typed_config.stat_prefix: Expected `str` of length >= 1"),
    Case("udp-proxy-no-route", _udp(_udp_listener(cluster=None)),
         f"{UDP_FILTER}.typed_config: exactly one of cluster, matcher must be set"),
    Case("udp-proxy-hash-source-ip-false", _udp(_udp_listener(hash_policies=[{"source_ip": False}])),
         f"{UDP_FILTER}.typed_config.hash_policies[0].source_ip: value must equal true"),
    Case("udp-proxy-two-hash-policies", _udp(_udp_listener(hash_policies=[{"source_ip": True}, {"key": "k"}])),
         f"{UDP_FILTER}.typed_config.hash_policies: Expected `array` of length <= 1"),
    Case("udp-proxy-max-rx-datagram-size-0", _udp(_udp_listener(upstream_socket_config={"max_rx_datagram_size": 0})),
         f"{UDP_FILTER}.typed_config.upstream_socket_config.max_rx_datagram_size: Expected `int` >= 1"),
    Case("udp-proxy-tunneling", _udp(_udp_listener(
        session_filters=_UDP_CAPSULES,
        tunneling_config={**_UDP_TUNNEL, "proxy_port": 8443, "retry_options": {"max_connect_attempts": 2},
                          "buffer_options": {"max_buffered_datagrams": 8, "max_buffered_bytes": 4096},
                          "headers_to_add": [{"header": {"key": "p", "value": "%DOWNSTREAM_LOCAL_PORT%"}}]})), None),
    Case("udp-proxy-tunneling-per-packet", _udp(_udp_listener(
        tunneling_config=_UDP_TUNNEL, session_filters=_UDP_CAPSULES, use_per_packet_load_balancing=True)),
         f"{UDP_FILTER}.typed_config.use_per_packet_load_balancing: Only one of use_per_packet_load_balancing or "
         "tunneling_config can be used."),
    Case("udp-proxy-tunneling-no-port", _udp(_udp_listener(tunneling_config={**_UDP_TUNNEL, "default_target_port": 0},
                                                           session_filters=_UDP_CAPSULES)),
         f"{UDP_FILTER}.typed_config.tunneling_config.default_target_port: Expected `int` >= 1"),
    # ---- nesting (protobuf's JSON parser stops at 100 levels)
    Case("nested-100", _nested(100), None),
    Case("nested-101", _nested(101), "node.metadata" + ".a" * 98 + ": nested more than 100 levels deep"),
)  # fmt: skip
