"""The compression libraries: Envoy's defaults and ranges, streams that each piece flushes, the real decoders
reading what they write, and decompressors that stop at corrupt input or a decompression bomb."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import brotli
import msgspec
import pytest
import zstandard

from pylon.config.envoy import convert
from pylon.config.errors import FieldError
from pylon.extensions.compression.brotli import BrotliCompressor, BrotliDecompressor
from pylon.extensions.compression.gzip import GzipCompressor, GzipDecompressor
from pylon.extensions.compression.zstd import ZstdCompressor, ZstdDecompressor

BODY = b"".join(b"line %d of a body that compresses well\n" % i for i in range(2000))
DECODERS = {"gzip": gzip.decompress, "br": brotli.decompress,
            "zstd": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data)}


@pytest.mark.parametrize(("struct", "config"), [
    (GzipCompressor, {}), (GzipCompressor, {"compression_level": "BEST_SPEED", "compression_strategy": "RLE",
                                            "memory_level": 9, "window_bits": 15, "chunk_size": 65536}),
    (GzipCompressor, {"memory_level": 3, "window_bits": 10}),  # the published gzip example's
    (BrotliCompressor, {}), (BrotliCompressor, {"quality": 11, "window_bits": 24, "encoder_mode": "TEXT"}),
    (BrotliCompressor, {"window_bits": 10}),  # the published brotli example's
    (ZstdCompressor, {}), (ZstdCompressor, {"compression_level": 10}),
    (ZstdCompressor, {"compression_level": 30, "enable_checksum": True, "strategy": "BTULTRA2"}),
])  # fmt: skip
def test_each_piece_is_flushed_and_the_whole_decodes(struct: type, config: dict[str, Any]) -> None:
    library = convert(config, struct)
    compressor = library.make()
    out = b""
    for start in range(0, len(BODY), 7000):
        piece = compressor.compress(BODY[start:start + 7000])
        assert piece  # flushed at once: a slow response reaches the client as it comes
        out += piece
    out += compressor.finish()
    assert DECODERS[library.content_encoding](out) == BODY
    assert len(out) < len(BODY) // 1.5  # (RLE, run-length only, compresses least)


def test_gzip_defaults_are_envoys() -> None:
    gz = convert({}, GzipCompressor)
    assert (gz.memory_level, gz.window_bits, gz.compression_level, gz.chunk_size) == (
        5, 12, "DEFAULT_COMPRESSION", 4096)
    out = gz.make().compress(b"x") + gz.make().finish()
    assert out[:2] == b"\x1f\x8b"  # a gzip header, not zlib's
    assert (convert({}, BrotliCompressor).quality, convert({}, BrotliCompressor).window_bits) == (3, 18)
    assert convert({}, ZstdCompressor).compression_level == 3


@pytest.mark.parametrize(("struct", "config", "field"), [
    (GzipCompressor, {"window_bits": 16}, "window_bits"),
    (GzipCompressor, {"memory_level": 0}, "memory_level"),
    (GzipCompressor, {"chunk_size": 100}, "chunk_size"),
    (GzipCompressor, {"compression_level": "FASTEST"}, "compression_level"),
    (BrotliCompressor, {"quality": 12}, "quality"),
    (BrotliCompressor, {"input_block_bits": 15}, "input_block_bits"),
    (BrotliCompressor, {"disable_literal_context_modeling": True}, "disable_literal_context_modeling"),
    (BrotliDecompressor, {"disable_ring_buffer_reallocation": True}, "disable_ring_buffer_reallocation"),
    (ZstdCompressor, {"dictionary": {"inline_string": "x"}}, "dictionary"),
    (ZstdDecompressor, {"dictionaries": [{"inline_string": "x"}]}, "dictionaries"),
    (GzipDecompressor, {"max_inflate_ratio": 2000}, "max_inflate_ratio"),
])  # fmt: skip
def test_out_of_range_or_unsupported_is_refused_by_name(struct: type, config: dict[str, Any], field: str) -> None:
    with pytest.raises((msgspec.ValidationError, FieldError)) as error:
        convert(config, struct)
    assert field in str(error.value)


@pytest.mark.parametrize(("struct", "encode"), [
    (GzipDecompressor, lambda data: gzip.compress(data)),
    (BrotliDecompressor, brotli.compress),
    (ZstdDecompressor, lambda data: zstandard.ZstdCompressor().compress(data)),
])
def test_decompressors_read_the_real_libraries(struct: type, encode: Any) -> None:
    packed = encode(BODY)
    config = {"window_bits": 15} if struct is GzipDecompressor else {}
    decompressor = convert(config, struct).make()
    out = b"".join(decompressor.decompress(packed[i:i + 1000]) for i in range(0, len(packed), 1000))
    assert out == BODY and decompressor.failed == ()


def test_gzip_window_smaller_than_the_stream_is_a_data_error() -> None:
    decompressor = convert({"window_bits": 9}, GzipDecompressor).make()
    assert decompressor.decompress(gzip.compress(BODY)) == b"" and decompressor.failed == ("zlib_data_error",)


@pytest.mark.parametrize(("struct", "encode"), [
    (GzipDecompressor, lambda data: gzip.compress(data)),
    (BrotliDecompressor, brotli.compress),
    (ZstdDecompressor, lambda data: zstandard.ZstdCompressor().compress(data)),
])
def test_a_decompression_bomb_is_cut_short(struct: type, encode: Any) -> None:
    bomb = encode(b"\0" * 10_000_000)
    config = {"window_bits": 15, "max_inflate_ratio": 100} if struct is GzipDecompressor else {}
    decompressor = convert(config, struct).make()
    out = decompressor.decompress(bomb)
    assert decompressor.failed and len(out) <= len(bomb) * 100 + 4096
    assert decompressor.decompress(b"more") == b""


def test_corrupt_input_ends_the_output() -> None:
    decompressor = convert({"window_bits": 15}, GzipDecompressor).make()
    packed = gzip.compress(BODY)
    assert decompressor.decompress(packed[:10] + b"\xff" * 50) == b"" and decompressor.failed
    assert zlib.decompress(zlib.compress(b"ok")) == b"ok"
