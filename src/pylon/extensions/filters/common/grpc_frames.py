"""gRPC's length-prefixed message framing, read as it passes (sans-IO).

Every gRPC message on the wire is a 5-byte prefix (a flag byte: bit 0 compressed, bit 7 a gRPC-Web trailer frame;
then a 4-byte big-endian length) and that many bytes. A body arrives in pieces split anywhere, a prefix included,
so the reader keeps where it is between pieces. Counting follows Envoy's Grpc::FrameInspector: a message counts
when its first byte is seen (the grpc_stats filter's request_message_count and response_message_count).
"""

from __future__ import annotations

PREFIX = 5
TRAILER_FLAG = 0x80  # gRPC-Web: the frame carries the trailers, as an HTTP/1 header block


def frame(payload: bytes, flag: int = 0) -> bytes:
    """One message (or, with TRAILER_FLAG, a gRPC-Web trailer block) with its prefix."""
    return bytes((flag,)) + len(payload).to_bytes(4, "big") + payload


class FrameCounter:
    """Counts the messages that start in a byte stream fed in arbitrary pieces."""

    __slots__ = ("count", "_prefix", "_skip")

    def __init__(self) -> None:
        self.count = 0
        self._prefix = b""  # the current message's prefix so far (b"": the next byte starts a message)
        self._skip = 0  # payload bytes of the current message still to come

    def feed(self, data: bytes) -> int:
        """Reads one piece; returns how many messages started in it."""
        started = 0
        i, end = 0, len(data)
        while i < end:
            if self._skip:
                step = min(self._skip, end - i)
                self._skip -= step
                i += step
                continue
            if not self._prefix:
                started += 1
            take = data[i:i + PREFIX - len(self._prefix)]
            i += len(take)
            self._prefix += take
            if len(self._prefix) == PREFIX:
                self._skip = int.from_bytes(self._prefix[1:], "big")
                self._prefix = b""
        self.count += started
        return started
