"""An HTTP/2 stream's timeouts are looked at through its connection's one slot in the worker's deadline wheel.

Per stream, a wheel entry and its removal cost about as much as the rest of a stream's timeout handling; so a stream
arms its connection (`Http2Connection.arm`), whose `sweep` asks each open stream. These check that the wheel holds
connections only, and that each stream's own timeout still fires on time and ends only that stream.
"""

from __future__ import annotations

import pytest

from pylon.proxy.h2_connection import H2Runtime, H2StreamConn, Http2Connection
from pylon.stats.store import StatsStore
from tests.proxy.http.h2_helpers import DATA, END_HEADERS, END_STREAM, GET_BLOCK, HEADERS, client_start, frame, frames
from tests.proxy.test_stream_states import FakeTransport, Rig


def h2_rig(monkeypatch: pytest.MonkeyPatch, route: dict) -> tuple[Rig, Http2Connection, FakeTransport]:
    rig = Rig(monkeypatch, route)
    rig.hcm.h2 = H2Runtime(rig.hcm, StatsStore())
    conn = Http2Connection(rig.hcm)
    client = FakeTransport(("127.0.0.1", 5560))
    conn.connection_made(client)  # type: ignore[arg-type]
    return rig, conn, client


def wheel_targets(rig: Rig) -> list[object]:
    """What the wheel holds besides the rig's own HTTP/1 connection and upstream connections: HTTP/2's entries."""
    return [target for slot in rig.worker.deadlines._slots.values() for target in slot
            if isinstance(target, (Http2Connection, H2StreamConn))]


def test_route_timeouts_of_streams_fire_through_their_connections_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    rig, conn, client = h2_rig(monkeypatch, {"match": {"prefix": "/"}, "route": {"cluster": "up", "timeout": "1s"}})
    conn.data_received(client_start() + frame(HEADERS, END_STREAM | END_HEADERS, 1, GET_BLOCK))
    rig.loop.run()
    rig.advance(0.5)
    conn.data_received(frame(HEADERS, END_STREAM | END_HEADERS, 3, GET_BLOCK))
    rig.loop.run()
    client.take()
    streams = [conn.streams[1].stream, conn.streams[3].stream]
    assert wheel_targets(rig) == [conn]  # one entry for both streams: the connection's
    rig.advance(0.6)  # stream 1's route timeout (1 s) passed, not stream 3's
    sent = frames(client.take())
    assert [sid for ftype, flags, sid, _ in sent if ftype in (HEADERS, DATA) and flags & END_STREAM] == [1]
    assert [s.status for s in streams] == [504, 0]
    assert wheel_targets(rig) == [conn]  # looking again for stream 3
    rig.advance(0.5)
    sent = frames(client.take())
    assert [sid for ftype, flags, sid, _ in sent if ftype in (HEADERS, DATA) and flags & END_STREAM] == [3]
    assert [s.status for s in streams] == [504, 504]
    assert [s.flags for s in streams] == ["UT", "UT"]
    assert not conn.streams and wheel_targets(rig) == [conn]  # the connection's own idle timeout is left
