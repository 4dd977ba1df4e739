"""tcp_proxy's `tunneling_config`: a TCP connection's bytes carried to the cluster inside one HTTP/1.1 request.

As Envoy 1.40 does it over HTTP/1.1 (observed): the upstream connection starts with `CONNECT <hostname>
HTTP/1.1` and `host: <hostname>` (then `headers_to_add`), or with `use_post`, `POST <post_path>` (default `/`)
with `transfer-encoding: chunked`. A 2xx response establishes the tunnel (RFC 9110: any 2xx to a CONNECT; its
framing headers are ignored); anything else, or a close before the head, fails the attempt like a refused
connect. After a CONNECT's 2xx the bytes are raw both ways; after a POST's, each downstream read goes up as one
chunk, the client's EOF as the last chunk, and the response body comes back de-framed.

Why a protocol of its own rather than a pool's connection: the exchange is one request that never ends while
the session lives, needs none of the pool's reuse, and the session only has to wait for `established` before
it sends anything (what the client sent meanwhile waits in the session's early buffer, as during a connect).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools

from pylon.proxy.access_log import AccessLogRecord, compile_text_format
from pylon.proxy.http1 import encode_chunk
from pylon.proxy.tcp_upstream import UpstreamBytes
from pylon.proxy.watermarks import apply_buffer_limit

if TYPE_CHECKING:
    from pylon.proxy.tcp_proxy import TcpProxySession

_LAST_CHUNK = b"0\r\n\r\n"


class TunnelingRequest:
    """A tunneling_config compiled once per tcp_proxy runtime: the request head each connection sends."""

    def __init__(self, config: Any) -> None:
        self.hostname: Callable[[AccessLogRecord], bytes] = compile_text_format(config.hostname)
        self.headers = [(option.header.key.lower().encode(), compile_text_format(option.header.value))
                        for option in config.headers_to_add]
        self.use_post: bool = config.use_post
        self.post_path = (config.post_path or "/").encode()

    def head(self, facts: AccessLogRecord) -> bytes:
        """The request head for one connection; `facts` are what the format strings may read of it."""
        host = self.hostname(facts)
        line = b"POST %s HTTP/1.1\r\n" % self.post_path if self.use_post else b"CONNECT %s HTTP/1.1\r\n" % host
        parts = [line, b"host: %s\r\n" % host]
        parts += [b"%s: %s\r\n" % (name, value(facts)) for name, value in self.headers]
        if self.use_post:
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)


class HttpTunnelUpstream(asyncio.Protocol):
    """The upstream half of a tunnelled session: sends the request head, waits for a 2xx, then relays.

    The session sends through `send`/`send_eof` (framing for POST) and is told of upstream bytes, EOF and close
    only once `established` said True; before that a close or a refusal just resolves it False.
    """

    def __init__(self, session: "TcpProxySession", request: TunnelingRequest, head: bytes) -> None:
        self.session = session
        self.post = request.use_post
        self.head = head
        self.transport: asyncio.Transport | None = None
        self.established: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.status = 0
        self.bytes = UpstreamBytes(session.cluster)

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        cluster = self.session.cluster
        if cluster is not None:
            apply_buffer_limit(transport, cluster.config.per_connection_buffer_limit_bytes)
        self._write(self.head)

    def data_received(self, data: bytes) -> None:
        self.bytes.received(data)
        parser = self.parser
        if parser is None:  # a CONNECT's tunnel: raw bytes
            self.session.from_upstream(data)
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # a 101 is not a 2xx: on_headers_complete refused it already
        except httptools.HttpParserError:
            self._refuse()
            return
        if not self.post and self.status:
            self.parser = None  # what follows a CONNECT's head is the tunnel's, never HTTP

    def eof_received(self) -> bool:
        if self._live():
            self.session.upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.established.done():
            self.established.set_result(False)
        elif self.established.result():
            self.session.upstream_closed()

    def pause_writing(self) -> None:
        self.session.downstream.pause_reading()

    def resume_writing(self) -> None:
        self.session.downstream.resume_reading()

    # ------------------------------------------------------------------ httptools callbacks
    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        if 200 <= self.status < 300:
            self.established.set_result(True)
        else:
            self._refuse()

    def on_body(self, body: bytes) -> None:
        if self._live():  # (the session writes it to the client even while it is still being told `established`)
            self.session.from_upstream(body)

    def on_message_complete(self) -> None:
        if self.post and self._live():
            self.session.upstream_eof()  # the POST's response ended: the upstream is done sending

    # ------------------------------------------------------------------ the session's side
    def send(self, data: bytes) -> None:
        self._write(encode_chunk(data) if self.post else data)

    def send_eof(self) -> bool:
        """Half-close towards the upstream (a POST ends its body first; Envoy then ends the connection's sending
        too, observed: nothing can follow a finished request on it); False when only a close can say it."""
        assert self.transport is not None
        if self.post:
            self._write(_LAST_CHUNK)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            return True
        return False

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.bytes.sent(data)
        self.transport.write(data)

    def _live(self) -> bool:
        return self.established.done() and self.established.result()

    def _refuse(self) -> None:
        if not self.established.done():
            self.established.set_result(False)
        if self.transport is not None:
            self.transport.close()
