"""Unit: the trailers-only head of a gRPC local reply (pylon.proxy.grpc_local_reply), as Envoy 1.40 builds it."""

from __future__ import annotations

import pytest

from pylon.proxy.grpc_local_reply import http_to_grpc_status, percent_encode, trailers_only_headers


@pytest.mark.parametrize("status, grpc_status", [
    (400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (502, 14), (503, 14), (504, 14), (418, 2), (500, 2),
    (302, 2), (408, 2), (200, 2)])
def test_http_statuses_map_as_grpc_documents(status: int, grpc_status: int) -> None:
    assert http_to_grpc_status(status) == grpc_status


@pytest.mark.parametrize("message, encoded", [
    (b"no healthy upstream", b"no healthy upstream"),
    (b"100%", b"100%25"), (b"a~b", b"a%7Eb"), (b"line\n", b"line%0A"), (b"\x7f", b"%7F"),
    ("t\u00e9".encode(), b"t%C3%A9"), (b"", b"")])
def test_grpc_message_is_percent_encoded(message: bytes, encoded: bytes) -> None:
    assert percent_encode(message) == encoded


def test_the_replys_headers_come_first_and_lose_their_framing() -> None:
    headers = [(b"x-a", b"1"), (b"content-type", b"text/plain"), (b"content-length", b"3")]
    assert trailers_only_headers(503, b"no healthy upstream", headers, head_request=False) == [
        (b"x-a", b"1"), (b"content-type", b"application/grpc"), (b"grpc-status", b"14"),
        (b"grpc-message", b"no healthy upstream")]


def test_a_grpc_status_set_by_the_reply_is_kept_and_an_empty_body_has_no_message() -> None:
    out = trailers_only_headers(403, b"", [(b"grpc-status", b"16")], head_request=False)
    assert out == [(b"grpc-status", b"16"), (b"content-type", b"application/grpc")]


def test_a_head_request_gets_no_message() -> None:
    out = trailers_only_headers(503, b"no healthy upstream", [], head_request=True)
    assert out == [(b"content-type", b"application/grpc"), (b"grpc-status", b"14")]


def test_a_reply_that_names_its_grpc_status_keeps_it() -> None:  # max_stream_duration's DEADLINE_EXCEEDED
    out = trailers_only_headers(504, b"downstream duration timeout", [], head_request=False, grpc_status=4)
    assert (b"grpc-status", b"4") in out
