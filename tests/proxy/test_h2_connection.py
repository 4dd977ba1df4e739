"""A downstream HTTP/2 stream's response back-pressure, sans-IO: a client that does not read stops its upstream only.

Through the test rig's connection manager (HTTP/1.1 upstream) with an `Http2Connection`: the response body waits in
the session behind the client's stream window; past the buffer limit the stream stops reading its upstream, and
once the client's window updates let half of it go, reads again.
"""

from __future__ import annotations

import struct

import pytest

from pylon.proxy.h2_connection import H2Runtime, Http2Connection
from pylon.stats.store import StatsStore
from tests.proxy.http.h2_helpers import (DATA, END_HEADERS, END_STREAM, GET_BLOCK, HEADERS, PREFACE, SETTINGS,
                                         WINDOW_UPDATE, frame, frames)
from tests.proxy.test_stream_states import FakeTransport, Rig

LIMIT = 16384
BODY = 200_000


def test_a_response_past_the_buffer_limit_behind_the_clients_window_stops_its_upstream_until_it_drains(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(monkeypatch, {"match": {"prefix": "/"}, "route": {"cluster": "up"}})
    rig.hcm.h2 = H2Runtime(rig.hcm, StatsStore())
    rig.hcm.buffer_limit = LIMIT
    conn = Http2Connection(rig.hcm)
    client = FakeTransport(("127.0.0.1", 5561))
    conn.connection_made(client)  # type: ignore[arg-type]
    small_window = frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 1024))  # INITIAL_WINDOW_SIZE 1 KiB per stream
    conn.data_received(PREFACE + small_window + frame(HEADERS, END_STREAM | END_HEADERS, 1, GET_BLOCK))
    rig.loop.run()
    upstream, upstream_transport = rig.upstreams[0]
    upstream.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % BODY + b"x" * 50_000)
    rig.loop.run()
    sent = sum(len(p) for ftype, _f, sid, p in frames(client.take()) if ftype == DATA and sid == 1)
    assert sent == 1024  # the client's stream window
    assert upstream_transport.paused  # 49 KiB waits in the session: past the limit, the upstream is not read
    for _ in range(40):
        if not upstream_transport.paused:
            break
        conn.data_received(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 4096)))
        rig.loop.run()
        sent += sum(len(p) for ftype, _f, sid, p in frames(client.take()) if ftype == DATA and sid == 1)
    assert not upstream_transport.paused
    assert 50_000 - sent <= LIMIT // 2  # read again once half the limit or less waits
    upstream.data_received(b"y" * 50_000)
    rig.loop.run()
    assert upstream_transport.paused  # more of the body queued past the limit again
