"""The downstream HTTP/1.1 codec's encoder: responses as HTTP/1.1 bytes (sans-IO).

The stream hands it a status and the response headers it decided on (hop-by-
hop headers already gone, the proxy's own added); framing is decided here:
Content-Length as given, else chunked, else (HTTP/1.0, which has no chunking)
the end of the connection; `connection: close` whenever the connection ends
after this response. Bytes collect in `out` and the connection writes them
once per read or upstream event (`HttpConnection.flush_output`): one write
per response is the biggest single saving on this path.
"""

from __future__ import annotations

from pylon.proxy.http1 import CONTINUE_100, LAST_CHUNK, encode_chunk, local_reply, status_line

#: A 101's headers not relayed as they came: framing, and the connection header written here.
_UPGRADE_HEAD_SKIP = frozenset({b"connection", b"content-length", b"transfer-encoding", b"keep-alive"})


class Http1ResponseEncoder:
    """Encodes one connection's responses, one at a time (HTTP/1.1 answers in request order)."""

    __slots__ = ("out", "chunked", "server_name")

    def __init__(self, server_name: bytes) -> None:
        self.out: list[bytes] = []
        self.chunked = False  # the response being sent is chunked: data is framed, the end adds the last chunk
        self.server_name = server_name  # the server header of local replies

    def encode_continue(self) -> None:
        """`100 Continue` for a client that sent `Expect: 100-continue` and waits before its body."""
        self.out.append(CONTINUE_100)

    def encode_headers(self, status: int, headers: list[tuple[bytes, bytes]], *, close: bool, http10: bool,
                       head_request: bool) -> bool:
        """The response head; returns whether the connection ends after this response.

        `close`: the stream or the connection wants the connection ended (the
        client asked, a drain, an error). A response with no length becomes
        chunked, or for an HTTP/1.0 client is delimited by the close itself.
        """
        parts = [status_line(status)]
        has_length = False
        for pair in headers:
            if pair[0] == b"content-length":
                has_length = True
            parts.append(b"%s: %s\r\n" % pair)
        if not has_length and not head_request and status != 204 and status != 304:
            if http10:
                close = True  # an HTTP/1.0 client reads to the end of the connection
            else:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"connection: close\r\n\r\n" if close else b"\r\n")
        self.out.append(b"".join(parts))
        return close

    def encode_data(self, data: bytes) -> None:
        self.out.append(encode_chunk(data) if self.chunked else data)

    def encode_end(self) -> None:
        """The response body is complete."""
        if self.chunked:
            self.out.append(LAST_CHUNK)
            self.chunked = False

    def encode_upgrade(self, headers: list[tuple[bytes, bytes]]) -> None:
        """The 101 that switches the connection to the upgraded protocol; what follows is the tunnel's."""
        parts = [status_line(101)]
        parts += [b"%s: %s\r\n" % pair for pair in headers if pair[0] not in _UPGRADE_HEAD_SKIP]
        parts.append(b"connection: upgrade\r\n\r\n")
        self.out.append(b"".join(parts))

    def encode_local_reply(self, status: int, body: bytes, *, close: bool, content_type: bytes = b"text/plain",
                           headers: list[tuple[bytes, bytes]] | None = None, head_request: bool = False) -> None:
        """A whole response the proxy makes itself (Envoy's local reply), with its date and server headers."""
        self.chunked = False
        self.out.append(local_reply(status, body, close=close, content_type=content_type, extra=headers,
                                    server_name=self.server_name, head_only=head_request))

    def take(self) -> bytes:
        """Everything encoded since the last take, as one buffer (b"" if nothing)."""
        out = self.out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data
