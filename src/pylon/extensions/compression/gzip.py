"""envoy.compression.gzip.{compressor,decompressor}: zlib with a gzip header, Envoy's defaults and ranges.

Envoy's defaults: compression level zlib's default (6), strategy default,
memory_level 5, window_bits 12 (the gzip header adds 16, as Envoy's zlib
wrapper does), chunk_size 4096. chunk_size is the size of the buffers Envoy's
zlib writes into: it slices the output, never changes its bytes, so it is
checked and has nothing else to do here. The decompressor stops at
`max_inflate_ratio` (default 100) times the compressed input, Envoy's
decompression-bomb guard.
"""

from __future__ import annotations

import zlib
from typing import Annotated, ClassVar, Literal

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct

COMPRESSOR_TYPE_URL = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
DECOMPRESSOR_TYPE_URL = "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip"

_LEVELS = {"DEFAULT_COMPRESSION": zlib.Z_DEFAULT_COMPRESSION, "BEST_SPEED": 1, "BEST_COMPRESSION": 9,
           **{f"COMPRESSION_LEVEL_{n}": n for n in range(1, 10)}}
_STRATEGIES = {"DEFAULT_STRATEGY": zlib.Z_DEFAULT_STRATEGY, "FILTERED": zlib.Z_FILTERED,
               "HUFFMAN_ONLY": zlib.Z_HUFFMAN_ONLY, "RLE": zlib.Z_RLE, "FIXED": zlib.Z_FIXED}
_GZIP_HEADER = 16
WindowBits = Annotated[int, msgspec.Meta(ge=9, le=15)]
ChunkSize = Annotated[int, msgspec.Meta(ge=4096, le=65536)]


class GzipCompressor(EnvoyStruct, kw_only=True):
    """extensions.compression.gzip.compressor.v3.Gzip."""

    content_encoding: ClassVar[str] = "gzip"
    stat_prefix: ClassVar[str] = "gzip"
    memory_level: Annotated[int, msgspec.Meta(ge=1, le=9)] = 5
    compression_level: Literal[tuple(_LEVELS)] = "DEFAULT_COMPRESSION"  # type: ignore[valid-type]
    compression_strategy: Literal[tuple(_STRATEGIES)] = "DEFAULT_STRATEGY"  # type: ignore[valid-type]
    window_bits: WindowBits = 12
    chunk_size: ChunkSize = 4096

    def make(self) -> _Compressor:
        return _Compressor(zlib.compressobj(_LEVELS[self.compression_level], zlib.DEFLATED,
                                            self.window_bits + _GZIP_HEADER, self.memory_level,
                                            _STRATEGIES[self.compression_strategy]))


class _Compressor:
    __slots__ = ("_z",)

    def __init__(self, z: zlib._Compress) -> None:
        self._z = z

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class GzipDecompressor(EnvoyStruct, kw_only=True):
    """extensions.compression.gzip.decompressor.v3.Gzip."""

    content_encoding: ClassVar[str] = "gzip"
    stat_prefix: ClassVar[str] = "gzip"
    window_bits: WindowBits = 12
    chunk_size: ChunkSize = 4096
    max_inflate_ratio: Annotated[int, msgspec.Meta(ge=1, le=1032)] = 100

    def make(self) -> _Decompressor:
        return _Decompressor(zlib.decompressobj(self.window_bits + _GZIP_HEADER), self.max_inflate_ratio)


class _Decompressor:
    __slots__ = ("_z", "_ratio", "_in", "_out", "failed")

    def __init__(self, z: zlib._Decompress, ratio: int) -> None:
        self._z, self._ratio = z, ratio
        self._in = self._out = 0
        self.failed = False

    def decompress(self, data: bytes) -> bytes:
        if self.failed or not data:
            return b""
        self._in += len(data)
        room = self._in * self._ratio - self._out
        try:
            out = self._z.decompress(data, room + 1)
        except zlib.error:
            self.failed = True
            return b""
        if len(out) > room or self._z.unconsumed_tail:
            self.failed = True  # inflates beyond max_inflate_ratio: a decompression bomb, cut short
            out = out[:room]
        self._out += len(out)
        return out


registry.register_typed(registry.COMPRESSOR_LIBRARY, COMPRESSOR_TYPE_URL, GzipCompressor)
registry.register_typed(registry.DECOMPRESSOR_LIBRARY, DECOMPRESSOR_TYPE_URL, GzipDecompressor)
