"""The supervisor <-> worker control channel: length-prefixed msgpack over a socketpair.

Not on the data path: it carries the worker's start-up parameters, stats
snapshots for the admin endpoint, cluster descriptions and drain orders.
Each message is a 4-byte big-endian length followed by a msgpack map.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgspec

_LENGTH = struct.Struct("!I")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def encode(message: dict[str, Any]) -> bytes:
    body = _encoder.encode(message)
    return _LENGTH.pack(len(body)) + body


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None when the peer closed the channel."""
    try:
        header = await reader.readexactly(_LENGTH.size)
        (length,) = _LENGTH.unpack(header)
        return _decoder.decode(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class ControlClient:
    """Supervisor side of one worker's channel: one request at a time, each reply matched by its id.

    A reply that comes after its request timed out is read and dropped by the
    next request instead of being taken for that request's answer.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.lock = asyncio.Lock()
        self.last_id = 0

    async def request(self, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any] | None:
        async with self.lock:
            self.last_id += 1
            request_id = self.last_id
            try:
                self.writer.write(encode({**message, "id": request_id}))
                await self.writer.drain()
                return await asyncio.wait_for(self._reply_to(request_id), timeout)
            except (ConnectionError, asyncio.TimeoutError):
                return None

    async def _reply_to(self, request_id: int) -> dict[str, Any] | None:
        while True:
            reply = await read_message(self.reader)
            if reply is None or reply.get("id") == request_id:
                return reply

    def close(self) -> None:
        self.writer.close()
