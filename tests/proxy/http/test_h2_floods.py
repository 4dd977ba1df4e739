"""Hostile byte sequences fed to a server session: each of Envoy's flood limits, and the two CVE attacks.

Every attack is fed in one `receive` call and must end the connection (GOAWAY out, `closed` or no more
reading), never loop or buffer without bound; the counter names the limit, as Envoy's `http2.*` stats do.
"""

from __future__ import annotations

import struct

import pytest

from pylon.proxy.http import h2_session
from pylon.proxy.http.h2_session import ENHANCE_YOUR_CALM, H2Settings

from .h2_helpers import (CONTINUATION, DATA, END_HEADERS, END_STREAM, GET_BLOCK, HEADERS, PING, POST_BLOCK, PRIORITY,
                         RST_STREAM, SETTINGS, WINDOW_UPDATE, Recorder, client_start, frame, frames, goaway_of, literal,
                         session)  # fmt: skip


def server(settings: H2Settings | None = None, owner: Recorder | None = None):
    owner = owner or Recorder()
    return session(owner, server=True, settings=settings), owner


def assert_ended_by(srv, stat: str) -> None:
    assert srv.closed
    assert srv.counters()[stat] == 1
    assert goaway_of(srv.data_to_send()) == (srv_last(srv), ENHANCE_YOUR_CALM)
    assert not srv.want_read


def srv_last(srv) -> int:
    return h2_session.lib.nghttp2_session_get_last_proc_stream_id(srv._session)


def test_consecutive_empty_data_frames():
    srv, _ = server()
    srv.receive(client_start() + frame(HEADERS, END_HEADERS, 1, POST_BLOCK) + frame(DATA, 0, 1) + frame(DATA, 0, 1))
    assert_ended_by(srv, "http2.inbound_empty_frames_flood")


def test_one_empty_frame_between_payloads_is_fine():
    srv, owner = server()
    body = frame(DATA, 0, 1) + frame(DATA, 0, 1, b"x") + frame(DATA, 0, 1) + frame(DATA, END_STREAM, 1)
    srv.receive(client_start() + frame(HEADERS, END_HEADERS, 1, POST_BLOCK) + body)
    assert not srv.closed
    assert owner.kinds() == ["headers", "end"]


def test_empty_continuation_frames():
    srv, _ = server()
    attack = frame(HEADERS, 0, 1, GET_BLOCK) + frame(CONTINUATION, 0, 1) + frame(CONTINUATION, 0, 1)
    srv.receive(client_start() + attack)
    assert_ended_by(srv, "http2.inbound_empty_frames_flood")


def test_priority_frames_beyond_100_per_stream():
    srv, _ = server()
    priority = frame(PRIORITY, 0, 3, struct.pack(">IB", 0, 15))
    srv.receive(client_start() + priority * 100)
    assert not srv.closed  # 100 * (1 + 0 streams opened) are allowed
    srv.receive(priority)
    assert_ended_by(srv, "http2.inbound_priority_frames_flood")


def test_window_updates_with_no_data_sent():
    srv, _ = server()
    update = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1))
    srv.receive(client_start() + update * 5)
    assert not srv.closed  # 5 + 2 * (streams opened + 10 * DATA frames sent) are allowed
    srv.receive(update)
    assert_ended_by(srv, "http2.inbound_window_update_frames_flood")


def test_ping_acks_never_read_are_an_outbound_control_flood():
    srv, _ = server()
    ping = frame(PING, 0, 0, b"12345678")
    srv.receive(client_start() + ping * 1500)  # the writer never drains: acks pile up
    assert_ended_by(srv, "http2.outbound_control_flood")


def test_settings_acks_never_read_are_an_outbound_control_flood():
    srv, _ = server()
    srv.receive(client_start() + frame(SETTINGS, 0, 0) * 1500)
    assert_ended_by(srv, "http2.outbound_control_flood")


def test_hpack_bomb_small_on_the_wire_large_decoded():
    """One 4000-byte field put in the dynamic table, then referenced by one byte each: the decoded size is capped."""
    index_it = b"\x40\x05x-big" + b"\x7f\xa1\x1e" + b"b" * 4000  # literal with indexing, value length 4000
    refs = b"\xbe" * 20  # index 62: the newest dynamic entry
    srv, owner = server()
    srv.receive(client_start() + frame(HEADERS, END_HEADERS | END_STREAM, 1, GET_BLOCK + index_it + refs))
    assert_ended_by(srv, "http2.header_overflow")
    assert owner.events == []


