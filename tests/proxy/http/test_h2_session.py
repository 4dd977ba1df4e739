"""The HTTP/2 codec without sockets: a client session and a server session of our own, bytes carried by hand."""

from __future__ import annotations

import ctypes
import struct

import pytest

from pylon.proxy.http import h2_session
from pylon.proxy.http.h2_session import (CANCEL, NO_ERROR, REFUSED_STREAM, H2Connection, H2Error, H2Settings,
                                         header_block)

from .h2_helpers import (DATA, END_HEADERS, END_STREAM, HEADERS, POST_BLOCK, SETTINGS, WINDOW_UPDATE, Recorder,
                         client_start, frame, frames, goaway_of, literal, pump, session)

PADDED = 0x8

REQ = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"example.com"), (b":path", b"/a?b=c"),
       (b"user-agent", b"t"), (b"x-empty", b"")]  # fmt: skip
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/up")]


def pair(server_settings: H2Settings | None = None, client_settings: H2Settings | None = None, **owner_kw):
    so, co = Recorder(**owner_kw), Recorder()
    srv = session(so, server=True, settings=server_settings)
    cli = session(co, server=False, settings=client_settings)
    return srv, so, cli, co


def test_get_and_response_headers_both_ways():
    srv, so, cli, co = pair()
    sid = cli.send_request(REQ, end_stream=True)
    pump(cli, srv)
    assert so.events == [("headers", sid, REQ, True)]
    srv.send_response(sid, [(b":status", b"204"), (b"server", b"pylon")], end_stream=True)
    pump(cli, srv)
    assert co.events == [("headers", sid, [(b":status", b"204"), (b"server", b"pylon")], True), ("closed", sid, 0)]
    assert so.events[-1] == ("closed", sid, 0)
    assert srv.streams_active == cli.streams_active == 0


def test_server_settings_are_envoys_and_the_connection_window_opens():
    """Envoy 1.40 sends these four settings, then raises the connection window to 24 MiB (seen with nghttp -v)."""
    srv = session(Recorder(), server=True)
    srv.receive(client_start())
    out = frames(srv.data_to_send())
    settings = [f for f in out if f[0] == SETTINGS and not f[1] & 1][0][3]
    entries = [struct.unpack(">HI", settings[i:i + 6]) for i in range(0, len(settings), 6)]
    assert entries == [(1, 4096), (8, 0), (3, 1024), (4, 16 * 1024 * 1024)]
    update = [f for f in out if f[0] == WINDOW_UPDATE and f[2] == 0][0][3]
    assert struct.unpack(">I", update)[0] == 24 * 1024 * 1024 - 65535


def test_bodies_larger_than_the_windows_flow_only_as_the_owner_consumes():
    small = H2Settings(initial_stream_window_size=65535, initial_connection_window_size=65535)
    srv, so, cli, co = pair(server_settings=small, auto_consume=False)
    sid = cli.send_request(POST)
    body = bytes(range(256)) * 4096  # 1 MiB
    cli.send_data(sid, body, end_stream=True)
    pump(cli, srv)
    assert len(so.body[sid]) == 65535  # back-pressure: nothing more until the proxy passes bytes on
    assert cli.pending_send_bytes == len(body) - 65535
    consumed = 0
    while ("end", sid) not in so.events:
        srv.consume(sid, len(so.body[sid]) - consumed)  # the proxy passed on everything received so far
        consumed = len(so.body[sid])
        pump(cli, srv)
    assert bytes(so.body[sid]) == body
    assert cli.pending_send_bytes == 0
    srv.send_response(sid, [(b":status", b"200")])
    srv.send_data(sid, body[:300000])
    srv.send_data(sid, body[300000:], end_stream=True)
    pump(cli, srv)
    assert bytes(co.body[sid]) == body
    assert co.events[-2:] == [("end", sid), ("closed", sid, 0)]


