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
#: Http1ProtocolOptions.header_key_format.stateful_formatter (preserve_case)
STATEFUL_HEADER_FORMATTER = "envoy.http.stateful_header_formatters"
#: The data inputs of matchers (config/matcher.py) over an HTTP stream, and over a connection; a virtual host's
#: matcher takes only request headers (Envoy: "Route table can only match on request headers").
HTTP_MATCH_INPUT = "envoy.matching.http.input"
NETWORK_MATCH_INPUT = "envoy.matching.network.input"
ROUTE_MATCH_INPUT = "envoy.matching.http.input.route"
#: The RBAC filters' matcher: its inputs (request headers, the connection's) and actions (config.rbac.v3.Action)
RBAC_MATCH_INPUT = "envoy.matching.http.input.rbac"
RBAC_MATCH_ACTION = "envoy.matching.action.rbac"
#: A single predicate's `custom_match`: input matchers (CIDR ranges, Hyperscan)
INPUT_MATCHER = "envoy.matching.input_matchers"
#: The actions of a virtual host's matcher (Route, RouteList)
ROUTE_MATCH_ACTION = "envoy.matching.action.route"
#: The actions of an HTTP filter's matcher (ExtensionWithMatcher): SkipFilter, the composite's ExecuteFilterAction
HTTP_FILTER_MATCH_ACTION = "envoy.matching.action.http_filter"
#: The actions of a listener's filter_chain_matcher: a filter chain's name (google.protobuf.StringValue)
FILTER_CHAIN_MATCH_ACTION = "envoy.matching.action.filter_chain"
#: The actions of a UDP proxy's route matcher: udp_proxy.v3.Route (a cluster's name)
UDP_ROUTE_MATCH_ACTION = "envoy.matching.action.udp_route"
#: A matcher_tree's `custom_match`: custom match trees (xds.type.matcher.v3.IPMatcher)
CUSTOM_MATCHER = "envoy.matching.custom_matchers"
#: the cache filters' storage (CacheConfig.typed_config, CacheV2Config.typed_config)
HTTP_CACHE = "envoy.http.cache"
HTTP_CACHE_V2 = "envoy.http.cache_v2"
#: where stateful_session keeps a session's host (StatefulSession.session_state)
SESSION_STATE = "envoy.http.stateful_session"
#: the credential_injector filter's credential sources (generic secret, OAuth2)
INJECTED_CREDENTIALS = "envoy.http.injected_credentials"
#: `typed_filter_metadata` values (config.core.v3.Metadata) some reader knows: gcp_authn's Audience
TYPED_METADATA = "envoy.typed_metadata"
#: what sse_to_metadata hands each event's data to (JsonContentParser)
CONTENT_PARSER = "envoy.content_parsers"

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
        STATEFUL_HEADER_FORMATTER: "stateful header formatter",
        HTTP_MATCH_INPUT: "HTTP matching input",
        NETWORK_MATCH_INPUT: "network matching input",
        ROUTE_MATCH_INPUT: "route matching input",
        INPUT_MATCHER: "input matcher",
        RBAC_MATCH_INPUT: "RBAC matching input",
        RBAC_MATCH_ACTION: "RBAC matching action",
        ROUTE_MATCH_ACTION: "route matching action",
        HTTP_FILTER_MATCH_ACTION: "HTTP filter matching action",
        FILTER_CHAIN_MATCH_ACTION: "filter chain matching action",
        UDP_ROUTE_MATCH_ACTION: "UDP route matching action",
        CUSTOM_MATCHER: "custom match tree",
        HTTP_CACHE: "HTTP cache storage",
        HTTP_CACHE_V2: "HTTP cache (v2) storage",
        SESSION_STATE: "stateful session state",
        INJECTED_CREDENTIALS: "injected credential",
        TYPED_METADATA: "typed filter metadata",
        CONTENT_PARSER: "content parser",
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
            "envoy.extensions.common.matching.v3.ExtensionWithMatcher": "pylon.extensions.filters.http.match_delegate",
            "envoy.extensions.filters.http.admission_control.v3.AdmissionControl":
                "pylon.extensions.filters.http.admission_control",
            "envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth": "pylon.extensions.filters.http.api_key_auth",
            "envoy.extensions.filters.http.aws_lambda.v3.Config": "pylon.extensions.filters.http.aws_lambda",
            "envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigning":
                "pylon.extensions.filters.http.aws_request_signing",
            "envoy.extensions.filters.http.bandwidth_limit.v3.BandwidthLimit":
                "pylon.extensions.filters.http.bandwidth_limit",
            "envoy.extensions.filters.http.buffer.v3.Buffer": "pylon.extensions.filters.http.buffer",
            "envoy.extensions.filters.http.cache.v3.CacheConfig": "pylon.extensions.filters.http.cache",
            "envoy.extensions.filters.http.cache_v2.v3.CacheV2Config": "pylon.extensions.filters.http.cache",
            "envoy.extensions.filters.http.composite.v3.Composite": "pylon.extensions.filters.http.composite",
            "envoy.extensions.filters.http.compressor.v3.Compressor": "pylon.extensions.filters.http.compressor",
            "envoy.extensions.filters.http.credential_injector.v3.CredentialInjector":
                "pylon.extensions.filters.http.credential_injector",
            "envoy.extensions.filters.http.cors.v3.Cors": "pylon.extensions.filters.http.cors",
            "envoy.extensions.filters.http.csrf.v3.CsrfPolicy": "pylon.extensions.filters.http.csrf",
            "envoy.extensions.filters.http.decompressor.v3.Decompressor": "pylon.extensions.filters.http.decompressor",
            "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig":
                "pylon.extensions.filters.http.dynamic_forward_proxy",
            "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz": "pylon.extensions.filters.http.ext_authz",
            "envoy.extensions.filters.http.fault.v3.HTTPFault": "pylon.extensions.filters.http.fault",
            "envoy.extensions.filters.http.gcp_authn.v3.GcpAuthnFilterConfig":
                "pylon.extensions.filters.http.gcp_authn",
            "envoy.extensions.filters.http.grpc_http1_bridge.v3.Config":
                "pylon.extensions.filters.http.grpc_http1_bridge",
            "envoy.extensions.filters.http.grpc_http1_reverse_bridge.v3.FilterConfig":
                "pylon.extensions.filters.http.grpc_http1_reverse_bridge",
            "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder":
                "pylon.extensions.filters.http.grpc_json_transcoder",
            "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig": "pylon.extensions.filters.http.grpc_stats",
            "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb": "pylon.extensions.filters.http.grpc_web",
            "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation":
                "pylon.extensions.filters.http.header_mutation",
            "envoy.extensions.filters.http.header_to_metadata.v3.Config":
                "pylon.extensions.filters.http.header_to_metadata",
            "envoy.extensions.filters.http.health_check.v3.HealthCheck": "pylon.extensions.filters.http.health_check",
            "envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata":
                "pylon.extensions.filters.http.json_to_metadata",
            "envoy.extensions.filters.http.sse_to_metadata.v3.SseToMetadata":
                "pylon.extensions.filters.http.sse_to_metadata",
            "envoy.extensions.filters.http.transform.v3.TransformConfig": "pylon.extensions.filters.http.transform",
            "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication": "pylon.extensions.filters.http.jwt_authn",
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit":
                "pylon.extensions.filters.http.local_ratelimit",
            "envoy.extensions.filters.http.lua.v3.Lua": "pylon.extensions.filters.http.lua",
            "envoy.extensions.filters.http.rbac.v3.RBAC": "pylon.extensions.filters.http.rbac",
            "envoy.extensions.filters.http.set_metadata.v3.Config": "pylon.extensions.filters.http.set_metadata",
            "envoy.extensions.filters.http.stateful_session.v3.StatefulSession":
                "pylon.extensions.filters.http.stateful_session",
            "pylon.filters.http.v1.Python": "pylon.extensions.filters.http.python",
        },
        UPSTREAM_HTTP_FILTER: {
            "envoy.extensions.filters.http.aws_lambda.v3.Config": "pylon.extensions.filters.http.aws_lambda",
            "envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigning":
                "pylon.extensions.filters.http.aws_request_signing",
            "envoy.extensions.filters.http.buffer.v3.Buffer": "pylon.extensions.filters.http.buffer",
            "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation":
                "pylon.extensions.filters.http.header_mutation",
            "envoy.extensions.filters.http.lua.v3.Lua": "pylon.extensions.filters.http.lua",
            "envoy.extensions.filters.http.rbac.v3.RBAC": "pylon.extensions.filters.http.rbac",
        },
        HTTP_FILTER_PER_ROUTE: {
            "envoy.extensions.filters.http.grpc_http1_reverse_bridge.v3.FilterConfigPerRoute":
                "pylon.extensions.filters.http.grpc_http1_reverse_bridge",
            "envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute":
                "pylon.extensions.filters.http.api_key_auth",
            "envoy.extensions.filters.http.aws_lambda.v3.PerRouteConfig": "pylon.extensions.filters.http.aws_lambda",
            "envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigningPerRoute":
                "pylon.extensions.filters.http.aws_request_signing",
            "envoy.extensions.filters.http.bandwidth_limit.v3.BandwidthLimit":
                "pylon.extensions.filters.http.bandwidth_limit",
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
            "envoy.extensions.filters.http.header_to_metadata.v3.Config":
                "pylon.extensions.filters.http.header_to_metadata",
            "envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata":
                "pylon.extensions.filters.http.json_to_metadata",
            "envoy.extensions.filters.http.transform.v3.TransformConfig": "pylon.extensions.filters.http.transform",
            "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig": "pylon.extensions.filters.http.jwt_authn",
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit":
                "pylon.extensions.filters.http.local_ratelimit",
            "envoy.extensions.filters.http.lua.v3.LuaPerRoute": "pylon.extensions.filters.http.lua",
            "envoy.extensions.filters.http.rbac.v3.RBACPerRoute": "pylon.extensions.filters.http.rbac",
            "envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute":
                "pylon.extensions.filters.http.stateful_session",
        },
        RBAC_MATCH_ACTION: {"envoy.config.rbac.v3.Action": "pylon.extensions.filters.common.rbac_matcher"},
        HTTP_FILTER_MATCH_ACTION: {
            "envoy.extensions.filters.common.matcher.action.v3.SkipFilter":
                "pylon.extensions.filters.http.match_delegate",
            "envoy.extensions.filters.http.composite.v3.ExecuteFilterAction":
                "pylon.extensions.filters.http.composite",
        },
        TYPED_METADATA: {
            "envoy.extensions.filters.http.gcp_authn.v3.Audience": "pylon.extensions.filters.http.gcp_authn",
            "envoy.config.core.v3.PerHostConfig": "pylon.extensions.transport_sockets.proxy_protocol",
        },
        INJECTED_CREDENTIALS: {
            "envoy.extensions.http.injected_credentials.generic.v3.Generic":
                "pylon.extensions.filters.http.credential_injector",
            "envoy.extensions.http.injected_credentials.oauth2.v3.OAuth2":
                "pylon.extensions.filters.http.credential_injector",
        },
        CONTENT_PARSER: {
            "envoy.extensions.content_parsers.json.v3.JsonContentParser":
                "pylon.extensions.content_parsers.json_parser",
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
        HTTP_CACHE: {
            "envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig":
                "pylon.extensions.filters.http.cache",
            "envoy.extensions.http.cache.file_system_http_cache.v3.FileSystemHttpCacheConfig":
                "pylon.extensions.filters.http.cache_file_system",
        },
        HTTP_CACHE_V2: {
            "envoy.extensions.http.cache_v2.simple_http_cache.v3.SimpleHttpCacheV2Config":
                "pylon.extensions.filters.http.cache",
            "envoy.extensions.http.cache_v2.file_system_http_cache.v3.FileSystemHttpCacheV2Config":
                "pylon.extensions.filters.http.cache_file_system",
        },
        SESSION_STATE: {
            "envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState":
                "pylon.extensions.filters.http.stateful_session",
            "envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState":
                "pylon.extensions.filters.http.stateful_session",
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
            "envoy.extensions.filters.network.redis_proxy.v3.RedisProxy":
                "pylon.extensions.filters.network.redis_proxy.config",
        },
        UPSTREAM_OPTIONS: {
            "envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions":
                "pylon.extensions.filters.network.redis_proxy.config",
        },
        UDP_LISTENER_FILTER: {
            "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig": "pylon.extensions.filters.udp.udp_proxy",
        },
        UDP_ROUTE_MATCH_ACTION: {
            "envoy.extensions.filters.udp.udp_proxy.v3.Route": "pylon.extensions.filters.udp.udp_proxy",
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
        STATS_SINK: {
            "envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig": "pylon.extensions.stat_sinks.open_telemetry",
        },
        UPSTREAM_TRANSPORT_SOCKET: {
            "envoy.extensions.transport_sockets.tap.v3.Tap": "pylon.extensions.transport_sockets.tap",
            "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport":
                "pylon.extensions.transport_sockets.proxy_protocol",
        },
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
