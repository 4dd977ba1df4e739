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

COMPRESSOR_TYPE_URL = "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli"
DECOMPRESSOR_TYPE_URL = "type.googleapis.com/envoy.extensions.compression.brotli.decompressor.v3.Brotli"

_MODES = {"DEFAULT": brotli.MODE_GENERIC, "GENERIC": brotli.MODE_GENERIC, "TEXT": brotli.MODE_TEXT,
          "FONT": brotli.MODE_FONT}
_MAX_INFLATE_RATIO = 100
ChunkSize = Annotated[int, msgspec.Meta(ge=4096, le=65536)]


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

    def make(self) -> _Compressor:
        return _Compressor(brotli.Compressor(mode=_MODES[self.encoder_mode], quality=self.quality,
                                             lgwin=self.window_bits, lgblock=self.input_block_bits))


class _Compressor:
    __slots__ = ("_b",)

    def __init__(self, b: brotli.Compressor) -> None:
        self._b = b

    def compress(self, data: bytes) -> bytes:
        return self._b.process(data) + self._b.flush()

    def finish(self) -> bytes:
        return self._b.finish()


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

    def make(self) -> _Decompressor:
        return _Decompressor()


class _Decompressor:
    __slots__ = ("_b", "_in", "_out", "failed")

    def __init__(self) -> None:
        self._b = brotli.Decompressor()
        self._in = self._out = 0
        self.failed: tuple[str, ...] = ()

    def decompress(self, data: bytes) -> bytes:
        if self.failed or not data:
            return b""
        self._in += len(data)
        try:
            out = self._b.process(data)
        except brotli.error:
            self.failed = ("brotli_error",)
            return b""
        room = self._in * _MAX_INFLATE_RATIO - self._out
        if len(out) > room:
            self.failed = ("brotli_error", "brotli_output_overflow")
            out = out[:room]
        self._out += len(out)
        return out


registry.register_typed(registry.COMPRESSOR_LIBRARY, COMPRESSOR_TYPE_URL, BrotliCompressor)
registry.register_typed(registry.DECOMPRESSOR_LIBRARY, DECOMPRESSOR_TYPE_URL, BrotliDecompressor)