def test_trailers_both_ways():
    srv, so, cli, co = pair()
    sid = cli.send_request(POST)
    cli.send_data(sid, b"hello")
    cli.send_trailers(sid, [(b"x-checksum", b"abc")])
    pump(cli, srv)
    assert so.events == [("headers", sid, POST, False), ("trailers", sid, [(b"x-checksum", b"abc")])]
    assert srv.counters()["http2.trailers"] == 1
    srv.send_response(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    srv.send_data(sid, b"world")
    srv.send_trailers(sid, [(b"grpc-status", b"0")])
    pump(cli, srv)
    assert co.events == [("headers", sid, [(b":status", b"200"), (b"content-type", b"application/grpc")], False),
                         ("trailers", sid, [(b"grpc-status", b"0")]), ("closed", sid, 0)]  # fmt: skip
    assert bytes(co.body[sid]) == b"world"


def test_trailers_only_after_an_informational_response():
    """A 100 Continue is headers, not trailers; the final response follows as headers too."""
    srv, so, cli, co = pair()
    sid = cli.send_request(POST + [(b"expect", b"100-continue")])
    pump(cli, srv)
    srv.send_informational(sid, [(b":status", b"100")])
    pump(cli, srv)
    cli.send_data(sid, b"x", end_stream=True)
    pump(cli, srv)
    srv.send_response(sid, [(b":status", b"200")], end_stream=True)
    pump(cli, srv)
    assert [e[:2] + (e[2][0],) for e in co.events if e[0] == "headers"] == [
        ("headers", sid, (b":status", b"100")), ("headers", sid, (b":status", b"200"))]  # fmt: skip


def test_reset_reaches_the_other_side_and_is_counted():
    srv, so, cli, co = pair()
    sid = cli.send_request(POST)
    cli.send_data(sid, b"part")
    pump(cli, srv)
    cli.reset_stream(sid, CANCEL)
    pump(cli, srv)
    assert so.events[-1] == ("closed", sid, CANCEL)
    assert co.events[-1] == ("closed", sid, CANCEL)
    assert srv.counters()["http2.rx_reset"] == 1
    assert cli.counters()["http2.tx_reset"] == 1
    assert srv.streams_active == 0


def test_unconsumed_bytes_of_a_closed_stream_return_to_the_connection_window():
    """A stream reset with unread bytes must not shrink the connection window for good."""
    small = H2Settings(initial_stream_window_size=65535, initial_connection_window_size=65535)
    srv, so, cli, co = pair(server_settings=small, auto_consume=False)
    for _ in range(3):
        sid = cli.send_request(POST)
        cli.send_data(sid, b"x" * 40000)
        pump(cli, srv)
        assert len(so.body[sid]) == 40000  # each stream gets its full body: the window came back
        srv.reset_stream(sid, CANCEL)
        pump(cli, srv)


def test_graceful_goaway_refuses_only_streams_after_the_last_processed_one():
    srv, so, cli, co = pair()
    first = cli.send_request(REQ, end_stream=True)
    pump(cli, srv)
    late = cli.send_request(REQ, end_stream=True)
    in_flight = cli.data_to_send()  # crosses the GOAWAYs on the wire
    srv.shutdown_notice()
    srv.goaway()
    cli.receive(srv.data_to_send())
    srv.receive(in_flight)
    assert co.events == [("goaway", 2**31 - 1, NO_ERROR), ("goaway", first, NO_ERROR), ("closed", late, REFUSED_STREAM)]
    assert [e[1] for e in so.events] == [first]  # the late stream never reached the server's owner
    assert srv.want_write is False and srv.want_read  # the first stream still owes its response
    srv.send_response(first, [(b":status", b"200")], end_stream=True)
    pump(cli, srv)
    assert co.events[-1] == ("closed", first, 0)
    assert not srv.want_read and not srv.want_write
    assert srv.counters()["http2.goaway_sent"] == 2


def test_a_client_opens_no_stream_after_a_shutdown_notice():
    srv, so, cli, co = pair()
    pump(cli, srv)
    srv.shutdown_notice()
    pump(cli, srv)
    sid = cli.send_request(REQ, end_stream=True)
    pump(cli, srv)
    assert co.events[-1] == ("closed", sid, REFUSED_STREAM)  # retryable on another connection
    assert so.events == []


def test_streams_over_max_concurrent_streams_are_refused():
    srv, so, cli, co = pair(server_settings=H2Settings(max_concurrent_streams=2))
    pump(cli, srv)  # the client learns the limit...
    sids = [cli.send_request(REQ, end_stream=True) for _ in range(2)]
    pump(cli, srv)
    assert len(so.events) == 2
    extra = cli.send_request(REQ, end_stream=True)
    pump(cli, srv)  # ...and holds the third stream back until one closes
    assert len(so.events) == 2
    srv.send_response(sids[0], [(b":status", b"200")], end_stream=True)
    pump(cli, srv)
    assert ("headers", extra, REQ, True) in so.events


def test_submissions_that_cannot_be_framed_are_errors():
    srv, so, cli, co = pair()
    with pytest.raises(H2Error, match="Invalid argument"):
        cli.send_request([(b":method", b"G\0ET")] + REQ[1:])
    with pytest.raises(H2Error):
        cli.send_data(99, b"x")
    sid = cli.send_request(REQ, end_stream=True)
    with pytest.raises(H2Error):
        cli.send_data(sid, b"x")  # the request ended with its headers
    pump(cli, srv)
    cli.reset_stream(sid)
    pump(cli, srv)
    with pytest.raises(H2Error, match="not open"):
        srv.send_response(sid, [(b":status", b"200")])  # the client gave up first


def test_an_owner_exception_ends_the_connection_and_propagates():
    class Boom(Recorder):
        def on_headers(self, stream_id, headers, end_stream):
            raise RuntimeError("owner bug")

    so, co = Boom(), Recorder()
    srv, cli = session(so, server=True), session(co, server=False)
    cli.send_request(REQ, end_stream=True)
    with pytest.raises(RuntimeError, match="owner bug"):
        srv.receive(cli.data_to_send())
    assert srv.closed
    assert goaway_of(srv.data_to_send()) is not None


def test_the_events_after_an_owner_exception_are_dropped():
    """The events of a read reach the owner after nghttp2 parsed all of it: the one that raised ends the connection,
    and the requests behind it in the same read are not handed to a connection that is going away."""
    class Boom(Recorder):
        def on_headers(self, stream_id, headers, end_stream):
            super().on_headers(stream_id, headers, end_stream)
            raise RuntimeError("owner bug")

    so = Boom()
    srv = session(so, server=True)
    with pytest.raises(RuntimeError, match="owner bug"):
        srv.receive(client_start() + frame(HEADERS, END_HEADERS | END_STREAM, 1, POST_BLOCK)
                    + frame(HEADERS, END_HEADERS | END_STREAM, 3, POST_BLOCK))
    assert [e[:2] for e in so.events] == [("headers", 1)]
    assert srv.closed and goaway_of(srv.data_to_send())[1] == h2_session.INTERNAL_ERROR


def _padded(payload: bytes, pad: int = 7) -> bytes:
    return bytes([pad]) + payload + b"\0" * pad


def test_data_reaches_the_owner_whole_and_in_order_from_the_bytes_read():
    """nghttp2 hands DATA out of the bytes read, padded or not (the event holds its offset there, Python slices its
    own bytes): every chunk arrives, in the order sent, with the stream's end after them."""
    so = Recorder()
    srv = session(so, server=True)
    srv.receive(client_start() + frame(HEADERS, END_HEADERS, 1, POST_BLOCK) + frame(DATA, 0, 1, b"abc")
                + frame(DATA, PADDED, 1, _padded(b"def")) + frame(DATA, 0, 1, b"ghi")
                + frame(DATA, PADDED | END_STREAM, 1, _padded(b"jkl", 0)))
    assert bytes(so.body[1]) == b"abcdefghijkl"
    assert so.kinds() == ["headers", "end"]


def test_a_read_of_many_header_blocks_and_the_reads_after_it():
    """Over 16 KiB of events in one read (each header block is copied into them): the buffer grows for it, is let
    go before the next read, and that read's events are whole too."""
    so = Recorder()
    srv = session(so, server=True)
    big = POST_BLOCK + b"".join(literal(b"x-pad-%d" % i, b"v" * 100) for i in range(3))
    srv.receive(client_start() + b"".join(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, big)
                                          for i in range(60)))
    assert [e[1] for e in so.events] == [2 * i + 1 for i in range(60)]
    assert all(e[2][-1] == (b"x-pad-2", b"v" * 100) for e in so.events)
    assert srv._c.ecap > 16384
    srv.receive(frame(HEADERS, END_HEADERS | END_STREAM, 121, POST_BLOCK))
    assert so.events[-1][:2] == ("headers", 121)
    assert srv._c.ecap <= 16384  # what a connection keeps between reads


