"""Envoy's compression libraries (`envoy.compression.{gzip,brotli,zstd}.{compressor,decompressor}`), one module each.

A library's config Struct is what a `compressor_library` / `decompressor_library`
`typed_config` decodes to (categories `registry.COMPRESSOR_LIBRARY` and
`registry.DECOMPRESSOR_LIBRARY`). The compressor and decompressor filters use a
library only through its Struct: `content_encoding` and `stat_prefix` (Envoy's
names: "gzip", "br" / "brotli", "zstd"), and `make()`, which returns a fresh
per-stream object of the shape below. So the filters import no library module,
and a process imports only the libraries its configs name.
"""

from __future__ import annotations

from typing import Protocol


class StreamCompressor(Protocol):
    """One direction of one stream: each piece is compressed and flushed at once, as Envoy's compressors do
    (`State::Flush`), so a slow response still reaches the client piece by piece."""

    def compress(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class StreamDecompressor(Protocol):
    """One direction of one stream; `decompress` returns what the piece yields. After corrupt input, or output
    beyond the library's inflate ratio, it yields nothing more: `failed` then names the library's error counters
    (Envoy's, under `<decompressor stats>.decompressor_library.`), else it is empty."""

    failed: tuple[str, ...]

    def decompress(self, data: bytes) -> bytes: ...
