"""The downstream HTTP/2 translations (sans-IO): request heads into the stream's terms, responses into frames."""

from __future__ import annotations

import pytest

from pylon.proxy.http.h2_server import Http2ResponseEncoder, request_head
from pylon.proxy.http.h2_session import H2Error

from .h2_helpers import Recorder, pump, session

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"), (b":path", b"/a?b")]


def test_authority_becomes_the_host_field_first() -> None:
    head = request_head([*GET, (b"accept", b"*/*"), (b"host", b"other")], 0)
    assert (head.method, head.path, head.dropped) == (b"GET", b"/a?b", 0)
    assert head.headers == [(b"host", b"example.com"), (b"accept", b"*/*")]  # :authority wins, one authority kept


def test_a_host_field_stands_in_for_a_missing_authority() -> None:
    head = request_head([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h")], 0)
    assert head.headers == [(b"host", b"h")]


def test_cookies_are_joined_into_one_field_where_the_first_was() -> None:
    fields = [*GET, (b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2"), (b"cookie", b"c=3")]
    head = request_head(fields, 0)
    assert head.headers[1:] == [(b"cookie", b"a=1; b=2; c=3"), (b"x", b"y")]


def test_content_length_is_the_declared_length() -> None:
    head = request_head([*GET, (b"content-length", b"12")], 0)
    assert head.length == 12
    assert request_head(GET, 0).length is None


def test_underscored_names_dropped_or_refused_as_the_hcm_says() -> None:
    fields = [*GET, (b"x_a", b"1"), (b"ok", b"2")]
    assert request_head(fields, 0).headers[1:] == [(b"x_a", b"1"), (b"ok", b"2")]
    head = request_head(fields, 1)
    assert head.headers[1:] == [(b"ok", b"2")] and head.dropped == 1 and not head.rejected
    assert request_head(fields, 2).rejected


def _exchange(method: bytes = b"GET") -> tuple[Http2ResponseEncoder, Recorder, object, object]:
    """A server session with stream 1 open (a request from a client session), and the encoder of its response."""
    server_owner, client_owner = Recorder(), Recorder()
    server, client = session(server_owner, server=True), session(client_owner, server=False)
    client.send_request([(b":method", method), *GET[1:]], end_stream=True)
    pump(client, server)
    return Http2ResponseEncoder(server, 1, b"envoy"), client_owner, server, client


def test_a_relayed_response_drops_connection_specific_fields_and_carries_trailers() -> None:
    encoder, owner, server, client = _exchange()
    close = encoder.encode_headers(200, [(b"connection", b"keep-alive"), (b"transfer-encoding", b"chunked"),
                                         (b"keep-alive", b"5"), (b"x-a", b"1")], close=True, http10=False,
                                   head_request=False, extra=[(b"server", b"envoy")])  # fmt: skip
    assert close is True  # passed back: the connection reads it as "the request was not read whole"
    encoder.encode_data(b"body")
    encoder.encode_end([(b"grpc-status", b"0")])
    assert encoder.out
    pump(server, client)
    assert owner.events[0] == ("headers", 1, [(b":status", b"200"), (b"x-a", b"1"), (b"server", b"envoy")], False)
    assert owner.body[1] == b"body"
    assert ("trailers", 1, [(b"grpc-status", b"0")]) in owner.events


def test_a_head_response_ends_with_its_headers_and_later_calls_do_nothing() -> None:
    encoder, owner, server, client = _exchange(b"HEAD")
    encoder.encode_headers(200, [(b"content-length", b"10")], close=False, http10=False, head_request=True)
    encoder.encode_data(b"ignored")
    encoder.encode_end()
    pump(server, client)
    assert owner.events[0] == ("headers", 1, [(b":status", b"200"), (b"content-length", b"10")], True)
    assert 1 not in owner.body


def test_a_local_reply_has_envoys_fields_and_its_body() -> None:
    encoder, owner, server, client = _exchange()
    encoder.encode_local_reply(503, b"no healthy upstream", close=True, headers=[(b"x-request-id", b"r")])
    pump(server, client)
    status, fields = owner.events[0][2][0], dict(owner.events[0][2])
    assert status == (b":status", b"503")
    assert fields[b"content-length"] == b"19" and fields[b"content-type"] == b"text/plain"
    assert fields[b"server"] == b"envoy" and b"date" in fields and fields[b"x-request-id"] == b"r"
    assert owner.body[1] == b"no healthy upstream"


def test_a_grpc_local_reply_is_one_headers_frame_that_ends_the_stream() -> None:
    encoder, owner, server, client = _exchange()
    encoder.encode_trailers_only([(b"content-type", b"application/grpc"), (b"grpc-status", b"14"),
                                  (b"connection", b"close")], close=True)
    encoder.encode_end()
    pump(server, client)
    assert [event[0] for event in owner.events if event[0] != "closed"] == ["headers"]
    headers, end_stream = owner.events[0][2], owner.events[0][3]
    assert end_stream and 1 not in owner.body
    assert [pair for pair in headers if pair[0] != b"date"] == [
        (b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"14"), (b"server", b"envoy")]


def test_a_head_with_content_length_zero_ends_the_stream() -> None:  # a relayed gRPC trailers-only answer
    encoder, owner, server, client = _exchange()
    encoder.encode_headers(200, [(b"content-length", b"0"), (b"grpc-status", b"14")], close=False, http10=False,
                           head_request=False)
    encoder.encode_end()
    pump(server, client)
    assert owner.events[0][0] == "headers" and owner.events[0][3] is True
    assert [event[0] for event in owner.events if event[0] != "closed"] == ["headers"]


def test_100_continue_is_an_informational_head_before_the_response() -> None:
    encoder, owner, server, client = _exchange()
    encoder.encode_continue()
    encoder.encode_headers(204, [], close=False, http10=False, head_request=False)
    pump(server, client)
    assert [e[2][0] for e in owner.events if e[0] == "headers"] == [(b":status", b"100"), (b":status", b"204")]


def test_a_head_is_held_until_the_body_ends_then_the_response_goes_whole() -> None:
    encoder, owner, server, client = _exchange()
    encoder.encode_headers(200, [(b"content-length", b"4")], close=False, http10=False, head_request=False)
    encoder.encode_data(b"bo")
    encoder.encode_data(b"dy")
    assert encoder.out and server.data_to_send() == b""  # nothing framed yet: the head waits for the body's end
    encoder.encode_end()
    assert server.pending(1) == 4  # submitted whole: the head and the body's copy in the shim
    with pytest.raises(H2Error, match="no open body"):
        server.send_data(1, b"more")  # the body ended with the submission
    pump(server, client)
    assert owner.events[0] == ("headers", 1, [(b":status", b"200"), (b"content-length", b"4")], False)
    assert owner.body[1] == b"body" and owner.events[-2:] == [("end", 1), ("closed", 1, 0)]


def test_a_flush_submits_a_held_head_and_its_body_so_far_and_the_rest_follows() -> None:
    encoder, owner, server, client = _exchange()
    encoder.encode_headers(200, [], close=False, http10=False, head_request=False)
    encoder.encode_data(b"first ")
    encoder.commit()  # the stream flushes at the end of an upstream read: what it relayed goes out
    pump(server, client)
    assert owner.events == [("headers", 1, [(b":status", b"200")], False)] and owner.body[1] == b"first "
    encoder.encode_data(b"second")
    encoder.encode_end()
    pump(server, client)
    assert owner.body[1] == b"first second" and owner.events[-2:] == [("end", 1), ("closed", 1, 0)]


def test_a_held_head_of_a_stream_that_is_gone_is_never_submitted() -> None:
    encoder, owner, server, client = _exchange()
    encoder.encode_headers(200, [], close=False, http10=False, head_request=False)
    encoder.drop()
    encoder.commit()
    encoder.encode_end()
    pump(server, client)
    assert owner.events == []
