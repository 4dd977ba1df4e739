"""envoy.compression.gzip.{compressor,decompressor}: zlib with a gzip header, Envoy's defaults and ranges.

Envoy's defaults: compression level zlib's default (6), strategy default,
memory_level 5, window_bits 12 (the gzip header adds 16, as Envoy's zlib
wrapper does), chunk_size 4096. chunk_size is the size of the buffers Envoy's
zlib writes into: for the compressor it slices the output, never changes its
bytes; for the decompressor it is the granularity of the bomb guard, which
stops at the first chunk past `max_inflate_ratio` (default 100) times the
compressed input, as Envoy's does (counted `zlib_data_error`, as corrupt input).
"""

from __future__ import annotations

import zlib
from typing import Annotated, ClassVar, Literal

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.extensions.compression.streams import ChunkSize, FlushingCompressor

COMPRESSOR_TYPE_URL = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
DECOMPRESSOR_TYPE_URL = "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip"

_LEVELS = {"DEFAULT_COMPRESSION": zlib.Z_DEFAULT_COMPRESSION, "BEST_SPEED": 1, "BEST_COMPRESSION": 9,
           **{f"COMPRESSION_LEVEL_{n}": n for n in range(1, 10)}}
_STRATEGIES = {"DEFAULT_STRATEGY": zlib.Z_DEFAULT_STRATEGY, "FILTERED": zlib.Z_FILTERED,
               "HUFFMAN_ONLY": zlib.Z_HUFFMAN_ONLY, "RLE": zlib.Z_RLE, "FIXED": zlib.Z_FIXED}
_GZIP_HEADER = 16
WindowBits = Annotated[int, msgspec.Meta(ge=9, le=15)]


class GzipCompressor(EnvoyStruct, kw_only=True):
    """extensions.compression.gzip.compressor.v3.Gzip."""

    content_encoding: ClassVar[str] = "gzip"
    stat_prefix: ClassVar[str] = "gzip"
    memory_level: Annotated[int, msgspec.Meta(ge=1, le=9)] = 5
    compression_level: Literal[tuple(_LEVELS)] = "DEFAULT_COMPRESSION"  # type: ignore[valid-type]
    compression_strategy: Literal[tuple(_STRATEGIES)] = "DEFAULT_STRATEGY"  # type: ignore[valid-type]
    window_bits: WindowBits = 12
    chunk_size: ChunkSize = 4096

    def make(self) -> FlushingCompressor:
        z = zlib.compressobj(_LEVELS[self.compression_level], zlib.DEFLATED, self.window_bits + _GZIP_HEADER,
                             self.memory_level, _STRATEGIES[self.compression_strategy])  # fmt: skip
        return FlushingCompressor(lambda data: z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH),
                                  lambda: z.flush(zlib.Z_FINISH))  # fmt: skip


class GzipDecompressor(EnvoyStruct, kw_only=True):
    """extensions.compression.gzip.decompressor.v3.Gzip."""

    content_encoding: ClassVar[str] = "gzip"
    stat_prefix: ClassVar[str] = "gzip"
    window_bits: WindowBits = 12
    chunk_size: ChunkSize = 4096
    max_inflate_ratio: Annotated[int, msgspec.Meta(ge=1, le=1032)] = 100

    def make(self) -> _Decompressor:
        return _Decompressor(zlib.decompressobj(self.window_bits + _GZIP_HEADER), self.max_inflate_ratio,
                             self.chunk_size)


_DATA_ERROR = ("zlib_data_error",)


class _Decompressor:
    """Envoy's zlib decompressor writes `chunk_size` pieces and stops once the stream's output passes
    `max_inflate_ratio` times its input: so the output ends at the first whole chunk past that (checked beside
    Envoy 1.40: 4,892 bytes of a gzipped bomb yield 491,520 = 120 chunks)."""

    __slots__ = ("_z", "_ratio", "_chunk", "_in", "_out", "failed")

    def __init__(self, z: zlib._Decompress, ratio: int, chunk: int) -> None:
        self._z, self._ratio, self._chunk = z, ratio, chunk
        self._in = self._out = 0
        self.failed: tuple[str, ...] = ()

    def decompress(self, data: bytes) -> bytes:
        if self.failed or not data:
            return b""
        self._in += len(data)
        room = self._in * self._ratio - self._out
        limit = (room // self._chunk + 1) * self._chunk
        try:
            out = self._z.decompress(data, limit)
        except zlib.error:
            self.failed = _DATA_ERROR
            return b""
        if len(out) > room:
            self.failed = _DATA_ERROR  # inflates beyond max_inflate_ratio: a decompression bomb, cut short
        self._out += len(out)
        return out


registry.register_typed(registry.COMPRESSOR_LIBRARY, COMPRESSOR_TYPE_URL, GzipCompressor)
registry.register_typed(registry.DECOMPRESSOR_LIBRARY, DECOMPRESSOR_TYPE_URL, GzipDecompressor)
