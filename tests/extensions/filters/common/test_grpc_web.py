"""gRPC-Web's framing and base64 bodies, piece by piece (sans-IO)."""

from __future__ import annotations

import base64

import pytest

from pylon.extensions.filters.common.grpc_web import Base64Decoder, Base64Encoder, Base64Error, trailer_frame

PAYLOAD = bytes(range(256)) * 3 + b"tail"


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 64, 10_000])
def test_a_text_body_decodes_however_it_is_split(size: int) -> None:
    text = base64.b64encode(PAYLOAD)
    decoder = Base64Decoder()
    out = b"".join(decoder.feed(text[i:i + size]) for i in range(0, len(text), size))
    decoder.finish()
    assert out == PAYLOAD


def test_separately_padded_runs_follow_one_another() -> None:
    decoder = Base64Decoder()
    runs = base64.b64encode(b"a") + base64.b64encode(b"bc") + base64.b64encode(b"def")  # YQ== YmM= ZGVm
    assert decoder.feed(runs[:5]) + decoder.feed(runs[5:]) == b"abcdef"
    decoder.finish()


@pytest.mark.parametrize("pieces", [[b"!!!!"], [b"YQ=a"], [b"Y", b"Q", b"=", b"*"], [b"A==="]])
def test_bad_base64_is_refused(pieces: list[bytes]) -> None:
    decoder = Base64Decoder()
    with pytest.raises(Base64Error):
        for piece in pieces:
            decoder.feed(piece)


def test_a_body_that_ends_inside_a_group_is_refused() -> None:
    decoder = Base64Decoder()
    assert decoder.feed(b"AAAAA") == b"\x00\x00\x00"
    with pytest.raises(Base64Error):
        decoder.finish()


@pytest.mark.parametrize("size", [1, 2, 3, 4, 100])
def test_a_response_encodes_in_whole_groups_and_pads_only_at_the_end(size: int) -> None:
    encoder = Base64Encoder()
    parts = [encoder.feed(PAYLOAD[i:i + size]) for i in range(0, len(PAYLOAD), size)]
    assert all(len(part) % 4 == 0 and b"=" not in part for part in parts)
    tail = encoder.finish(b"\x80trailer")
    assert base64.b64decode(b"".join(parts) + tail) == PAYLOAD + b"\x80trailer"


def test_trailers_are_one_frame_of_name_colon_value_lines() -> None:
    assert trailer_frame([(b"grpc-status", b"0"), (b"grpc-message", b"ok")]) == (
        b"\x80\x00\x00\x00\x20grpc-status:0\r\ngrpc-message:ok\r\n")