def test_the_optional_symbols_were_probed():
    """Debian's 1.52 has both backports; the probe (not the version) says so."""
    assert h2_session.HAS_RESET_RATE_LIMIT in (True, False)
    assert h2_session.HAS_MAX_CONTINUATIONS in (True, False)


@pytest.mark.parametrize("allow_connect", [True, False])
def test_extended_connect_only_with_allow_connect(allow_connect):
    """allow_connect advertises SETTINGS_ENABLE_CONNECT_PROTOCOL; without it a `:protocol` request is refused."""
    srv, so, cli, co = pair(server_settings=H2Settings(allow_connect=allow_connect))
    pump(cli, srv)
    sid = cli.send_request([(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
                            (b":path", b"/chat"), (b":authority", b"x")])  # fmt: skip
    pump(cli, srv)
    if allow_connect:
        assert so.events[0][:2] == ("headers", sid)
        assert (b":protocol", b"websocket") in so.events[0][2]
    else:
        assert so.events == []
        assert co.events == [("closed", sid, 1)]  # PROTOCOL_ERROR
        assert srv.counters()["http2.rx_messaging_error"] == 1


def test_a_body_and_its_trailers_wait_in_the_shim_behind_the_windows():
    """The shim's copy of a body goes out as the client's stream window allows; the trailers follow its last byte."""
    co = Recorder(auto_consume=False)
    srv = session(Recorder(), server=True)
    cli = session(co, server=False, settings=H2Settings(initial_stream_window_size=1024))
    sid = cli.send_request(REQ, end_stream=True)
    pump(cli, srv)
    srv.send_response(sid, [(b":status", b"200")])
    assert srv.send_data(sid, b"a" * 3000) == 3000  # what the stream has queued now
    assert srv.send_data(sid, b"b" * 1096) == 4096
    srv.send_trailers(sid, [(b"grpc-status", b"0")])
    pump(cli, srv)
    assert len(co.body[sid]) == 1024 and srv.pending(sid) == srv.pending_send_bytes == 3072
    assert [e[0] for e in co.events] == ["headers"]  # no trailers before the body's end
    while ("closed", sid, 0) not in co.events:
        cli.consume(sid, 1024)
        pump(cli, srv)
    assert bytes(co.body[sid]) == b"a" * 3000 + b"b" * 1096
    assert co.events[-2:] == [("trailers", sid, [(b"grpc-status", b"0")]), ("closed", sid, 0)]
    assert srv.pending(sid) == srv.pending_send_bytes == 0 and srv._c.outs == h2_session.ffi.NULL


def test_a_request_body_sent_before_its_headers_are_framed_and_after_a_wait_goes_out():
    """A request's stream opens in nghttp2 only when its HEADERS is framed: body bytes may come before that, and
    after the body ran dry (nghttp2 waits) more bytes resume it."""
    srv, so, cli, co = pair()
    sid = cli.send_request(POST)
    assert cli.send_data(sid, b"first ") == 6 and cli.pending(sid) == 6
    pump(cli, srv)
    assert bytes(so.body[sid]) == b"first " and ("end", sid) not in so.events
    cli.send_data(sid, b"second", end_stream=True)
    pump(cli, srv)
    assert bytes(so.body[sid]) == b"first second" and ("end", sid) in so.events
    with pytest.raises(H2Error, match="no open body"):
        cli.send_data(sid, b"late")


def test_trailers_with_a_nul_are_refused_when_submitted_and_the_body_stays_open():
    srv, so, cli, co = pair()
    sid = cli.send_request(POST)
    with pytest.raises(H2Error):
        cli.send_trailers(sid, [(b"x-bad", b"a\0b")])
    cli.send_trailers(sid, [(b"x-good", b"ok")])
    pump(cli, srv)
    assert ("trailers", sid, [(b"x-good", b"ok")]) in so.events


def test_a_whole_response_goes_in_one_submission_and_follows_the_windows():
    """send_whole: HEADERS, then the body framed by the shim from its own copy, as the client's windows allow,
    ending the stream."""
    small = H2Settings(initial_stream_window_size=65535, initial_connection_window_size=65535)
    srv, so, cli, co = pair(client_settings=small)
    sid = cli.send_request(REQ, end_stream=True)
    pump(cli, srv)
    body = bytes(range(256)) * 1024  # 256 KiB: four windows
    head = [(b":status", b"200"), (b"content-length", b"%d" % len(body))]
    srv.send_whole(sid, header_block(head), len(head), body)
    assert srv.pending(sid) == len(body) == srv.pending_send_bytes  # the shim holds the copy
    pump(cli, srv)
    assert co.events[0] == ("headers", sid, [(b":status", b"200"), (b"content-length", b"262144")], False)
    assert bytes(co.body[sid]) == body
    assert co.events[-2:] == [("end", sid), ("closed", sid, 0)]
    assert srv._c.outs == h2_session.ffi.NULL and srv.pending_send_bytes == 0  # framed whole: the copy was freed


def test_a_whole_response_with_trailers_goes_in_one_submission():
    """send_whole with trailers (a gRPC answer relayed whole): HEADERS, DATA, then the trailers ending the stream;
    trailers with a NUL are refused, the head and body having gone in, as a refused send_trailers after them."""
    srv, so, cli, co = pair()
    first, second = cli.send_request(REQ, end_stream=True), cli.send_request(REQ, end_stream=True)
    pump(cli, srv)
    head = [(b":status", b"200"), (b"content-type", b"application/grpc")]
    srv.send_whole(first, header_block(head), len(head), b"\0\0\0\0\x02hi", [(b"grpc-status", b"0")])
    pump(cli, srv)
    assert [e for e in co.events if e[1] == first] == [("headers", first, head, False),
                                                      ("trailers", first, [(b"grpc-status", b"0")]),
                                                      ("closed", first, 0)]
    assert bytes(co.body[first]) == b"\0\0\0\0\x02hi"
    with pytest.raises(H2Error):
        srv.send_whole(second, header_block(head), len(head), b"x", [(b"grpc-status", b"0\0")])
    srv.send_trailers(second, [(b"grpc-status", b"13")])  # its body is still open
    pump(cli, srv)
    assert ("trailers", second, [(b"grpc-status", b"13")]) in co.events and bytes(co.body[second]) == b"x"


def test_a_whole_response_on_a_stream_not_open_is_refused():
    srv, _so, _cli, _co = pair()
    with pytest.raises(H2Error):
        srv.send_whole(1, header_block([(b":status", b"200")]), 1, b"x")


def _held_back(count: int) -> tuple[H2Connection, Recorder, H2Connection, list[int]]:
    """A server with `count` whole responses of 4 KiB its client's 1 KiB stream windows hold back (it reads nothing)."""
    so, co = Recorder(), Recorder(auto_consume=False)
    srv = session(so, server=True)
    cli = session(co, server=False, settings=H2Settings(initial_stream_window_size=1024))
    sids = [cli.send_request(REQ, end_stream=True) for _ in range(count)]
    pump(cli, srv)
    for sid in sids:
        srv.send_whole(sid, header_block([(b":status", b"200")]), 1, b"x" * 4096)
    pump(cli, srv)
    assert [len(co.body[sid]) for sid in sids] == [1024] * count
    return srv, so, cli, sids


def test_the_copy_of_a_whole_body_is_freed_when_its_stream_is_reset():
    srv, so, cli, sids = _held_back(2)
    cli.reset_stream(sids[0], CANCEL)
    pump(cli, srv)
    assert ("closed", sids[0], CANCEL) in so.events
    assert srv._c.outs != h2_session.ffi.NULL and srv.pending_send_bytes == 3072  # the second's
    cli.reset_stream(sids[1], CANCEL)
    pump(cli, srv)
    assert srv._c.outs == h2_session.ffi.NULL and srv.pending_send_bytes == 0


def test_the_copies_a_session_still_holds_are_freed_with_it():
    srv, _so, _cli, _sids = _held_back(2)
    srv.close()
    assert srv._c.outs == h2_session.ffi.NULL


def _second_header_block_size(field: tuple[bytes, bytes]) -> int:
    """The HEADERS payload of the second of two identical requests carrying `field` (the first fills the table)."""
    srv, so, cli, co = pair()
    for _ in range(2):
        cli.send_request([*REQ, field], end_stream=True)
        sent = cli.data_to_send()
        srv.receive(sent)
        pump(cli, srv)
    return len([f for f in frames(sent) if f[0] == HEADERS][-1][3])


@pytest.mark.parametrize("name", [b"x-request-id", b"grpc-timeout"])
def test_a_value_new_on_every_request_is_never_indexed(name):
    """The proxy's request id (and a client's remaining deadline) change per request: indexing them only evicts
    fields that repeat, and nghttp2's encoder walks all fields indexed under a name on every look-up. Sent twice,
    such a field goes out as a literal both times, where another field's second copy is one table reference."""
    value = b"0123456789abcdef0123456789abcdef0123"
    unindexed = _second_header_block_size((name, value))
    indexed = _second_header_block_size((b"x-other-id12", value))  # a name of the same length
    assert unindexed - indexed >= len(value) // 2  # the value again (Huffman-coded), not a one-byte reference


def test_a_server_keeps_nothing_of_its_closed_streams():
    """As Envoy sets it (no_closed_streams): without it nghttp2 keeps up to max_concurrent_streams (1024) closed
    streams per connection for RFC 7540's priority tree, about 260 KiB a busy connection holds for nothing."""
    class MallInfo(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    mallinfo = ctypes.CDLL("libc.so.6").mallinfo2
    mallinfo.restype = MallInfo
    srv, so, cli, co = pair()
    pump(cli, srv)
    before = mallinfo().uordblks
    for _ in range(2000):
        sid = cli.send_request(REQ, end_stream=True)
        pump(cli, srv)
        srv.send_response(sid, [(b":status", b"204")], end_stream=True)
        pump(cli, srv)
        so.events.clear()
        co.events.clear()
    assert mallinfo().uordblks - before < 100 * 1024
