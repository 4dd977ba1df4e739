"""A connection inside one process: two asyncio transports joined back to back, no socket (Envoy's user space
sockets, `io_socket/user_space`, which internal listeners accept from).

Bytes one side writes land in the other side's inbox and reach its protocol's
`data_received` on a later loop iteration (never inside the writer's call:
protocols are not written to be re-entered), at most `CHUNK` bytes per
callback so one busy pair cannot hold the loop. A side whose protocol paused
reading keeps its inbox; its writer sees the unread bytes as its write buffer.

Back-pressure, as Envoy's pair: the receiving side holds up to `buffer_size`
bytes (the bootstrap extension's `buffer_size_kb`) before the writer's
connection buffers anything itself, and that connection's own limit
(`set_write_buffer_limits`, which pylon sets from per_connection_buffer_limit_bytes)
comes on top: the writer's protocol is paused past `buffer_size + high` unread
bytes and resumed at `buffer_size + low`.

Ends as TCP's: `write_eof` is a FIN (the other side's `eof_received` after the
bytes before it; a false answer closes that side, as asyncio's transports do);
`close` is a FIN and the end of this side; `abort` is a reset (the other side
loses its unread bytes and its connection, with ConnectionResetError). Writing
to a side that has closed resets the writer, as writing to a closed socket does.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: The most one data_received carries (a socket read's order of size).
CHUNK = 256 * 1024
#: asyncio's default write buffer limits, until the protocol sets its own.
_DEFAULT_HIGH = 64 * 1024


class UserSpaceTransport(asyncio.Transport):
    """One side of an in-process connection (see the module's docstring); made in pairs by `transport_pair`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, local: str, remote: str, buffer_size: int) -> None:
        super().__init__()
        self.loop = loop
        self.local = local
        self.remote = remote
        self.buffer_size = buffer_size
        self.protocol: Any = None
        self.peer: UserSpaceTransport | None = None
        self.inbox = bytearray()  # what the peer wrote that this side's protocol has not been given yet
        self.eof_in = False  # the peer sent FIN (write_eof or close): eof_received after the inbox
        self.eof_given = False
        self.eof_out = False  # this side sent FIN
        self.reading = True
        self.scheduled = False
        self.closing = False
        self.lost = False  # connection_lost called
        self.high = _DEFAULT_HIGH
        self.low = _DEFAULT_HIGH // 4
        self.writing_paused = False

    # ------------------------------------------------------------------ asyncio.Transport
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing or self.eof_out or not data:
            return
        peer = self.peer
        if peer is None or peer.closing:
            self._reset()  # the other side has gone: as writing to a closed socket
            return
        peer.inbox += data
        peer.schedule()
        if not self.writing_paused and len(peer.inbox) > self.buffer_size + self.high:
            self.writing_paused = True
            self.protocol.pause_writing()

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self.eof_out or self.closing:
            return
        self.eof_out = True
        if self.peer is not None:
            self.peer.eof_in = True
            self.peer.schedule()

    def close(self) -> None:
        if self.closing:
            return
        self.write_eof()
        self.closing = True
        self.loop.call_soon(self._lose, None)

    def abort(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.inbox.clear()
        peer = self.peer
        if peer is not None:
            peer._reset()
        self.loop.call_soon(self._lose, None)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            self.schedule()

    def is_reading(self) -> bool:
        return self.reading and not self.closing

    def get_write_buffer_size(self) -> int:
        """What this side's connection holds itself: the unread bytes beyond the other side's buffer."""
        peer = self.peer
        return max(0, len(peer.inbox) - self.buffer_size) if peer is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.low, self.high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = _DEFAULT_HIGH if high is None else high
        self.low = self.high // 4 if low is None else low

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol  # type: ignore[no-any-return]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self.local
        if name == "peername":
            return self.remote
        return default  # no socket, no TLS

    # ------------------------------------------------------------------ the pair's plumbing
    def schedule(self) -> None:
        """Give the protocol what arrived, on a later loop iteration."""
        if not self.scheduled and not self.lost:
            self.scheduled = True
            self.loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self.scheduled = False
        if self.lost or self.closing or not self.reading:
            return
        if self.inbox:
            data = bytes(self.inbox[:CHUNK])
            del self.inbox[:CHUNK]
            if self.peer is not None:
                self.peer.drained(len(self.inbox))
            self.protocol.data_received(data)
            if self.inbox or self.eof_in:
                self.schedule()
            return
        if self.eof_in and not self.eof_given:
            self.eof_given = True
            if not self.protocol.eof_received():
                self.close()

    def drained(self, unread: int) -> None:
        """The other side read: `unread` bytes of this side's are left; resume this side's writer below its low
        mark."""
        if self.writing_paused and unread <= self.buffer_size + self.low and not self.closing:
            self.writing_paused = False
            self.protocol.resume_writing()

    def _reset(self) -> None:
        """The other side aborted (or this side wrote to a closed one): unread bytes dropped, connection lost."""
        if self.lost:
            return
        self.closing = True
        self.inbox.clear()
        self.loop.call_soon(self._lose, ConnectionResetError("Connection reset by peer"))

    def _lose(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        self.closing = True
        self.protocol.connection_lost(exc)


def transport_pair(loop: asyncio.AbstractEventLoop, client_address: str, server_address: str,
                   buffer_size: int) -> tuple[UserSpaceTransport, UserSpaceTransport]:
    """(client side, server side): each one's peer name is the other's address."""
    client = UserSpaceTransport(loop, client_address, server_address, buffer_size)
    server = UserSpaceTransport(loop, server_address, client_address, buffer_size)
    client.peer, server.peer = server, client
    return client, server
