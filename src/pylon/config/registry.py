"""Typed extensions by name: which Struct decodes a `typed_config` of a given `@type`.

Envoy resolves every `typed_config` through a factory registry keyed by the
message's type URL, with one category per place an extension can appear. pylon
does the same so that adding an extension (a private key provider, a regex
engine, a connection balancer, an HTTP filter) is one Struct plus one
`register_typed` call, never an edit of the core model.

Type URLs are compared by their message name, the part after the last "/", as
protobuf's `Any` does; `type.googleapis.com/` is the canonical prefix put back
when configs are re-encoded.
"""

from __future__ import annotations

from types import MappingProxyType

# Categories use Envoy's extension category names.
NETWORK_FILTER = "envoy.filters.network"
HTTP_FILTER = "envoy.filters.http"
#: A route's or virtual host's `typed_per_filter_config` values: each filter's per-route type (RBACPerRoute for
#: RBAC, the filter's own config for fault), as Envoy unpacks them - a filter config there is refused.
HTTP_FILTER_PER_ROUTE = "envoy.filters.http.per_route"
LISTENER_FILTER = "envoy.filters.listener"
ACCESS_LOGGER = "envoy.access_loggers"
DOWNSTREAM_TRANSPORT_SOCKET = "envoy.transport_sockets.downstream"
UPSTREAM_TRANSPORT_SOCKET = "envoy.transport_sockets.upstream"
UPSTREAM_OPTIONS = "envoy.upstream_options"
KEY_PROVIDER = "envoy.tls.key_providers"
CONNECTION_BALANCER = "envoy.network.connection_balance"
REGEX_ENGINE = "envoy.regex_engines"

#: Human names used in error messages ("accepted here (network filters): ...").
CATEGORY_NAMES = MappingProxyType(
    {
        NETWORK_FILTER: "network filter",
        HTTP_FILTER: "HTTP filter",
        HTTP_FILTER_PER_ROUTE: "per-route HTTP filter config",
        LISTENER_FILTER: "listener filter",
        ACCESS_LOGGER: "access logger",
        DOWNSTREAM_TRANSPORT_SOCKET: "downstream transport socket",
        UPSTREAM_TRANSPORT_SOCKET: "upstream transport socket",
        UPSTREAM_OPTIONS: "cluster protocol options",
        KEY_PROVIDER: "private key provider",
        CONNECTION_BALANCER: "connection balancer",
        REGEX_ENGINE: "regex engine",
    }
)

TYPE_URL_PREFIX = "type.googleapis.com/"

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
    """The Struct registered for `type_url` in `category`, or None."""
    return _by_category[category].get(message_name(type_url))


def type_urls(category: str) -> frozenset[str]:
    """Canonical type URLs accepted in `category`."""
    return frozenset(TYPE_URL_PREFIX + name for name in _by_category[category])


def categories_of(type_url: str) -> frozenset[str]:
    """Every category `type_url` is registered in (to explain a wrong-position @type)."""
    name = message_name(type_url)
    return frozenset(category for category, types in _by_category.items() if name in types)


def type_url_of(struct_type: type) -> str | None:
    """The canonical type URL of a registered Struct (for `@type` when re-encoding)."""
    return _url_by_type.get(struct_type)
