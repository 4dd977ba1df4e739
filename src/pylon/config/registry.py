"""Typed extensions by name: which Struct decodes a `typed_config` of a given `@type`.

Envoy resolves every `typed_config` through a factory registry keyed by the
message's type URL, with one category per place an extension can appear. pylon
does the same so that adding an extension (a private key provider, a regex
engine, a connection balancer, an HTTP filter) is one Struct plus one
`register_typed` call, never an edit of the core model.

Type URLs are compared by their message name, the part after the last "/", as
protobuf's `Any` does; `type.googleapis.com/` is the canonical prefix put back
when configs are re-encoded.

Extensions by name: the Structs of the core (the HTTP connection manager, the
router, TLS, ...) are registered by `envoy.py`; every other extension lives
with the code that runs it (key providers in `keys/`, balancers in
`proxy/balance/`, filters in `extensions/`), all of which import this
package. So config knows those extensions by name only (`EXTENSION_MODULES`,
strings) and imports an extension's module when its type is first asked for:
config never imports the layers above it (docs/architecture.md, "Layering"),
and a process imports only the extensions its configs name. Error messages
still list every known type, imported or not.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType

# Categories use Envoy's extension category names.
NETWORK_FILTER = "envoy.filters.network"
HTTP_FILTER = "envoy.filters.http"
#: A route's or virtual host's `typed_per_filter_config` values: each filter's per-route type (RBACPerRoute for
#: RBAC, the filter's own config for fault), as Envoy unpacks them - a filter config there is refused.
HTTP_FILTER_PER_ROUTE = "envoy.filters.http.per_route"
#: The router's `upstream_http_filters` and a cluster's `http_filters`: the filters between router and upstream.
UPSTREAM_HTTP_FILTER = "envoy.filters.http.upstream"
LISTENER_FILTER = "envoy.filters.listener"
#: A UDP listener's `listener_filters` (Envoy's UdpListenerFilter category: the UDP proxy).
UDP_LISTENER_FILTER = "envoy.filters.udp_listener"
ACCESS_LOGGER = "envoy.access_loggers"
DOWNSTREAM_TRANSPORT_SOCKET = "envoy.transport_sockets.downstream"
UPSTREAM_TRANSPORT_SOCKET = "envoy.transport_sockets.upstream"
UPSTREAM_OPTIONS = "envoy.upstream_options"
KEY_PROVIDER = "envoy.tls.key_providers"
CONNECTION_BALANCER = "envoy.network.connection_balance"
REGEX_ENGINE = "envoy.regex_engines"
#: A cluster's `cluster_type.typed_config`: custom cluster types, whose clusters find their hosts themselves.
CLUSTER_TYPE = "envoy.clusters"
#: HCM `tracing.provider.typed_config`: the tracer that makes, propagates and exports spans.
TRACER = "envoy.tracers"
#: The compressor / decompressor filters' `compressor_library` / `decompressor_library` (gzip, brotli, zstd).
COMPRESSOR_LIBRARY = "envoy.compression.compressor"
DECOMPRESSOR_LIBRARY = "envoy.compression.decompressor"
#: A route's cluster specifier plugins (`inline_cluster_specifier_plugin`, `cluster_specifier_plugins`).
CLUSTER_SPECIFIER = "envoy.router.cluster_specifier_plugin"
#: The overload manager's `resource_monitors[].typed_config` (fixed heap, downstream connections).
RESOURCE_MONITOR = "envoy.resource_monitors"
#: The bootstrap's `stats_sinks[].typed_config`: where the stats go at each flush (statsd).
STATS_SINK = "envoy.stats_sinks"
#: Bootstrap.bootstrap_extensions[] (the internal listener's)
BOOTSTRAP_EXTENSION = "envoy.bootstrap"

#: Human names used in error messages ("accepted here (network filters): ...").
CATEGORY_NAMES = MappingProxyType(
    {
        NETWORK_FILTER: "network filter",
        HTTP_FILTER: "HTTP filter",
        HTTP_FILTER_PER_ROUTE: "per-route HTTP filter config",
        UPSTREAM_HTTP_FILTER: "upstream HTTP filter",
        LISTENER_FILTER: "listener filter",
        UDP_LISTENER_FILTER: "UDP listener filter",
        ACCESS_LOGGER: "access logger",
        DOWNSTREAM_TRANSPORT_SOCKET: "downstream transport socket",
        UPSTREAM_TRANSPORT_SOCKET: "upstream transport socket",
        UPSTREAM_OPTIONS: "cluster protocol options",
        KEY_PROVIDER: "private key provider",
        CONNECTION_BALANCER: "connection balancer",
        REGEX_ENGINE: "regex engine",
        CLUSTER_TYPE: "cluster type",
        TRACER: "tracer",
        COMPRESSOR_LIBRARY: "compressor library",
        DECOMPRESSOR_LIBRARY: "decompressor library",
        CLUSTER_SPECIFIER: "cluster specifier plugin",
        RESOURCE_MONITOR: "resource monitor",
        STATS_SINK: "stats sink",
        BOOTSTRAP_EXTENSION: "bootstrap extension",
    }
)

TYPE_URL_PREFIX = "type.googleapis.com/"

#: category -> message name -> the module that registers its Struct when imported (extensions outside config).
#: Adding such an extension is its module plus its line here.
EXTENSION_MODULES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        KEY_PROVIDER: {
            "envoy.extensions.private_key_providers.cryptomb.v3alpha.CryptoMbPrivateKeyMethodConfig":
                "pylon.keys.config",
            "envoy.extensions.private_key_providers.qat.v3alpha.QatPrivateKeyMethodConfig": "pylon.keys.config",
            "pylon.key_providers.offload.v1.Offload": "pylon.keys.config",
            "pylon.key_providers.keyd.v1.Keyd": "pylon.keys.config",
            "envoy.extensions.private_key_providers.sgx.v3alpha.SgxPrivateKeyMethodConfig": "pylon.keys.config",
        },
        CONNECTION_BALANCER: {
            "pylon.connection_balance.v1.Dispatcher": "pylon.proxy.balance.dispatcher",
            "envoy.extensions.network.connection_balance.dlb.v3alpha.Dlb": "pylon.proxy.balance.dlb",
        },
        HTTP_FILTER: {
            "envoy.extensions.filters.http.buffer.v3.Buffer": "pylon.extensions.filters.http.buffer",
            "envoy.extensions.filters.http.compressor.v3.Compressor": "pylon.extensions.filters.http.compressor",
            "envoy.extensions.filters.http.cors.v3.Cors": "pylon.extensions.filters.http.cors",
            "envoy.extensions.filters.http.csrf.v3.CsrfPolicy": "pylon.extensions.filters.http.csrf",
            "envoy.extensions.filters.http.decompressor.v3.Decompressor": "pylon.extensions.filters.http.decompressor",
            "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig":
                "pylon.extensions.filters.http.dynamic_forward_proxy",
            "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz": "pylon.extensions.filters.http.ext_authz",
            "envoy.extensions.filters.http.fault.v3.HTTPFault": "pylon.extensions.filters.http.fault",
            "envoy.extensions.filters.http.grpc_http1_bridge.v3.Config":
                "pylon.extensions.filters.http.grpc_http1_bridge",
            "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder":
                "pylon.extensions.filters.http.grpc_json_transcoder",
            "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig": "pylon.extensions.filters.http.grpc_stats",
            "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb": "pylon.extensions.filters.http.grpc_web",
            "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation":
                "pylon.extensions.filters.http.header_mutation",
            "envoy.extensions.filters.http.health_check.v3.HealthCheck": "pylon.extensions.filters.http.health_check",
            "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication": "pylon.extensions.filters.http.jwt_authn",
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit":
                "pylon.extensions.filters.http.local_ratelimit",
            "envoy.extensions.filters.http.lua.v3.Lua": "pylon.extensions.filters.http.lua",
            "envoy.extensions.filters.http.rbac.v3.RBAC": "pylon.extensions.filters.http.rbac",
            "pylon.filters.http.v1.Python": "pylon.extensions.filters.http.python",
        },
        UPSTREAM_HTTP_FILTER: {
            "envoy.extensions.filters.http.buffer.v3.Buffer": "pylon.extensions.filters.http.buffer",
            "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation":
                "pylon.extensions.filters.http.header_mutation",
            "envoy.extensions.filters.http.lua.v3.Lua": "pylon.extensions.filters.http.lua",
            "envoy.extensions.filters.http.rbac.v3.RBAC": "pylon.extensions.filters.http.rbac",
        },
        HTTP_FILTER_PER_ROUTE: {
            "envoy.extensions.filters.http.buffer.v3.BufferPerRoute": "pylon.extensions.filters.http.buffer",
            "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute":
                "pylon.extensions.filters.http.compressor",
            "envoy.extensions.filters.http.cors.v3.CorsPolicy": "pylon.extensions.filters.http.cors",
            "envoy.extensions.filters.http.csrf.v3.CsrfPolicy": "pylon.extensions.filters.http.csrf",
            "envoy.extensions.filters.http.dynamic_forward_proxy.v3.PerRouteConfig":
                "pylon.extensions.filters.http.dynamic_forward_proxy",
            "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute": "pylon.extensions.filters.http.ext_authz",
            "envoy.extensions.filters.http.fault.v3.HTTPFault": "pylon.extensions.filters.http.fault",
            "envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute":
                "pylon.extensions.filters.http.header_mutation",
            "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig": "pylon.extensions.filters.http.jwt_authn",
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit":
                "pylon.extensions.filters.http.local_ratelimit",
            "envoy.extensions.filters.http.lua.v3.LuaPerRoute": "pylon.extensions.filters.http.lua",
            "envoy.extensions.filters.http.rbac.v3.RBACPerRoute": "pylon.extensions.filters.http.rbac",
        },
        COMPRESSOR_LIBRARY: {
            "envoy.extensions.compression.gzip.compressor.v3.Gzip": "pylon.extensions.compression.gzip",
            "envoy.extensions.compression.brotli.compressor.v3.Brotli": "pylon.extensions.compression.brotli",
            "envoy.extensions.compression.zstd.compressor.v3.Zstd": "pylon.extensions.compression.zstd",
        },
        DECOMPRESSOR_LIBRARY: {
            "envoy.extensions.compression.gzip.decompressor.v3.Gzip": "pylon.extensions.compression.gzip",
            "envoy.extensions.compression.brotli.decompressor.v3.Brotli": "pylon.extensions.compression.brotli",
            "envoy.extensions.compression.zstd.decompressor.v3.Zstd": "pylon.extensions.compression.zstd",
        },
        CLUSTER_TYPE: {
            "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig":
                "pylon.extensions.clusters.dynamic_forward_proxy",
        },
        CLUSTER_SPECIFIER: {
            "envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig":
                "pylon.extensions.router.cluster_specifiers.lua",
        },
        TRACER: {
            "envoy.config.trace.v3.ZipkinConfig": "pylon.extensions.tracers.zipkin",
            "envoy.config.trace.v3.OpenTelemetryConfig": "pylon.extensions.tracers.opentelemetry",
            "envoy.config.trace.v3.DatadogConfig": "pylon.extensions.tracers.datadog",
            "envoy.config.trace.v3.SkyWalkingConfig": "pylon.extensions.tracers.skywalking",
        },
        NETWORK_FILTER: {
            "envoy.extensions.filters.network.rbac.v3.RBAC": "pylon.extensions.filters.network.rbac",
            "envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig":
                "pylon.extensions.filters.network.sni_dynamic_forward_proxy",
        },
        UDP_LISTENER_FILTER: {
            "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig": "pylon.extensions.filters.udp.udp_proxy",
        },
        LISTENER_FILTER: {
            "envoy.extensions.filters.listener.original_dst.v3.OriginalDst":
                "pylon.extensions.filters.listener.original_dst",
            "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector":
                "pylon.extensions.filters.listener.tls_inspector",
            "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector":
                "pylon.extensions.filters.listener.http_inspector",
            "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol":
                "pylon.extensions.filters.listener.proxy_protocol",
        },
        DOWNSTREAM_TRANSPORT_SOCKET: {"envoy.extensions.transport_sockets.tap.v3.Tap": "pylon.extensions.transport_sockets.tap"},
        UPSTREAM_TRANSPORT_SOCKET: {"envoy.extensions.transport_sockets.tap.v3.Tap": "pylon.extensions.transport_sockets.tap"},
    }
)

_by_category: dict[str, dict[str, type]] = {category: {} for category in CATEGORY_NAMES}
_url_by_type: dict[type, str] = {}


def message_name(type_url: str) -> str:
    """`type.googleapis.com/envoy.x.v3.Foo` -> `envoy.x.v3.Foo` (what protobuf's Any keys on)."""
    return type_url.rsplit("/", 1)[-1]


def register_typed(category: str, type_url: str, struct_type: type) -> None:
    """Make `struct_type` the decoder of `typed_config`s with this `@type` in this category.

    Registering the same pair twice is a no-op (modules may be imported twice in
    tests); registering a different type under a taken URL is a programming error.
    """
    if category not in _by_category:
        raise ValueError(f"unknown extension category {category!r}; known: {', '.join(sorted(_by_category))}")
    name = message_name(type_url)
    registered = _by_category[category].get(name)
    if registered is not None and registered is not struct_type:
        raise ValueError(f"{type_url} is already registered in {category} as {registered.__qualname__}")
    _by_category[category][name] = struct_type
    _url_by_type[struct_type] = TYPE_URL_PREFIX + name


def lookup(category: str, type_url: str) -> type | None:
    """The Struct registered for `type_url` in `category`, or None; imports its extension's module on first use."""
    name = message_name(type_url)
    registered = _by_category[category]
    if name not in registered and name in EXTENSION_MODULES.get(category, {}):
        importlib.import_module(EXTENSION_MODULES[category][name])  # registers it
    return registered.get(name)


def _known(category: str) -> set[str]:
    """Message names accepted in `category`: registered, or named in `EXTENSION_MODULES` (imported or not)."""
    return _by_category[category].keys() | EXTENSION_MODULES.get(category, {}).keys()


def type_urls(category: str) -> frozenset[str]:
    """Canonical type URLs accepted in `category`."""
    return frozenset(TYPE_URL_PREFIX + name for name in _known(category))


def categories_of(type_url: str) -> frozenset[str]:
    """Every category `type_url` is accepted in (to explain a wrong-position @type)."""
    name = message_name(type_url)
    return frozenset(category for category in _by_category if name in _known(category))


def type_url_of(struct_type: type) -> str | None:
    """The canonical type URL of a registered Struct (for `@type` when re-encoding)."""
    return _url_by_type.get(struct_type)