def test_pings_that_are_read_are_fine():
    srv, _ = server()
    srv.receive(client_start())
    for _ in range(5):
        srv.receive(frame(PING, 0, 0, b"12345678") * 900)
        srv.data_to_send()
    assert not srv.closed


def test_responses_queued_behind_a_peer_that_does_not_read_are_an_outbound_flood():
    class Answering(Recorder):
        def on_headers(self, stream_id, headers, end_stream):
            self.conn.send_response(stream_id, [(b":status", b"200")], end_stream=True)

    srv, _ = server(H2Settings(max_outbound_frames=50), Answering())
    srv.receive(client_start() + b"".join(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, GET_BLOCK)
                                          for i in range(60)))  # fmt: skip
    assert srv.closed
    assert srv.counters()["http2.outbound_flood"] == 1
    out = srv.data_to_send()
    assert goaway_of(out)[1] == ENHANCE_YOUR_CALM
    assert len(out) == 17  # only the GOAWAY: the queued responses are dropped, not flushed
    assert srv.data_to_send() == b""


def test_header_block_over_max_request_headers_kb():
    srv, _ = server(H2Settings(max_header_bytes=1024))
    block = GET_BLOCK + b"".join(literal(b"x-h%d" % i, b"v" * 100) for i in range(10))
    srv.receive(client_start() + frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    assert_ended_by(srv, "http2.header_overflow")


def test_more_headers_than_max_headers_count():
    srv, owner = server(H2Settings(max_headers_count=10))
    ok = GET_BLOCK + b"".join(literal(b"x-%d" % i, b"v") for i in range(6))  # 4 pseudo + 6 = 10
    srv.receive(client_start() + frame(HEADERS, END_HEADERS | END_STREAM, 1, ok))
    assert owner.kinds() == ["headers"]
    srv.receive(frame(HEADERS, END_HEADERS | END_STREAM, 3, ok + literal(b"x-11", b"v")))
    assert_ended_by(srv, "http2.header_overflow")


def test_continuation_flood_cve_2024_27316():
    """Headers that never end: many CONTINUATION frames, each with a few small fields."""
    srv, owner = server()
    attack = frame(HEADERS, 0, 1, GET_BLOCK) + b"".join(
        frame(CONTINUATION, 0, 1, literal(b"x-c", b"%d" % i)) for i in range(10000))
    srv.receive(client_start() + attack)
    assert_ended_by(srv, "http2.header_overflow")
    assert owner.events == []


def open_and_reset(count: int) -> bytes:
    """`count` streams, each opened with HEADERS and cancelled with RST_STREAM at once."""
    cancel = struct.pack(">I", 8)
    return b"".join(frame(HEADERS, END_HEADERS | END_STREAM, sid, GET_BLOCK) + frame(RST_STREAM, 0, sid, cancel)
                    for sid in range(1, 2 * count, 2))  # fmt: skip


def test_rapid_reset_cve_2023_44487():
    """HEADERS then RST_STREAM, over and over, in one read: parsing stops at the burst, not after 3000 streams."""
    srv, owner = server(H2Settings(stream_reset_burst=100))
    srv.receive(client_start() + open_and_reset(3000))
    assert_ended_by(srv, "http2.rx_reset_flood")
    assert owner.kinds().count("headers") == 101


def test_resets_under_the_burst_are_fine():
    srv, owner = server(H2Settings(stream_reset_burst=100))
    srv.receive(client_start() + open_and_reset(100))
    assert not srv.closed
    assert srv.counters()["http2.rx_reset"] == 100


@pytest.mark.parametrize("field", [literal(b"X-Upper", b"v"), literal(b"x-ctl", b"a\x01b"),
                                   literal(b"connection", b"x")])  # fmt: skip
def test_invalid_fields_reset_the_stream_and_count_a_messaging_error(field):
    srv, owner = server()
    srv.receive(client_start() + frame(HEADERS, END_HEADERS | END_STREAM, 1, GET_BLOCK + field)
                + frame(HEADERS, END_HEADERS | END_STREAM, 3, GET_BLOCK))  # fmt: skip
    assert [e[:2] for e in owner.events] == [("headers", 3)]  # the connection goes on
    out = srv.data_to_send()
    assert (RST_STREAM, 0, 1, struct.pack(">I", 1)) in frames(out)  # PROTOCOL_ERROR
    assert srv.counters()["http2.rx_messaging_error"] == 1
    assert srv.counters()["http2.tx_reset"] == 1


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.1\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64])
def test_garbage_ends_the_connection(junk):
    srv, _ = server()
    srv.receive(junk)
    assert goaway_of(srv.data_to_send())[1] != 0
    assert srv.closed and not srv.want_read
