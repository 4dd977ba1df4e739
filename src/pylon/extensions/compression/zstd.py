"""envoy.compression.zstd.{compressor,decompressor}: Zstandard through the `zstandard` binding, Envoy's defaults.

Envoy's defaults: compression_level 3 (zstd's default; 0 means it too),
strategy DEFAULT (the level's own), no checksum, chunk_size 4096 (output
buffer slicing only: checked, no effect on the bytes). Each piece is flushed
as a block, as Envoy's `ZSTD_e_flush`. Refused by name: the compressor's
`dictionary` and the decompressor's `dictionaries`. The decompressor stops
beyond 100 times its compressed input (`zstd_generic_error`). Departure: Envoy
checks the ratio per data piece after decompressing all of it (passing up to
zstd's 128 KiB block per piece, and counting the error even for a legitimate
body that inflates more); pylon's cumulative cut also applies to those.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
import zstandard

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, NotSupportedYet, UInt32

COMPRESSOR_TYPE_URL = "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd"
DECOMPRESSOR_TYPE_URL = "type.googleapis.com/envoy.extensions.compression.zstd.decompressor.v3.Zstd"

_STRATEGIES = {"DEFAULT": 0, "FAST": zstandard.STRATEGY_FAST, "DFAST": zstandard.STRATEGY_DFAST,
               "GREEDY": zstandard.STRATEGY_GREEDY, "LAZY": zstandard.STRATEGY_LAZY,
               "LAZY2": zstandard.STRATEGY_LAZY2, "BTLAZY2": zstandard.STRATEGY_BTLAZY2,
               "BTOPT": zstandard.STRATEGY_BTOPT, "BTULTRA": zstandard.STRATEGY_BTULTRA,
               "BTULTRA2": zstandard.STRATEGY_BTULTRA2}
_DEFAULT_LEVEL = 3
_MAX_LEVEL = 22  # zstd clamps higher levels to its maximum, as Envoy's setParameter does
_MAX_INFLATE_RATIO = 100
ChunkSize = Annotated[int, msgspec.Meta(ge=4096, le=65536)]


class ZstdCompressor(EnvoyStruct, kw_only=True):
    """extensions.compression.zstd.compressor.v3.Zstd."""

    content_encoding: ClassVar[str] = "zstd"
    stat_prefix: ClassVar[str] = "zstd"
    compression_level: UInt32 = _DEFAULT_LEVEL
    enable_checksum: bool = False
    strategy: Literal[tuple(_STRATEGIES)] = "DEFAULT"  # type: ignore[valid-type]
    dictionary: NotSupportedYet | None = None
    chunk_size: ChunkSize = 4096

    def make(self) -> _Compressor:
        level = min(self.compression_level or _DEFAULT_LEVEL, _MAX_LEVEL)
        params: dict[str, Any] = {"write_checksum": self.enable_checksum}
        if self.strategy != "DEFAULT":
            params["strategy"] = _STRATEGIES[self.strategy]
        compressor = zstandard.ZstdCompressor(
            compression_params=zstandard.ZstdCompressionParameters.from_level(level, **params))
        return _Compressor(compressor.compressobj())


class _Compressor:
    __slots__ = ("_z",)

    def __init__(self, z: Any) -> None:
        self._z = z

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


class ZstdDecompressor(EnvoyStruct, kw_only=True):
    """extensions.compression.zstd.decompressor.v3.Zstd."""

    content_encoding: ClassVar[str] = "zstd"
    stat_prefix: ClassVar[str] = "zstd"
    dictionaries: list[NotSupportedYet] = []
    chunk_size: ChunkSize = 4096

    def make(self) -> _Decompressor:
        return _Decompressor()


class _Decompressor:
    __slots__ = ("_z", "_in", "_out", "failed")

    def __init__(self) -> None:
        self._z = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
        self._in = self._out = 0
        self.failed: tuple[str, ...] = ()

    def decompress(self, data: bytes) -> bytes:
        if self.failed or not data:
            return b""
        self._in += len(data)
        try:
            out = self._z.decompress(data)
        except zstandard.ZstdError:
            self.failed = ("zstd_generic_error",)
            return b""
        room = self._in * _MAX_INFLATE_RATIO - self._out
        if len(out) > room:
            self.failed = ("zstd_generic_error",)
            out = out[:room]
        self._out += len(out)
        return out


registry.register_typed(registry.COMPRESSOR_LIBRARY, COMPRESSOR_TYPE_URL, ZstdCompressor)
registry.register_typed(registry.DECOMPRESSOR_LIBRARY, DECOMPRESSOR_TYPE_URL, ZstdDecompressor)
