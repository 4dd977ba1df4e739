"""The upstream HTTP/2 codec's translations (sans-IO): an HTTP/1.1-shaped request out, a response head in.

The router builds each upstream request once, as HTTP/1.1 bytes
(`Http1RequestEncoder`), whatever the cluster speaks: the HTTP/1 path, the
benchmark, pays nothing for HTTP/2. An attempt that lands on an HTTP/2
connection turns that head into a header block here (`request_headers`):
`:authority` from Host, `:scheme` from the connection, connection-specific
fields and the HTTP/1 framing (`transfer-encoding`) dropped, `te: trailers`
kept, an accepted Upgrade sent as extended CONNECT (`:protocol`, RFC 8441, as
Envoy's upstream codec sends it); a `content-length` stays, as Envoy's upstream
codec keeps it (nghttp2 checks it against the DATA). The router's own attempts
skip the bytes: `head_block` builds the same block, as the session takes it
(`name\0value\0...`), from what the encoder made its head of.
`Http2RequestEncoder` stands in for the HTTP/1 encoder for the
rest of the attempt: the stream's body and end calls become
DATA and trailers on the connection's `H2Connection`, and return b"" (the
stream's later `write` only flushes the session). `response_head` reads a
response's header block back into a status and HTTP/1-shaped fields.

`first_settings` reads the peer's SETTINGS_MAX_CONCURRENT_STREAMS and
SETTINGS_ENABLE_CONNECT_PROTOCOL from the first frame of the server's preface
(RFC 9113 3.4: it must be SETTINGS): the pool needs them to know when a
connection is full and whether an upgrade may go as extended CONNECT, and
libnghttp2's binding exposes no getter for them.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pylon.proxy.http.h2_session import H2Error
from pylon.proxy.http1 import HOP_BY_HOP

if TYPE_CHECKING:
    from pylon.proxy.http.h1_client import Http1RequestEncoder
    from pylon.proxy.http.h2_session import H2Connection

Headers = list[tuple[bytes, bytes]]

#: Request fields that never go in an HTTP/2 request (RFC 9113 8.2.2); `te` is checked apart (`trailers` stays).
_DROPPED = (HOP_BY_HOP | {b"host"}) - {b"te"}
#: Response fields the stream must not relay from an HTTP/2 upstream (nghttp2 refuses most of them already).
_RESPONSE_DROPPED = HOP_BY_HOP

_SETTINGS = 0x4
_MAX_CONCURRENT_STREAMS = 0x3
_ENABLE_CONNECT_PROTOCOL = 0x8


def request_headers(head: bytes, scheme: bytes) -> Headers:
    """An HTTP/1.1 request head (as `Http1RequestEncoder` built it) as an HTTP/2 header block."""
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    authority = b""
    protocol = b""
    fields: Headers = []
    for line in lines[1:]:
        if not line:
            break
        name, _, value = line.partition(b": ")
        if name == b"host":
            authority = value
        elif name == b"te":
            if value.lower() == b"trailers":
                fields.append((name, value))
        elif name not in _DROPPED:
            fields.append((name, value))
        elif name == b"upgrade":
            protocol = value
    return _pseudo_headers(method, protocol, scheme, authority, target) + fields


def _pseudo_fields(method: bytes, protocol: bytes, scheme: bytes, authority: bytes, target: bytes) -> list[bytes]:
    """The request's pseudo-header fields, names and values in turn: an accepted upgrade (the router adds `upgrade`
    only then) as extended CONNECT (RFC 8441), a plain CONNECT with :authority alone, else all four."""
    if protocol:
        return [b":method", b"CONNECT", b":protocol", protocol, b":scheme", scheme, b":authority", authority,
                b":path", target]
    if method == b"CONNECT":
        return [b":method", method, b":authority", authority]
    return [b":method", method, b":scheme", scheme, b":authority", authority, b":path", target]


def _pseudo_headers(method: bytes, protocol: bytes, scheme: bytes, authority: bytes, target: bytes) -> Headers:
    it = iter(_pseudo_fields(method, protocol, scheme, authority, target))
    return list(zip(it, it))


def head_block(base: "Http1RequestEncoder", attempt: int, scheme: bytes) -> tuple[bytes, int, bool]:
    """`header_block(request_headers(base.encode_head(attempt), scheme))`, its field count and whether it is an
    extended CONNECT, built from the parts the encoder made its head of in one pass, with no HTTP/1.1 bytes and no
    list of pairs in between (a gRPC call's head cost as much as the rest of its HEADERS)."""
    method, target, authority, headers, extra, declared = base.parts
    protocol = b""
    flat: list[bytes] = []
    if base.attempt_count:
        flat += (b"x-envoy-attempt-count", b"%d" % attempt)
    if extra is not None:  # ready header lines ("name: value\r\n")
        headers = headers + [line.partition(b": ")[::2] for line in extra.split(b"\r\n")[:-1]]
    for pair in headers:
        name = pair[0]
        if name == b"host":
            authority = pair[1]  # a later host line wins in request_headers too
        elif name == b"te":
            if pair[1].lower() == b"trailers":
                flat += pair
        elif name not in _DROPPED:
            flat += pair
        elif name == b"upgrade":
            protocol = pair[1]
    if declared is not None:
        flat += (b"content-length", b"%d" % declared)
    pseudo = _pseudo_fields(method, protocol, scheme, authority, target)
    count = (len(pseudo) + len(flat)) // 2
    pseudo += flat
    pseudo.append(b"")
    return b"\0".join(pseudo), count, bool(protocol)


def response_head(fields: Headers) -> tuple[int, Headers]:
    """(status, fields without pseudo-headers and connection-specific ones) of a response's header block."""
    status = 0
    headers: Headers = []
    for pair in fields:
        name = pair[0]
        if name == b":status":
            status = int(pair[1])
        elif name[:1] != b":" and name not in _RESPONSE_DROPPED:
            headers.append(pair)
    return status, headers


def first_settings(preface: bytes) -> tuple[int, bool] | None:
    """The MAX_CONCURRENT_STREAMS (-1 when not said: unlimited) and ENABLE_CONNECT_PROTOCOL (RFC 8441: whether an
    upgrade may go as extended CONNECT) of the SETTINGS frame `preface` starts with; None while the frame is
    incomplete. ValueError when the first frame is not SETTINGS."""
    if len(preface) < 9:
        return None
    length = int.from_bytes(preface[:3], "big")
    if preface[3] != _SETTINGS:
        raise ValueError("the server's preface does not start with SETTINGS")
    if len(preface) < 9 + length:
        return None
    found = -1
    connect = False
    for offset in range(9, 9 + length - length % 6, 6):
        ident, value = struct.unpack_from(">HI", preface, offset)
        if ident == _MAX_CONCURRENT_STREAMS:
            found = value
        elif ident == _ENABLE_CONNECT_PROTOCOL:
            connect = value == 1
    return found, connect


class Http2RequestEncoder:
    """An attempt's body and end as calls on its HTTP/2 stream (the `Http1RequestEncoder` calls the stream makes).

    `base` is the HTTP/1 encoder it stands in for: the stream takes it back when the attempt ends, so a retry on
    an HTTP/1.1 connection frames as before.
    """

    __slots__ = ("base", "codec", "stream_id", "ended", "queued")
    chunked = True  # the stream calls `encode_end` for every request: HTTP/2 ends each with END_STREAM

    def __init__(self, base: "Http1RequestEncoder", codec: "H2Connection", stream_id: int) -> None:
        self.base = base
        self.codec = codec
        self.stream_id = stream_id
        self.ended = False
        # What the stream had queued in the session after the latest body submission, until the stream's write
        # checks it against the buffer limit (H2UpstreamStream.write): only a submission can raise it.
        self.queued = 0

    def encode_data(self, data: bytes) -> bytes:
        if data and not self.ended:
            try:
                self.queued = self.codec.send_data(self.stream_id, data)
            except H2Error:
                self.ended = True  # the stream is gone (reset, connection lost): its close tells the exchange
        return b""

    def encode_end(self, trailers: Headers | None = None) -> bytes:
        if not self.ended:
            self.ended = True
            try:
                if trailers:
                    self.codec.send_trailers(self.stream_id, [(n.lower(), v) for n, v in trailers])
                else:
                    self.codec.send_data(self.stream_id, b"", end_stream=True)
            except H2Error:
                pass  # as in encode_data
        return b""
