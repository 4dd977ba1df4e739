"""Writes held to the end of the loop's I/O phase (write_batch.py): one write per connection per phase, in order,
and never lost or overtaken: before a close, before a tunnel's own bytes, not to a transport that is closing."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.proxy.write_batch import WriteBatch, send_held, write_batch, write_later
from pylon.stats.store import Counter
from tests.proxy.test_stream_states import GET, OK, FakeLoop, FakeTransport, Rig, rig


class Writer:
    """A connection as the batch sees it."""

    def __init__(self, batch: WriteBatch) -> None:
        self.batch = batch
        self.held: list[bytes] | None = None
        self.tx_bytes = Counter("tx")
        self.transport: Any = FakeTransport(("127.0.0.1", 1))
        self.writes: list[bytes] = []
        self.transport.write = self.writes.append


def test_held_until_the_phase_ends_then_one_write_per_connection_in_order() -> None:
    loop = FakeLoop()
    batch = write_batch(loop)  # type: ignore[arg-type]
    assert write_batch(loop) is batch  # type: ignore[arg-type]  # one per loop
    first, second = Writer(batch), Writer(batch)
    write_later(first, b"a")
    write_later(second, b"x")
    write_later(first, b"b")
    assert first.writes == [] and second.writes == [] and len(loop.ready) == 1  # one run scheduled per phase
    loop.run()
    assert first.writes == [b"ab"] and second.writes == [b"x"] and first.held is None
    write_later(first, b"c")  # the next phase schedules its own run
    loop.run()
    assert first.writes == [b"ab", b"c"]
    assert (first.tx_bytes.value, second.tx_bytes.value) == (3, 1)  # counted as written


def test_a_closing_transport_gets_nothing() -> None:
    loop = FakeLoop()
    writer = Writer(write_batch(loop))  # type: ignore[arg-type]
    write_later(writer, b"late")
    writer.transport.close()  # the peer went away meanwhile
    loop.run()
    assert writer.writes == [] and writer.held is None and writer.tx_bytes.value == 0  # nothing written, none counted
    send_held(writer)  # nothing held: nothing happens
    assert writer.writes == []


def test_the_response_leaves_at_the_end_of_the_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rig(monkeypatch)
    r.send(GET)
    upstream, upstream_transport = r.upstreams[-1]
    assert upstream_transport.take().startswith(b"GET /a HTTP/1.1\r\n")  # the request went when the phase ended
    upstream.data_received(OK)
    assert r.client.written == b""  # held: other connections' reads of this phase come first
    r.loop.run()
    assert r.client.take().endswith(b"\r\n\r\nok")


def test_a_response_that_closes_the_connection_goes_out_before_the_close(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rig(monkeypatch)
    r.send(b"GET /a HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n")
    r.upstreams[-1][0].data_received(OK)  # the stream ends, and with it the connection, in this phase
    assert r.client.closed
    assert r.client.written.startswith(b"HTTP/1.1 200 OK\r\n") and r.client.written.endswith(b"ok")


def test_the_101_goes_before_the_tunnels_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    r = Rig(monkeypatch, {"match": {"prefix": "/"}, "route": {"cluster": "up"}},
            hcm={"upgrade_configs": [{"upgrade_type": "websocket"}]})
    r.send(b"GET /chat HTTP/1.1\r\nhost: svc\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
    upstream, _ = r.upstreams[-1]
    upstream.data_received(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
                           b"first frame")
    r.loop.run()
    written = r.client.take()
    assert written.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and written.endswith(b"\r\n\r\nfirst frame")


def test_an_upstream_connection_sends_what_it_holds_before_it_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rig(monkeypatch)
    r.send(GET)
    r.answer(OK)
    upstream, transport = r.upstreams[-1]
    transport.take()
    upstream.write(b"GET /b HTTP/1.1\r\n\r\n")
    upstream.close()
    assert transport.closed and transport.written == b"GET /b HTTP/1.1\r\n\r\n"
