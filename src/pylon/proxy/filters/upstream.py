"""Upstream HTTP filters: Envoy's filter chain between the router and the upstream codec.

The router's `upstream_http_filters`, or a cluster's own `http_filters` (its HttpProtocolOptions; they take
precedence, as in Envoy), end with `envoy.filters.http.upstream_codec` and run on what goes to and comes from
the upstream: after the router has made the request (x-forwarded-*, x-request-id, the route's header rules)
and before it reads the response (its retry checks included). Like the HTTP filters ahead of the router
(`filters/http.py`), each filter module registers its config Struct in the category
`envoy.filters.http.upstream` and a factory here; the proxy imports no filter.

A filter has `upstream_request(stream, headers, path) -> path` (the request headers, a HeaderList to edit, and
the path it may change; in chain order) and
`upstream_response(stream, status, headers)` (the upstream's response headers, last filter first). The
request side runs once per request, which is per attempt in effect: the headers a filter sets do not depend on
the attempt (their formatters read the request and the downstream connection only).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol


class UpstreamFilter(Protocol):
    name: str

    def upstream_request(self, stream: Any, headers: Any, path: bytes) -> bytes: ...

    def upstream_response(self, stream: Any, status: int, headers: Any) -> None: ...


#: config Struct type -> factory(name, config) building the filter for one chain in one worker
UpstreamFilterFactory = Callable[[str, Any], UpstreamFilter]
_FACTORIES: dict[type, UpstreamFilterFactory] = {}


def register_upstream_filter(config_type: type, factory: UpstreamFilterFactory) -> None:
    _FACTORIES[config_type] = factory


def build_upstream_filters(entries: list[Any]) -> list[UpstreamFilter] | None:
    """The chain for an `upstream_http_filters` / `http_filters` list (None when it is empty: not configured);
    the upstream codec at its end is the upstream connection itself."""
    if not entries:
        return None
    return [_FACTORIES[type(entry.typed_config)](entry.name, entry.typed_config) for entry in entries[:-1]]
