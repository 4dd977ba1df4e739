"""What the compression libraries share: one compressing stream shape, the bomb guard of brotli and zstd, and
Envoy's chunk_size range.

A filter's compressor is per stream: `compress(piece)` returns the piece's compressed bytes flushed (so each
piece reaches the client as it passes), `finish()` the stream's end. The libraries differ only in the two calls
that do that, so each library hands its calls to `FlushingCompressor` rather than writing the class again.

Envoy's brotli and zstd decompressors stop once the output passes 100 times the compressed input (decompression
bombs); `RatioGuardedDecompressor` does that over any library's one-step decompress call. gzip's guard works at
the granularity of its chunks and lives in gzip.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import msgspec

#: Envoy's chunk_size range for every library (the output buffers' size; no effect on the bytes here).
ChunkSize = Annotated[int, msgspec.Meta(ge=4096, le=65536)]
#: brotli's and zstd's fixed output/input bound in Envoy.
MAX_INFLATE_RATIO = 100


class FlushingCompressor:
    """One stream's compressor from a library's two calls: a piece compressed and flushed, and the stream's end."""

    __slots__ = ("compress", "finish")

    def __init__(self, compress: Callable[[bytes], bytes], finish: Callable[[], bytes]) -> None:
        self.compress = compress
        self.finish = finish


class RatioGuardedDecompressor:
    """One stream's decompressor: `process(piece)` is the library's call, `error` the exception it raises on bad
    input; `failed` names the stats to count (`on_error` for bad input, `on_overflow` for a bomb cut short) and
    stops the stream."""

    __slots__ = ("_process", "_error", "_on_error", "_on_overflow", "_in", "_out", "failed")

    def __init__(self, process: Callable[[bytes], bytes], error: type[Exception], on_error: tuple[str, ...],
                 on_overflow: tuple[str, ...]) -> None:  # fmt: skip
        self._process, self._error = process, error
        self._on_error, self._on_overflow = on_error, on_overflow
        self._in = self._out = 0
        self.failed: tuple[str, ...] = ()

    def decompress(self, data: bytes) -> bytes:
        if self.failed or not data:
            return b""
        self._in += len(data)
        try:
            out = self._process(data)
        except self._error:
            self.failed = self._on_error
            return b""
        room = self._in * MAX_INFLATE_RATIO - self._out
        if len(out) > room:
            self.failed = self._on_overflow
            out = out[:room]
        self._out += len(out)
        return out
