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

from typing import Any, ClassVar, Literal

import zstandard

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, NotSupportedYet, UInt32
from pylon.extensions.compression.streams import ChunkSize, FlushingCompressor, RatioGuardedDecompressor

COMPRESSOR_TYPE_URL = "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd"
DECOMPRESSOR_TYPE_URL = "type.googleapis.com/envoy.extensions.compression.zstd.decompressor.v3.Zstd"

_STRATEGIES = {"DEFAULT": 0, "FAST": zstandard.STRATEGY_FAST, "DFAST": zstandard.STRATEGY_DFAST,
               "GREEDY": zstandard.STRATEGY_GREEDY, "LAZY": zstandard.STRATEGY_LAZY,
               "LAZY2": zstandard.STRATEGY_LAZY2, "BTLAZY2": zstandard.STRATEGY_BTLAZY2,
               "BTOPT": zstandard.STRATEGY_BTOPT, "BTULTRA": zstandard.STRATEGY_BTULTRA,
               "BTULTRA2": zstandard.STRATEGY_BTULTRA2}
_DEFAULT_LEVEL = 3
_MAX_LEVEL = 22  # zstd clamps higher levels to its maximum, as Envoy's setParameter does


class ZstdCompressor(EnvoyStruct, kw_only=True):
    """extensions.compression.zstd.compressor.v3.Zstd."""

    content_encoding: ClassVar[str] = "zstd"
    stat_prefix: ClassVar[str] = "zstd"
    compression_level: UInt32 = _DEFAULT_LEVEL
    enable_checksum: bool = False
    strategy: Literal[tuple(_STRATEGIES)] = "DEFAULT"  # type: ignore[valid-type]
    dictionary: NotSupportedYet | None = None
    chunk_size: ChunkSize = 4096

    def make(self) -> FlushingCompressor:
        level = min(self.compression_level or _DEFAULT_LEVEL, _MAX_LEVEL)
        params: dict[str, Any] = {"write_checksum": self.enable_checksum}
        if self.strategy != "DEFAULT":
            params["strategy"] = _STRATEGIES[self.strategy]
        compressor = zstandard.ZstdCompressor(
            compression_params=zstandard.ZstdCompressionParameters.from_level(level, **params))
        z = compressor.compressobj()
        return FlushingCompressor(lambda data: z.compress(data) + z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK),
                                  lambda: z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))  # fmt: skip


class ZstdDecompressor(EnvoyStruct, kw_only=True):
    """extensions.compression.zstd.decompressor.v3.Zstd."""

    content_encoding: ClassVar[str] = "zstd"
    stat_prefix: ClassVar[str] = "zstd"
    dictionaries: list[NotSupportedYet] = []
    chunk_size: ChunkSize = 4096

    def make(self) -> RatioGuardedDecompressor:
        z = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
        return RatioGuardedDecompressor(z.decompress, zstandard.ZstdError, ("zstd_generic_error",),
                                        ("zstd_generic_error",))


registry.register_typed(registry.COMPRESSOR_LIBRARY, COMPRESSOR_TYPE_URL, ZstdCompressor)
registry.register_typed(registry.DECOMPRESSOR_LIBRARY, DECOMPRESSOR_TYPE_URL, ZstdDecompressor)
