"""envoy.compression.brotli.{compressor,decompressor}: Google's brotli library, Envoy's defaults and ranges.

Envoy's defaults: quality 3, window_bits 18, input_block_bits 24, encoder_mode
DEFAULT (brotli's generic mode), chunk_size 4096 (output buffer slicing only:
checked, no effect on the bytes). Content-Encoding `br`, stats under `brotli`.
Refused by name: `disable_literal_context_modeling: true` (the Python binding
has no such encoder parameter) and the decompressor's
`disable_ring_buffer_reallocation: true`. The decompressor stops beyond 100
times its compressed input (`brotli_error`, `brotli_output_overflow`), as
Envoy's brotli decompressor guards against bombs. Departure: Envoy applies the
ratio to each data piece at its chunk granularity, so where the output ends
differs (Envoy 1.40 also cuts a legitimate body that inflates past it).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import brotli
import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.config.errors import FieldError
from pylon.extensions.compression.streams import ChunkSize, FlushingCompressor, RatioGuardedDecompressor

COMPRESSOR_TYPE_URL = "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli"
DECOMPRESSOR_TYPE_URL = "type.googleapis.com/envoy.extensions.compression.brotli.decompressor.v3.Brotli"

_MODES = {"DEFAULT": brotli.MODE_GENERIC, "GENERIC": brotli.MODE_GENERIC, "TEXT": brotli.MODE_TEXT,
          "FONT": brotli.MODE_FONT}


class BrotliCompressor(EnvoyStruct, kw_only=True):
    """extensions.compression.brotli.compressor.v3.Brotli."""

    content_encoding: ClassVar[str] = "br"
    stat_prefix: ClassVar[str] = "brotli"
    quality: Annotated[int, msgspec.Meta(ge=0, le=11)] = 3
    encoder_mode: Literal[tuple(_MODES)] = "DEFAULT"  # type: ignore[valid-type]
    window_bits: Annotated[int, msgspec.Meta(ge=10, le=24)] = 18
    input_block_bits: Annotated[int, msgspec.Meta(ge=16, le=24)] = 24
    chunk_size: ChunkSize = 4096
    disable_literal_context_modeling: bool = False

    def __post_init__(self) -> None:
        if self.disable_literal_context_modeling:
            raise FieldError("disable_literal_context_modeling", "not supported (the brotli binding pylon uses "
                                                                 "cannot set it)")

    def make(self) -> FlushingCompressor:
        b = brotli.Compressor(mode=_MODES[self.encoder_mode], quality=self.quality, lgwin=self.window_bits,
                              lgblock=self.input_block_bits)  # fmt: skip
        return FlushingCompressor(lambda data: b.process(data) + b.flush(), b.finish)


class BrotliDecompressor(EnvoyStruct, kw_only=True):
    """extensions.compression.brotli.decompressor.v3.Brotli."""

    content_encoding: ClassVar[str] = "br"
    stat_prefix: ClassVar[str] = "brotli"
    disable_ring_buffer_reallocation: bool = False
    chunk_size: ChunkSize = 4096

    def __post_init__(self) -> None:
        if self.disable_ring_buffer_reallocation:
            raise FieldError("disable_ring_buffer_reallocation", "not supported (the brotli binding pylon uses "
                                                                 "cannot set it)")

    def make(self) -> RatioGuardedDecompressor:
        return RatioGuardedDecompressor(brotli.Decompressor().process, brotli.error, ("brotli_error",),
                                        ("brotli_error", "brotli_output_overflow"))


registry.register_typed(registry.COMPRESSOR_LIBRARY, COMPRESSOR_TYPE_URL, BrotliCompressor)
registry.register_typed(registry.DECOMPRESSOR_LIBRARY, DECOMPRESSOR_TYPE_URL, BrotliDecompressor)
