"""gRPC-Web's wire format as Envoy's grpc_web filter reads and writes it (sans-IO).

gRPC-Web carries gRPC's length-prefixed messages in the body and, since browsers cannot read HTTP trailers, the
trailers as one more frame at the body's end: flag 0x80, then an HTTP/1-style block, `name:value\\r\\n` per field.
The `-text` variants base64 the whole body. Base64 groups are 4 characters for 3 bytes, and a body arrives in
pieces split anywhere, so each side keeps the unfinished group for the next piece. A client may send several
separately padded base64 runs one after another (each message encoded alone): the decoder takes a padded group
as the end of one run, not of the body.
"""

from __future__ import annotations

import base64
import binascii

from pylon.extensions.filters.common.grpc_frames import TRAILER_FLAG, frame

#: the content-types Envoy's filter takes for gRPC-Web (anything else, `+json` included, passes untouched)
BINARY_TYPES = frozenset({b"application/grpc-web", b"application/grpc-web+proto"})
TEXT_TYPES = frozenset({b"application/grpc-web-text", b"application/grpc-web-text+proto"})
REQUEST_TYPES = BINARY_TYPES | TEXT_TYPES
BINARY_RESPONSE = b"application/grpc-web+proto"
TEXT_RESPONSE = b"application/grpc-web-text+proto"
#: a response that already is framed gRPC (or gRPC-Web); anything else is an error to turn into grpc-status
PROTO_RESPONSE_TYPES = frozenset({b"application/grpc", b"application/grpc+proto"}) | REQUEST_TYPES


class Base64Error(ValueError):
    """The body is not base64 (or ends inside a group)."""


def trailer_frame(trailers: list[tuple[bytes, bytes]]) -> bytes:
    """The trailers as gRPC-Web's last frame."""
    return frame(b"".join(name + b":" + value + b"\r\n" for name, value in trailers), TRAILER_FLAG)


class Base64Decoder:
    """A -text request body back to bytes, piece by piece."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""  # an unfinished group (fewer than 4 characters)

    def feed(self, data: bytes) -> bytes:
        data = self._rest + data
        whole = len(data) - len(data) % 4
        self._rest = data[whole:]
        return _decode_runs(data[:whole])

    def finish(self) -> None:
        """The body ended: an unfinished group is an error."""
        if self._rest:
            raise Base64Error("the body ends inside a base64 group")


def _decode_runs(data: bytes) -> bytes:
    out, start = [], 0
    while start < len(data):
        pad = data.find(b"=", start)
        end = len(data) if pad < 0 else pad - pad % 4 + 4  # a padded group ends a run
        try:
            out.append(base64.b64decode(data[start:end], validate=True))
        except binascii.Error as error:
            raise Base64Error(str(error)) from None
        start = end
    return b"".join(out)


class Base64Encoder:
    """A response body to -text, piece by piece: whole groups as they fill, the rest (padded) at the end."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""  # fewer than 3 bytes not yet encoded

    def feed(self, data: bytes) -> bytes:
        data = self._rest + data
        whole = len(data) - len(data) % 3
        self._rest = data[whole:]
        return base64.b64encode(data[:whole])

    def finish(self, tail: bytes = b"") -> bytes:
        """What is left, and `tail` (the trailer frame), encoded with padding."""
        data, self._rest = self._rest + tail, b""
        return base64.b64encode(data)
