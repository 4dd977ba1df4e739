"""The upstream HTTP/2 translations (sans-IO): an HTTP/1.1 request head as a header block, a response's head back,
the server's stream limit from its first SETTINGS, and the body calls as frames a real server session reads."""

from __future__ import annotations

import struct

import pytest

from pylon.proxy.http.h1_client import Http1RequestEncoder
from pylon.proxy.http.h2_client import (Http2RequestEncoder, first_settings, head_block, request_headers,
                                       response_head)
from pylon.proxy.http.h2_session import header_block
from tests.proxy.http.h2_helpers import SETTINGS, Recorder, frame, pump, session


def test_request_head_translation_drops_connection_fields_and_keeps_te_trailers() -> None:
    encoder = Http1RequestEncoder(b"POST", b"/svc/Method", b"api.local:8080", [
        (b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"x-a", b"1")], chunked=True, length=0,
        attempt_count=True)
    assert request_headers(encoder.encode_head(2), b"https") == [
        (b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"api.local:8080"), (b":path", b"/svc/Method"),
        (b"x-envoy-attempt-count", b"2"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
        (b"x-a", b"1")]  # transfer-encoding: HTTP/1 framing, gone


def test_request_head_keeps_content_length_and_drops_other_te() -> None:
    head = b"PUT /x HTTP/1.1\r\nhost: h\r\nte: gzip\r\nkeep-alive: 5\r\ncontent-length: 3\r\n\r\n"
    assert request_headers(head, b"http") == [(b":method", b"PUT"), (b":scheme", b"http"), (b":authority", b"h"),
                                              (b":path", b"/x"), (b"content-length", b"3")]


_FIELDS = [(b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"x-a", b"v: with a colon")]


@pytest.mark.parametrize("method, target, fields, options", [
    (b"POST", b"/svc/Method", _FIELDS, {"chunked": True, "length": 0, "attempt_count": True}),
    (b"POST", b"/svc/Method", _FIELDS, {"chunked": False, "length": 14, "attempt_count": False,
                                        "extra": b"x-envoy-expected-rq-timeout-ms: 5000\r\n"}),
    (b"POST", b"/empty", [], {"chunked": False, "length": 0, "attempt_count": False}),  # content-length: 0
    (b"GET", b"/", [(b"te", b"gzip"), (b"keep-alive", b"5"), (b"cookie", b"a=1")],
     {"chunked": False, "length": 0, "attempt_count": True}),  # no length at all
    (b"GET", b"/h", [(b"host", b"later.example")], {"chunked": False, "length": 0, "attempt_count": False}),
    (b"CONNECT", b"", [(b"x-b", b"2")], {"chunked": False, "length": 0, "attempt_count": False}),
    (b"GET", b"/chat", [(b"connection", b"upgrade"), (b"upgrade", b"websocket")],
     {"chunked": False, "length": 0, "attempt_count": False}),  # an accepted upgrade: extended CONNECT
])
def test_head_block_is_the_translation_of_the_encoders_bytes(method: bytes, target: bytes,
                                                              fields: list[tuple[bytes, bytes]],
                                                              options: dict) -> None:
    """The router's HTTP/2 attempts build the block from the encoder's parts: exactly what the bytes translate to."""
    for attempt in (1, 3):
        encoder = Http1RequestEncoder(method, target or b"api.local:443", b"api.local:443", fields, **options)
        block, count, extended = head_block(encoder, attempt, b"https")  # before the bytes are ever made
        translated = request_headers(encoder.encode_head(attempt), b"https")
        assert (block, count, extended) == (header_block(translated), len(translated),
                                            translated[1][0] == b":protocol")


def test_an_upgrade_goes_as_extended_connect() -> None:
    """RFC 8441: `:method CONNECT` with `:protocol` the Upgrade's value; Upgrade and Connection are not sent."""
    head = b"GET /chat?x=1 HTTP/1.1\r\nhost: h\r\nx-a: 1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    assert request_headers(head, b"http") == [(b":method", b"CONNECT"), (b":protocol", b"websocket"),
                                              (b":scheme", b"http"), (b":authority", b"h"), (b":path", b"/chat?x=1"),
                                              (b"x-a", b"1")]  # fmt: skip


def test_response_head() -> None:
    assert response_head([(b":status", b"503"), (b"grpc-status", b"14"), (b"connection", b"x")]) == (
        503, [(b"grpc-status", b"14")])


def settings_frame(*entries: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", ident, value) for ident, value in entries))


def test_first_settings() -> None:
    whole = settings_frame((0x1, 4096), (0x3, 100), (0x4, 65535))
    assert first_settings(whole) == (100, False)
    assert first_settings(whole[:12]) is None  # not all here yet
    assert first_settings(settings_frame((0x4, 1))) == (-1, False)  # says nothing: unlimited
    assert first_settings(settings_frame((0x8, 1), (0x3, 7))) == (7, True)  # extended CONNECT admitted
    with pytest.raises(ValueError):
        first_settings(frame(0x6, 0, 0, b"\0" * 8))  # a PING first is a protocol error


def test_encoder_frames_body_and_trailers_for_a_real_server() -> None:
    client_owner, server_owner = Recorder(), Recorder()
    client, server = session(client_owner, server=False), session(server_owner, server=True)
    sid = client.send_request([(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")])
    base = Http1RequestEncoder(b"POST", b"/", b"a", [], chunked=True, length=0, attempt_count=False)
    encoder = Http2RequestEncoder(base, client, sid)
    assert encoder.chunked and encoder.base is base
    assert encoder.encode_data(b"hello ") == b"" and encoder.encode_data(b"world") == b""
    assert encoder.encode_end([(b"Grpc-Status", b"0")]) == b""
    encoder.encode_end()  # once only
    pump(client, server)
    assert bytes(server_owner.body[sid]) == b"hello world"
    assert ("trailers", sid, [(b"grpc-status", b"0")]) in server_owner.events
