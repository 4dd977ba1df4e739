"""envoy.filters.http.decompressor: decompress request and response bodies (gzip, brotli, zstd).

What Envoy 1.40 does (its decompressor_filter.cc), per direction, each on
unless its `common_config.enabled` says otherwise:

- A message with a body whose content-encoding's first coding (before ",",
  trimmed, any case) is the library's, and whose cache-control has no
  `no-transform` (unless `ignore_no_transform_header`), is decompressed
  (`decompressed`, else `not_decompressed`): that coding leaves
  content-encoding (the header goes when it was the only one), content-length
  is dropped and the body goes on chunked, decompressed piece by piece
  (`total_compressed_bytes`, `total_uncompressed_bytes`).
- With response decompression on and `advertise_accept_encoding` (default
  true), every request gets the library's coding appended to its
  Accept-Encoding ("," without a space; set when absent), so the upstream may
  compress.
- Stats: `http.<stat_prefix>.decompressor.<library name>.<gzip|brotli|zstd>.`
  `request.` / `response.` then the counters above.

Corrupt input, or input inflating beyond the library's ratio, ends the output
there, as Envoy's decompressors stop, counted under
`...<gzip|brotli|zstd>.decompressor_library.` (`zlib_data_error`,
`brotli_error`, `brotli_output_overflow`, `zstd_generic_error`; once per
stream). Runtime keys never apply (pylon's runtime refuses keys it does not
implement).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, RuntimeFeatureFlag, _TypedExtension
from pylon.proxy.filters.http import register_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor"


class DecompressorLibrary(_TypedExtension, kw_only=True):
    """config.core.v3.TypedExtensionConfig of a decompression library (extensions/compression/)."""

    category: ClassVar[str] = registry.DECOMPRESSOR_LIBRARY


class CommonDirectionConfig(EnvoyStruct, kw_only=True):
    enabled: RuntimeFeatureFlag | None = None  # unset: on
    ignore_no_transform_header: bool = False

    @property
    def on(self) -> bool:
        return self.enabled is None or self.enabled.default_value


class RequestDirectionConfig(EnvoyStruct, kw_only=True):
    common_config: CommonDirectionConfig = msgspec.field(default_factory=CommonDirectionConfig)
    advertise_accept_encoding: bool = True


class ResponseDirectionConfig(EnvoyStruct, kw_only=True):
    common_config: CommonDirectionConfig = msgspec.field(default_factory=CommonDirectionConfig)


class Decompressor(EnvoyStruct, kw_only=True):
    """extensions.filters.http.decompressor.v3.Decompressor."""

    decompressor_library: DecompressorLibrary
    request_direction_config: RequestDirectionConfig = msgspec.field(default_factory=RequestDirectionConfig)
    response_direction_config: ResponseDirectionConfig = msgspec.field(default_factory=ResponseDirectionConfig)


class _Direction:
    def __init__(self, common: CommonDirectionConfig, prefix: str, stats: Any) -> None:
        self.enabled = common.on
        self.ignore_no_transform = common.ignore_no_transform_header
        self.decompressed = stats.counter(prefix + "decompressed")
        self.not_decompressed = stats.counter(prefix + "not_decompressed")
        self.total_compressed = stats.counter(prefix + "total_compressed_bytes")
        self.total_uncompressed = stats.counter(prefix + "total_uncompressed_bytes")


def _joined(headers: Any, name: bytes) -> bytes | None:
    values = [value for key, value in headers if key == name]
    return None if not values else b",".join(values)


class DecompressorFilter:
    """One HCM's decompressor filter in one worker."""

    def __init__(self, name: str, config: Decompressor, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        library = config.decompressor_library.typed_config
        self.library = library
        self.encoding = library.content_encoding.encode()
        prefix = f"http.{stat_prefix}.decompressor.{config.decompressor_library.name}.{library.stat_prefix}."
        self.request = _Direction(config.request_direction_config.common_config, prefix + "request.", stats)
        self.response = _Direction(config.response_direction_config.common_config, prefix + "response.", stats)
        self.advertise = config.request_direction_config.advertise_accept_encoding
        self.library_prefix = prefix + "decompressor_library."
        self.stats = stats
        #: the streams being decompressed, by direction: their decompressors (until the stream ends)
        self._requests: dict[Any, Any] = {}
        self._responses: dict[Any, Any] = {}

    def decode_headers(self, stream: Any) -> bool:
        if self.response.enabled and self.advertise:
            accept = _joined(stream.headers, b"accept-encoding")
            stream.edit_request_header("set", b"accept-encoding",
                                       self.encoding if accept is None else accept + b"," + self.encoding)
        if not (stream.req_length or stream.req_chunked):
            return True  # headers only: nothing to decompress, nothing counted
        remaining = self._decodes(self.request, stream.headers)
        if remaining is None:
            return True
        if remaining:
            stream.edit_request_header("set", b"content-encoding", remaining)
        else:
            stream.edit_request_header("remove", b"content-encoding")
        self._track(stream, self._requests)
        return True

    def wants_request_data(self, stream: Any) -> bool:
        return stream in self._requests

    def decode_data(self, stream: Any, data: bytes, end_stream: bool) -> bytes:
        return self._decompress(self._requests[stream], self.request, data)

    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        if stream.local_reply or stream.is_head or status == 204 or status == 304:
            return
        remaining = self._decodes(self.response, headers)
        if remaining is None:
            return
        if remaining:
            headers.set(b"content-encoding", remaining)
        else:
            headers.remove(b"content-encoding")
        headers.remove(b"content-length")
        self._track(stream, self._responses)

    def wants_response_data(self, stream: Any) -> bool:
        return stream in self._responses

    def encode_data(self, stream: Any, data: bytes, end_stream: bool) -> bytes:
        return self._decompress(self._responses[stream], self.response, data)

    def _decodes(self, direction: _Direction, headers: Any) -> bytes | None:
        """The content-encoding left once this library's coding is taken off, or None: not decompressed."""
        encoding = _joined(headers, b"content-encoding")
        cache_control = _joined(headers, b"cache-control")
        no_transform = cache_control is not None and not direction.ignore_no_transform and \
            any(part.strip().lower() == b"no-transform" for part in cache_control.split(b","))
        first, _, rest = (encoding or b"").partition(b",")
        if direction.enabled and not no_transform and first.strip().lower() == self.encoding:
            direction.decompressed.inc()
            return rest.strip()
        direction.not_decompressed.inc()
        return None

    def _track(self, stream: Any, streams: dict[Any, Any]) -> None:
        streams[stream] = self.library.make()
        stream.on_finish(functools.partial(streams.pop, stream, None))

    def _decompress(self, decompressor: Any, direction: _Direction, data: bytes) -> bytes:
        failed = decompressor.failed
        out = decompressor.decompress(data)
        direction.total_compressed.inc(len(data))
        direction.total_uncompressed.inc(len(out))
        if decompressor.failed and not failed:
            for name in decompressor.failed:
                self.stats.counter(self.library_prefix + name).inc()
        return out


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, Decompressor)
register_filter(Decompressor, DecompressorFilter)
