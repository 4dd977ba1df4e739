"""envoy.filters.http.compressor: compress responses (and, when configured, requests) with gzip, brotli or zstd.

What Envoy 1.40 does, read from its source and checked beside it
(tests/proxy/test_proxy_compressor.py):

- The request's Accept-Encoding (its lines joined with ",") is noted at the
  request head; with `remove_accept_encoding_header` (and response compression
  enabled) it is then dropped from what goes upstream.
- A response is compressible when compression is enabled (the runtime flag's
  default, or the route's `CompressorPerRoute`), its content-length (if any) is
  at least `min_content_length` (default 30; else `content_length_too_small`),
  it is no upgrade, its content-type (up to ";", any case) is in `content_type`
  (Envoy's default list when empty; no header passes), its cache-control has no
  `no-transform`, it has no ETag when `disable_on_etag_header` (else
  `not_compressed_etag`), and no content-encoding. Then, unless it has no body
  (HEAD, 204, 304), the encoding chosen from Accept-Encoding for the whole chain
  (accept_encoding.py; counted `no_accept_header` or `header_*`) must be this
  filter's and transfer-encoding must not name a compression: it is compressed
  (`compressed`): a strong ETag is dropped (weak ones kept), content-length
  removed (chunked), content-encoding set. Else `not_compressed`. Every
  compressible response gets `vary: accept-encoding` (appended to a vary that
  lacks the token), compressed or not.
- Each body piece is compressed and flushed at once; the end finishes the
  stream (`total_uncompressed_bytes`, `total_compressed_bytes`).
- A request is compressed likewise when `request_direction_config` is given and
  enabled: it has a body, no upgrade, a big enough content-length, an allowed
  content-type, no content-encoding; it goes upstream chunked with
  content-encoding set (`request.compressed`, else `request.not_compressed`).
- Stats: `http.<stat_prefix>.compressor.<library name>.<gzip|brotli|zstd>.`
  then the header and ETag counters; the direction counters under `response.`
  (only when `response_direction_config` is given; the deprecated top-level
  fields count without it) and `request.`.
- Per route (`CompressorPerRoute`): `disabled` turns response compression off;
  `overrides.response_direction_config` turns it on and may set
  `remove_accept_encoding_header`.

Departures: local replies are never compressed (Envoy compresses one whose body
reaches the minimum length; its bodies rarely do). Runtime keys never apply
(pylon's runtime refuses keys it does not implement). Refused by name:
`uncompressible_response_codes`, `status_header_enabled: true` and a per-route
`overrides.compressor_library`.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import msgspec

from pylon.config import registry
from pylon.config.envoy import (
    EnvoyStruct, NotSupportedYet, RuntimeFeatureFlag, UInt32, _exactly_one, _TypedExtension,
)
from pylon.config.errors import FieldError
from pylon.extensions.filters.http.accept_encoding import (
    IDENTITY_KIND, NOT_VALID, VALID, WILDCARD_KIND, Candidate, Decision, choose,
)
from pylon.proxy.filters.http import register_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"

DEFAULT_MIN_CONTENT_LENGTH = 30
#: Envoy's content types when `content_type` is empty
DEFAULT_CONTENT_TYPES = frozenset((
    "text/html", "text/plain", "text/css", "application/javascript", "application/x-javascript", "text/javascript",
    "text/x-javascript", "text/ecmascript", "text/js", "text/jscript", "text/x-js", "application/ecmascript",
    "application/x-json", "application/xml", "application/json", "image/svg+xml", "text/xml",
    "application/xhtml+xml", "application/grpc-web", "application/grpc-web+proto"))
#: transfer codings that mean the message is compressed already (besides the filter's own encoding)
_COMPRESSING_CODINGS = frozenset((b"gzip", b"br", b"deflate", b"compress", b"zstd"))


class CompressorLibrary(_TypedExtension, kw_only=True):
    """config.core.v3.TypedExtensionConfig of a compression library (extensions/compression/)."""

    category: ClassVar[str] = registry.COMPRESSOR_LIBRARY


class CommonDirectionConfig(EnvoyStruct, kw_only=True):
    """Compressor.CommonDirectionConfig."""

    enabled: RuntimeFeatureFlag | None = None  # unset: on
    min_content_length: UInt32 | None = None  # unset or 0: 30
    content_type: list[str] = []


class RequestDirectionConfig(EnvoyStruct, kw_only=True):
    common_config: CommonDirectionConfig = msgspec.field(default_factory=CommonDirectionConfig)


class ResponseDirectionConfig(EnvoyStruct, kw_only=True):
    common_config: CommonDirectionConfig = msgspec.field(default_factory=CommonDirectionConfig)
    disable_on_etag_header: bool = False
    remove_accept_encoding_header: bool = False
    uncompressible_response_codes: list[NotSupportedYet] = []
    status_header_enabled: bool = False

    def __post_init__(self) -> None:
        if self.status_header_enabled:
            raise FieldError("status_header_enabled", "not supported yet")


class Compressor(EnvoyStruct, kw_only=True):
    """extensions.filters.http.compressor.v3.Compressor (the top-level direction fields are Envoy's deprecated
    spelling of response_direction_config, read only without it, as Envoy does)."""

    content_length: UInt32 | None = None
    content_type: list[str] = []
    disable_on_etag_header: bool = False
    remove_accept_encoding_header: bool = False
    runtime_enabled: RuntimeFeatureFlag | None = None
    compressor_library: CompressorLibrary
    request_direction_config: RequestDirectionConfig | None = None
    response_direction_config: ResponseDirectionConfig | None = None
    choose_first: bool = False

    def response(self) -> ResponseDirectionConfig:
        """The response direction, from the deprecated fields when response_direction_config is not given."""
        if self.response_direction_config is not None:
            return self.response_direction_config
        common = CommonDirectionConfig(enabled=self.runtime_enabled, min_content_length=self.content_length,
                                       content_type=self.content_type)
        return ResponseDirectionConfig(common_config=common, disable_on_etag_header=self.disable_on_etag_header,
                                       remove_accept_encoding_header=self.remove_accept_encoding_header)


class ResponseDirectionOverrides(EnvoyStruct, kw_only=True):
    remove_accept_encoding_header: bool | None = None


class CompressorOverrides(EnvoyStruct, kw_only=True):
    response_direction_config: ResponseDirectionOverrides | None = None
    compressor_library: NotSupportedYet | None = None


class CompressorPerRoute(EnvoyStruct, kw_only=True):
    """extensions.filters.http.compressor.v3.CompressorPerRoute: oneof `disabled` (must be true) / `overrides`."""

    disabled: bool | None = None
    overrides: CompressorOverrides | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "disabled", "overrides")
        if self.disabled is False:
            raise FieldError("disabled", "must be true (leave the route's config out to keep compression on)")

    @property
    def response_enabled(self) -> bool | None:
        """On or off for this route's responses; None: as the filter's config says."""
        if self.disabled:
            return False
        assert self.overrides is not None
        return True if self.overrides.response_direction_config is not None else None

    @property
    def remove_accept_encoding(self) -> bool | None:
        overrides = self.overrides
        if overrides is None or overrides.response_direction_config is None:
            return None
        return overrides.response_direction_config.remove_accept_encoding_header


class _Direction:
    """One direction's resolved config and counters."""

    def __init__(self, common: CommonDirectionConfig, enabled: bool, prefix: str, stats: Any) -> None:
        self.enabled = enabled and (common.enabled is None or common.enabled.default_value)
        self.min_length = common.min_content_length or DEFAULT_MIN_CONTENT_LENGTH
        self.content_types = frozenset(t.lower() for t in common.content_type) or DEFAULT_CONTENT_TYPES
        self.compressed = stats.counter(prefix + "compressed")
        self.not_compressed = stats.counter(prefix + "not_compressed")
        self.total_uncompressed = stats.counter(prefix + "total_uncompressed_bytes")
        self.total_compressed = stats.counter(prefix + "total_compressed_bytes")
        self.too_small = stats.counter(prefix + "content_length_too_small")

    def long_enough(self, content_length: bytes | None) -> bool:
        if content_length is None:
            return True
        if content_length.isdigit() and int(content_length) >= self.min_length:
            return True
        self.too_small.inc()
        return False

    def type_allowed(self, content_type: bytes | None) -> bool:
        if content_type is None:
            return True
        return content_type.split(b";", 1)[0].strip().decode("latin-1").lower() in self.content_types


