"""The in-process transport pair behind internal listeners: bytes, back-pressure and the ways a connection ends."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Awaitable, Callable

from pylon.proxy.user_space import CHUNK, UserSpaceTransport, transport_pair


class Recorder(asyncio.Protocol):
    """Keeps what its side was told; answers eof_received with `keep_open`."""

    def __init__(self, keep_open: bool = False) -> None:
        self.keep_open = keep_open
        self.data = bytearray()
        self.chunks: list[int] = []
        self.events: list[Any] = []
        self.transport: UserSpaceTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.chunks.append(len(data))

    def eof_received(self) -> bool:
        self.events.append("eof")
        return self.keep_open

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", type(exc).__name__ if exc else None))


def connected(loop: asyncio.AbstractEventLoop, buffer_size: int = 1024, keep_open: bool = False
              ) -> tuple[UserSpaceTransport, Recorder, UserSpaceTransport, Recorder]:
    client, server = transport_pair(loop, "envoy://internal_client_address/", "envoy://l/", buffer_size)
    sides = []
    for transport in (client, server):
        protocol = Recorder(keep_open)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        sides += [transport, protocol]
    return sides[0], sides[1], sides[2], sides[3]  # type: ignore[return-value]


def in_a_loop(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run an async test on its own event loop."""
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())  # type: ignore[arg-type]
    return run


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


@in_a_loop
async def test_bytes_arrive_later_in_order_and_addresses_cross() -> None:
    client, _, server, server_side = connected(asyncio.get_running_loop())
    client.write(b"one ")
    client.writelines([b"two ", b"three"])
    assert server_side.data == b""  # never inside the writer's call
    await settle()
    assert server_side.data == b"one two three"
    assert client.get_extra_info("sockname") == server.get_extra_info("peername") == "envoy://internal_client_address/"
    assert client.get_extra_info("peername") == "envoy://l/" and client.get_extra_info("socket") is None


@in_a_loop
async def test_a_paused_reader_holds_the_writer_past_buffer_and_limit() -> None:
    client, client_side, server, server_side = connected(asyncio.get_running_loop(), buffer_size=1000)
    client.set_write_buffer_limits(high=500, low=100)
    server.pause_reading()
    client.write(b"x" * 1500)
    assert client_side.events == []  # 1500 unread: the peer's 1000 plus this side's 500
    assert client.get_write_buffer_size() == 500
    client.write(b"x")
    assert client_side.events == ["pause"]
    await settle()
    assert server_side.data == b""
    server.resume_reading()
    await settle()
    assert len(server_side.data) == 1501 and client_side.events == ["pause", "resume"]


@in_a_loop
async def test_big_writes_arrive_in_chunks() -> None:
    client, _, _, server_side = connected(asyncio.get_running_loop(), buffer_size=1 << 30)
    client.write(b"y" * (CHUNK * 2 + 5))
    await settle()
    assert server_side.chunks == [CHUNK, CHUNK, 5]


@in_a_loop
async def test_half_close_both_ways() -> None:
    client, client_side, server, server_side = connected(asyncio.get_running_loop(), keep_open=True)
    client.write(b"last")
    client.write_eof()
    client.write(b"after eof")  # dropped, as after shutdown(SHUT_WR)
    await settle()
    assert server_side.data == b"last" and server_side.events == ["eof"]
    server.write(b"reply")  # the other direction still open
    server.close()
    await settle()
    assert client_side.data == b"reply" and client_side.events == ["eof"]
    assert server_side.events == ["eof", ("lost", None)]


@in_a_loop
async def test_close_is_a_fin_and_a_false_eof_answer_closes_the_other_side() -> None:
    client, client_side, _, server_side = connected(asyncio.get_running_loop())
    client.write(b"bye")
    client.close()
    await settle()
    assert server_side.data == b"bye"
    assert server_side.events == ["eof", ("lost", None)] and client_side.events == [("lost", None)]


@in_a_loop
async def test_abort_resets_the_other_side_and_drops_its_unread_bytes() -> None:
    client, client_side, server, server_side = connected(asyncio.get_running_loop())
    server.pause_reading()
    client.write(b"unread")
    client.abort()
    await settle()
    assert server_side.data == b"" and server_side.events == [("lost", "ConnectionResetError")]
    assert client_side.events == [("lost", None)]
    assert server.is_closing()


@in_a_loop
async def test_writing_to_a_closed_side_resets_the_writer() -> None:
    client, client_side, server, server_side = connected(asyncio.get_running_loop(), keep_open=True)
    server.close()
    await settle()
    assert client_side.events == ["eof"]  # half open: it may still write...
    client.write(b"too late")  # ...but the other side has gone
    await settle()
    assert client_side.events == ["eof", ("lost", "ConnectionResetError")]
    assert server_side.data == b""
