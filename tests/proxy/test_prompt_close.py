"""close_promptly: the FIN leaves with the last write, and never ahead of bytes still queued."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvloop

from pylon.proxy.prompt_close import close_promptly


def accepted_pair() -> tuple[socket.socket, socket.socket]:
    """(client, accepted server side) of one loopback TCP connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


def peer_sees(client: socket.socket) -> bytes:
    """What the client can read without waiting: the bytes there, plus b"<EOF>" when the FIN is there too."""
    client.setblocking(False)
    got = b""
    while True:
        try:
            chunk = client.recv(65536)
        except BlockingIOError:
            return got
        if not chunk:
            return got + b"<EOF>"
        got += chunk


def test_the_fin_follows_the_last_write_before_the_loop_turns() -> None:
    """uvloop's close() alone closes the socket at the loop's next turn; the client then finished first."""
    client, server = accepted_pair()
    seen: dict[str, bytes] = {}

    async def serve() -> None:
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, server)
        transport.write(b"response")
        close_promptly(transport)
        seen["at once"] = peer_sees(client)  # the loop has not turned since the close
        await asyncio.sleep(0.01)

    try:
        uvloop.run(serve())
        assert seen["at once"] == b"response<EOF>"
    finally:
        client.close()


def test_bytes_still_queued_go_out_before_the_fin() -> None:
    """A slow reader: the transport holds part of the response, so no shutdown now (it would cut the rest off)."""
    client, server = accepted_pair()
    body = b"x" * (16 << 20)
    got = bytearray()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server)
        transport.write(body)
        assert transport.get_write_buffer_size() > 0  # the kernel took only part of it
        close_promptly(transport)
        client.setblocking(False)
        for _ in range(100_000):
            try:
                chunk = client.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0)  # let uvloop write more as the client reads
                continue
            if not chunk:
                return
            got.extend(chunk)

    try:
        uvloop.run(serve())
        assert len(got) == len(body)
    finally:
        client.close()


def test_a_wrapping_transport_is_only_closed() -> None:
    """The TLS transport and taps are closed as they are: no shutdown through them (they may hold records)."""
    calls: list[str] = []

    class Wrapper(asyncio.Transport):
        def get_write_buffer_size(self) -> int:
            calls.append("size")
            return 0

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            calls.append(name)
            return default

        def close(self) -> None:
            calls.append("close")

    close_promptly(Wrapper())
    assert calls == ["close"]