class _StreamState:
    """What the chain's compressor filters share about one stream (Envoy keeps it in the stream's filter state)."""

    __slots__ = ("chain", "decision", "accept", "response", "request")

    def __init__(self) -> None:
        self.chain: list[CompressorFilter] = []  # in filter order
        self.decision: Decision | None = None
        self.accept: dict[CompressorFilter, str | None] = {}
        self.response: dict[CompressorFilter, Any] = {}  # the filters compressing the response: their compressors
        self.request: dict[CompressorFilter, Any] = {}


_STREAMS: dict[Any, _StreamState] = {}


#: the headers the filter reads, in one pass over a message's head
_READ = frozenset((b"accept-encoding", b"content-length", b"content-type", b"content-encoding", b"cache-control",
                   b"etag", b"vary", b"transfer-encoding", b"connection", b"upgrade"))


def _read(headers: Any) -> dict[bytes, bytes]:
    """The headers the filter reads, each as Envoy keeps an inline header: its lines joined with ","."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in _READ:
            found[name] = found[name] + b"," + value if name in found else value
    return found


def _has_token(value: bytes | None, token: bytes) -> bool:
    return value is not None and any(part.strip().lower() == token for part in value.split(b","))


def _is_upgrade(found: dict[bytes, bytes]) -> bool:
    return _has_token(found.get(b"connection"), b"upgrade") and b"upgrade" in found


#: choices by (the chain's candidates, accept-encoding, content-type): a handful of distinct ones in practice
_CHOICES: dict[tuple[Any, str, str | None], Decision] = {}
_CHOICES_MAX = 4096


def _choice(chain: tuple[Candidate, ...], accept: str, content_type: str | None) -> Decision:
    key = (chain, accept, content_type)
    decision = _CHOICES.get(key)
    if decision is None:
        if len(_CHOICES) >= _CHOICES_MAX:
            _CHOICES.clear()  # headers come from clients: bound the memo, keep it simple
        decision = _CHOICES[key] = choose(accept, content_type, chain)
    return decision


class CompressorFilter:
    """One HCM's compressor filter in one worker."""

    def __init__(self, name: str, config: Compressor, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        library = config.compressor_library.typed_config
        self.library = library
        self.encoding = library.content_encoding
        self.encoding_bytes = self.encoding.encode()
        self.choose_first = config.choose_first
        prefix = f"http.{stat_prefix}.compressor.{config.compressor_library.name}.{library.stat_prefix}."
        response = config.response()
        self.response_config = _Direction(response.common_config, True,
                                          prefix + "response." if config.response_direction_config else prefix,
                                          stats)
        self.disable_on_etag = response.disable_on_etag_header
        self.remove_accept_encoding = response.remove_accept_encoding_header
        request = config.request_direction_config
        self.request_config = _Direction(request.common_config if request else CommonDirectionConfig(),
                                         request is not None, prefix + "request.", stats)
        self.candidate = Candidate(self.encoding, self.response_config.content_types, self.choose_first)
        counter = stats.counter
        self.no_accept_header = counter(prefix + "no_accept_header")
        self.header_used = counter(prefix + "header_compressor_used")
        self.header_overshadowed = counter(prefix + "header_compressor_overshadowed")
        self.header_counters = {IDENTITY_KIND: counter(prefix + "header_identity"),
                                WILDCARD_KIND: counter(prefix + "header_wildcard"),
                                NOT_VALID: counter(prefix + "header_not_valid")}
        self.not_compressed_etag = counter(prefix + "not_compressed_etag")

    # ------------------------------------------------------------------ request
    def decode_headers(self, stream: Any) -> bool:
        state = _STREAMS.get(stream)
        if state is None:
            state = _STREAMS[stream] = _StreamState()
            stream.on_finish(functools.partial(_STREAMS.pop, stream, None))
        state.chain.append(self)
        found = _read(stream.headers)
        accept = found.get(b"accept-encoding")
        state.accept[self] = None if accept is None else accept.decode("latin-1")
        per_route = self._per_route(stream)
        if self._response_enabled(per_route) and self._removes_accept_encoding(per_route):
            stream.edit_request_header("remove", b"accept-encoding")
        config = self.request_config
        has_body = bool(stream.req_length or stream.req_chunked)
        if has_body and config.enabled and not stream.upgrade \
                and config.long_enough(found.get(b"content-length")) \
                and config.type_allowed(found.get(b"content-type")) \
                and b"content-encoding" not in found and self._transfer_encoding_allowed(found):
            stream.edit_request_header("set", b"content-encoding", self.encoding_bytes)
            config.compressed.inc()
            state.request[self] = self.library.make()
        else:
            config.not_compressed.inc()
        return True

    def wants_request_data(self, stream: Any) -> bool:
        state = _STREAMS.get(stream)
        return state is not None and self in state.request

    def decode_data(self, stream: Any, data: bytes, end_stream: bool) -> bytes:
        return self._compress(_STREAMS[stream].request[self], self.request_config, data, end_stream)

    # ------------------------------------------------------------------ response
    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        state = _STREAMS.get(stream)
        if state is None or stream.local_reply:
            return
        config = self.response_config
        found = _read(headers)
        per_route = self._per_route(stream) if stream.route is not None else None
        big_enough = self._response_enabled(per_route) and config.long_enough(found.get(b"content-length"))
        compressible = (big_enough and not _is_upgrade(found) and config.type_allowed(found.get(b"content-type"))
                        and not _has_token(found.get(b"cache-control"), b"no-transform")
                        and self._etag_allowed(found) and b"content-encoding" not in found)
        end_stream = stream.is_head or status == 204 or status == 304
        if not end_stream and self._accept_encoding_allowed(big_enough, state, found) and compressible \
                and self._transfer_encoding_allowed(found):
            etag = found.get(b"etag")
            if etag is not None and len(etag) > 2 and etag[:2] not in (b"W/", b"w/"):
                headers.remove(b"etag")  # a strong ETag no longer holds for the compressed bytes
            headers.remove(b"content-length")
            headers.set(b"content-encoding", self.encoding_bytes)
            config.compressed.inc()
            state.response[self] = self.library.make()
        else:
            config.not_compressed.inc()
        if compressible:
            vary = found.get(b"vary")
            if vary is None:
                headers.set(b"vary", b"Accept-Encoding")
            elif not any(part.strip() == b"Accept-Encoding" for part in vary.split(b",")):
                headers.set(b"vary", vary + b", Accept-Encoding")
            elif len(headers.get_all(b"vary")) > 1:
                headers.set(b"vary", vary)  # Envoy keeps vary inline: its lines become one

    def wants_response_data(self, stream: Any) -> bool:
        state = _STREAMS.get(stream)
        return state is not None and self in state.response

    def encode_data(self, stream: Any, data: bytes, end_stream: bool) -> bytes:
        return self._compress(_STREAMS[stream].response[self], self.response_config, data, end_stream)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _compress(compressor: Any, config: _Direction, data: bytes, end_stream: bool) -> bytes:
        config.total_uncompressed.inc(len(data))
        out = compressor.compress(data) if data else b""
        if end_stream:
            out += compressor.finish()
        config.total_compressed.inc(len(out))
        return out

    def _per_route(self, stream: Any) -> CompressorPerRoute | None:
        route = stream.route
        config = route.filter_config(self.name) if route is not None else None
        return config if isinstance(config, CompressorPerRoute) else None

    def _response_enabled(self, per_route: CompressorPerRoute | None) -> bool:
        enabled = per_route.response_enabled if per_route is not None else None
        return self.response_config.enabled if enabled is None else enabled

    def _removes_accept_encoding(self, per_route: CompressorPerRoute | None) -> bool:
        remove = per_route.remove_accept_encoding if per_route is not None else None
        return self.remove_accept_encoding if remove is None else remove

    def _etag_allowed(self, found: dict[bytes, bytes]) -> bool:
        if self.disable_on_etag and b"etag" in found:
            self.not_compressed_etag.inc()
            return False
        return True

    def _transfer_encoding_allowed(self, found: dict[bytes, bytes]) -> bool:
        value = found.get(b"transfer-encoding")
        if value is None:
            return True
        codings = {part.strip().lower() for part in value.split(b",")}
        return not (codings & _COMPRESSING_CODINGS or self.encoding_bytes.lower() in codings)

    def _accept_encoding_allowed(self, maybe: bool, state: _StreamState, found: dict[bytes, bytes]) -> bool:
        """Whether the chain's choice of encoding is this filter's (counting the header's kind); computed once per
        stream, by the first compressor filter to ask."""
        if not maybe:
            return False
        accept = state.accept.get(self)
        if accept is None:
            self.no_accept_header.inc()
            return False
        if state.decision is None:
            content_type = found.get(b"content-type")
            state.decision = _choice(tuple(f.candidate for f in state.chain), accept,
                                     None if content_type is None else content_type.decode("latin-1"))
        decision = state.decision
        ours = decision.encoding.lower() == self.encoding.lower()
        if decision.kind == VALID:
            (self.header_used if ours else self.header_overshadowed).inc()
        else:
            self.header_counters[decision.kind].inc()
        return ours


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, Compressor)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, CompressorPerRoute)
register_filter(Compressor, CompressorFilter)
