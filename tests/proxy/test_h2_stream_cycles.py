"""A finished HTTP/2 stream leaves no reference cycle: reference counting frees its objects, not the collector.

Under h2load the collector freed ~9 containers per request (a stream and its connection view pointing at each other,
an attribute holding the object itself) and took an eighth of the worker's CPU (benchmarks/results/
h2_stream_profile.md). A link added back to a stream that nothing drops shows up here as a cycle.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from pylon.proxy.h2_connection import H2Runtime, H2StreamConn, Http2Connection
from pylon.proxy.http.h2_session import H2Connection
from pylon.proxy.upstream.h2_pool import H2UpstreamStream
from pylon.stats.store import StatsStore
from tests.proxy.http.h2_helpers import END_HEADERS, END_STREAM, GET_BLOCK, HEADERS, client_start, frame, frames
from tests.proxy.test_stream_states import FakeTransport, Rig

ROUTE = {"match": {"prefix": "/"}, "route": {"cluster": "up"}}


def h2_connection(monkeypatch: pytest.MonkeyPatch, port: int) -> tuple[Rig, Http2Connection, FakeTransport]:
    """The rig's connection manager serving HTTP/2 (as a listener whose codec_type allows it sets it up)."""
    rig = Rig(monkeypatch, ROUTE)
    rig.hcm.h2 = H2Runtime(rig.hcm, StatsStore())
    conn = Http2Connection(rig.hcm)
    client = FakeTransport(("127.0.0.1", port))
    conn.connection_made(client)  # type: ignore[arg-type]
    return rig, conn, client


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The collector off (it would free cycles behind the test's back), on again afterwards."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def cyclic_garbage() -> set[str]:
    """Type names of what only the collector could free now."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_a_finished_stream_relayed_to_an_http1_upstream_leaves_no_cycle(monkeypatch: pytest.MonkeyPatch,
                                                                         no_collector: None) -> None:
    rig, conn, client = h2_connection(monkeypatch, 5556)
    for stream_id in (1, 3):
        conn.data_received((client_start() if stream_id == 1 else b"") +
                           frame(HEADERS, END_STREAM | END_HEADERS, stream_id, GET_BLOCK))
        rig.loop.run()
        rig.answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        rig.loop.run()
    sent = frames(client.take())
    assert [(sid, flags & END_STREAM) for ftype, flags, sid, _ in sent if sid and ftype == 0] == [(1, 1), (3, 1)]
    assert not conn.streams  # both closed: the connection holds neither
    garbage = cyclic_garbage()
    assert not garbage & {"Stream", "H2StreamConn", "Http2ResponseEncoder", "Http1RequestEncoder"}, garbage
    conn.connection_lost(None)
    del conn, rig
    assert not cyclic_garbage() & {"Stream", "H2StreamConn"}


def test_the_transport_a_stream_sees_is_its_own_view_without_holding_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _rig, conn, _client = h2_connection(monkeypatch, 5557)
    view = H2StreamConn(conn, 1)
    assert view.transport is view
    assert "transport" not in H2StreamConn.__slots__ and "transport" not in H2UpstreamStream.__slots__
    assert isinstance(conn.session, H2Connection)
