"""HTTP Datagram capsules (RFC 9297 / RFC 9298), sans-IO: encoding, and decoding a stream cut anywhere."""

from __future__ import annotations

import pytest

from pylon.extensions.filters.udp.capsules import CapsuleDecoder, CapsuleError, encode_datagram, encode_varint


@pytest.mark.parametrize(("value", "encoded"), [
    (0, b"\x00"), (63, b"\x3f"), (64, b"\x40\x40"), (16383, b"\x7f\xff"), (16384, b"\x80\x00\x40\x00"),
    (1073741824, b"\xc0\x00\x00\x00\x40\x00\x00\x00"),
])  # fmt: skip
def test_varints_are_quics(value: int, encoded: bytes) -> None:  # RFC 9000 section 16 and appendix A
    assert encode_varint(value) == encoded


def test_a_datagram_capsule_is_type_length_context_payload() -> None:
    assert encode_datagram(b"hello") == b"\x00\x06\x00hello"
    assert encode_datagram(b"x" * 100)[:4] == b"\x00\x40\x65\x00"  # a two-byte length


def test_the_decoder_takes_a_stream_cut_anywhere() -> None:
    stream = encode_datagram(b"one") + encode_datagram(b"") + encode_datagram(b"x" * 300)
    decoder = CapsuleDecoder()
    payloads = [payload for byte in stream for payload in decoder.feed(bytes((byte,)))]
    assert payloads == [b"one", b"", b"x" * 300]
    assert decoder.feed(stream) == [b"one", b"", b"x" * 300]


def test_other_capsules_and_contexts_are_skipped() -> None:
    unknown = encode_varint(0x2A) + encode_varint(3) + b"abc"
    other_context = b"\x00\x03\x01hi"
    assert CapsuleDecoder().feed(unknown + other_context + encode_datagram(b"kept")) == [b"kept"]


def test_a_capsule_longer_than_any_datagram_is_an_error() -> None:
    with pytest.raises(CapsuleError):
        CapsuleDecoder().feed(b"\x00" + encode_varint(1 << 20))
