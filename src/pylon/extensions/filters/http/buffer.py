"""envoy.filters.http.buffer: the whole request body is in before the upstream sees the request.

Why a filter for it: an upstream that cannot take a slow or streamed body (or a later filter that needs the
whole of it) gets it in one piece with a content-length. Observed beside Envoy 1.40
(tests/proxy/test_proxy_buffer_filter.py): a chunked request goes upstream with a content-length and no
transfer-encoding; a body over `max_request_bytes` is answered 413 "Payload Too Large" (details
`request_payload_too_large`, no flag, `http.<prefix>.downstream_rq_too_large`, the connection closed) and the
upstream never asked; a request without a body passes untouched. `max_request_bytes` replaces the connection's
buffer limit for that request, either way (Envoy's setDecoderBufferLimit). A route's BufferPerRoute either
`disabled` it there (the body streams as without the filter) or gives the route its own `buffer`.

The stream does the buffering (its whole-body filter path, proxy/filters/http.py); this module only says when
and how much.
"""

from __future__ import annotations

from typing import Any

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, PositiveUInt32
from pylon.config.errors import FieldError
from pylon.proxy.filters.http import register_filter
from pylon.proxy.filters.upstream import register_upstream_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"


class BufferSettings(EnvoyStruct, kw_only=True):
    """extensions.filters.http.buffer.v3.Buffer's fields, as BufferPerRoute nests them: a registered type is
    re-encoded with its `@type`, which a nested message must not carry."""

    max_request_bytes: PositiveUInt32 | None = None

    def __post_init__(self) -> None:
        if self.max_request_bytes is None:
            raise FieldError("max_request_bytes", "missing required field")


class Buffer(BufferSettings, kw_only=True):
    """extensions.filters.http.buffer.v3.Buffer, the filter's config."""


class BufferPerRoute(EnvoyStruct, kw_only=True):
    """extensions.filters.http.buffer.v3.BufferPerRoute: oneof override {disabled (must be true), buffer}."""

    disabled: bool = False
    buffer: BufferSettings | None = None

    def __post_init__(self) -> None:
        if self.disabled and self.buffer is not None:
            raise FieldError("buffer", "only one of disabled and buffer may be set (oneof override)")
        if not self.disabled and self.buffer is None:
            raise FieldError("disabled", "one of disabled (true) and buffer is required (oneof override)")


class BufferFilter:
    """One HCM's buffer filter in one worker: it only tells the stream to buffer, and how much."""

    def __init__(self, name: str, config: Buffer, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        assert config.max_request_bytes is not None
        self.limit: int = config.max_request_bytes

    def _limit(self, stream: Any) -> int:
        """The route's limit, 0 where the route disables the filter."""
        route = stream.route
        override = route.filter_config(self.name) if route is not None else None
        if override is None:
            return self.limit
        return 0 if override.disabled else override.buffer.max_request_bytes

    def decode_headers(self, stream: Any) -> bool:
        limit = self._limit(stream)
        if limit:
            stream.set_decoder_buffer_limit(limit)
        return True

    def wants_request_body(self, stream: Any) -> bool:
        return self._limit(stream) != 0

    def decode_body(self, stream: Any, body: bytes) -> None:
        return None  # buffered whole is all it asks: the stream sends it with a content-length


class UpstreamBufferFilter(BufferFilter):
    """The filter as an upstream HTTP filter: the request's body is held whole before the first attempt (each
    attempt then sends it with its content-length), 413 "Payload Too Large" beyond `max_request_bytes` (or the
    route's BufferPerRoute) with the connection closed, the upstream never asked (Envoy 1.40, observed)."""

    def __init__(self, name: str, config: Buffer, scope: str, stats: Any) -> None:
        super().__init__(name, config, scope, stats, None)

    def body_limit(self, stream: Any) -> int:
        return self._limit(stream)

    def upstream_request(self, stream: Any, head: Any) -> None:
        return None  # the holding is the stream's (filters/upstream.py `FilteredRequest.hold`)

    def upstream_response(self, stream: Any, status: int, headers: Any) -> None:
        pass


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, Buffer)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, BufferPerRoute)
register_filter(Buffer, BufferFilter)
registry.register_typed(registry.UPSTREAM_HTTP_FILTER, TYPE_URL, Buffer)
register_upstream_filter(Buffer, UpstreamBufferFilter)
