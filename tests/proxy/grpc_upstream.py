"""Upstreams for the HTTP/2 upstream tests: a grpcio server, and an h2c server that resets streams.

`EchoServer`: grpcio, service `test.Echo`, bytes in and out (no codegen).

Methods: Unary (echoes; a request `fail:<code>:<message>` aborts with that status; `trailers-only` aborts before
any message, so grpcio sends a trailers-only response), Sleep (unary, waits the seconds it is given and notes
whether it saw its call cancelled), Split (server streaming: each byte of the request as its own message),
Join (client streaming: the messages joined), Bidi (each message echoed upper-cased as it comes), Big (a
message of the size the request says). `ResettingH2Upstream`: what grpcio and nghttpd never do on request.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from concurrent import futures
from typing import Any, Callable, Iterator

import grpc

from pylon.proxy.http.h2_session import INTERNAL_ERROR, H2Connection, H2Settings, Headers

SERVICE = "test.Echo"


class EchoServer:
    """A grpcio server on a free loopback port; `cancelled` lists the Sleep calls it saw cancelled."""

    def __init__(self, workers: int = 32, tls: tuple[bytes, bytes] | None = None, **options: Any) -> None:
        """`tls`: (key PEM, certificate chain PEM) to serve TLS (grpcio then requires ALPN h2 of its clients)."""
        self.cancelled: list[bytes] = []
        self.calls = 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                  options=[("grpc.max_receive_message_length", 64 << 20),
                                           ("grpc.max_send_message_length", 64 << 20), *options.items()])
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "Sleep": grpc.unary_unary_rpc_method_handler(self._sleep),
            "Split": grpc.unary_stream_rpc_method_handler(self._split),
            "Join": grpc.stream_unary_rpc_method_handler(self._join),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi),
            "Big": grpc.unary_unary_rpc_method_handler(self._big),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([tls]))
        self.server.start()

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._count()
        if request.startswith(b"fail:"):
            _, code, message = request.decode().split(":", 2)
            context.abort(grpc.StatusCode[code], message)
        if request == b"trailers-only":
            context.abort(grpc.StatusCode.NOT_FOUND, "nothing here")
        context.set_trailing_metadata((("x-trailer", "t1"),))
        return request

    def _sleep(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._count()
        done = threading.Event()
        context.add_callback(done.set)
        if done.wait(float(request.decode())):
            with self._lock:
                self.cancelled.append(request)
        return request

    def _split(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._count()
        for i in range(len(request)):
            yield request[i:i + 1]

    def _join(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._count()
        return b"".join(requests)

    def _bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._count()
        for message in requests:
            yield message.upper()

    def _big(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._count()
        return b"b" * int(request.decode())

    def close(self) -> None:
        self.server.stop(0)


def method(channel: grpc.Channel, kind: str, name: str) -> Any:
    """A callable for `/test.Echo/<name>` of the given kind (unary_unary, unary_stream, ...), bytes both ways."""
    return getattr(channel, kind)(f"/{SERVICE}/{name}")


class ResettingH2Upstream:
    """An h2c server on pylon's own codec (server mode) for what no third-party server does on request: it answers
    `/reset` with RST_STREAM(INTERNAL_ERROR) before any response, `/reset-mid` with a head, part of a body, then
    the reset, and anything else with 200 "ok". `paths` lists what it was asked."""

    def __init__(self) -> None:
        self.paths: list[bytes] = []
        paths = self.paths

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                serve_h2(self.request, _Resetter(paths))

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_h2(sock: socket.socket, owner: Any, after_read: Callable[[], None] | None = None,
             settings: H2Settings | None = None) -> None:
    """One connection: bytes in through the codec, what it answers out, until either side ends it (`owner` gets
    the codec as `.codec`; `after_read` is called after each read's answer went out)."""
    codec = H2Connection(owner, server=True, settings=settings)
    owner.codec = codec
    sock.sendall(codec.data_to_send())
    while not codec.closed:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        codec.receive(data)
        out = codec.data_to_send()
        if out:
            sock.sendall(out)
        if after_read is not None:
            after_read()


class _Resetter:
    """The H2Owner of one ResettingH2Upstream connection."""

    def __init__(self, paths: list[bytes]) -> None:
        self.paths = paths
        self.codec: H2Connection | None = None

    def on_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        codec = self.codec
        assert codec is not None
        path = dict(headers)[b":path"]
        self.paths.append(path)
        if path == b"/reset":
            codec.reset_stream(stream_id, INTERNAL_ERROR)
        elif path == b"/reset-mid":
            codec.send_response(stream_id, [(b":status", b"200"), (b"content-length", b"100")])
            codec.send_data(stream_id, b"partial")
        else:
            codec.send_response(stream_id, [(b":status", b"200"), (b"content-length", b"2")])
            codec.send_data(stream_id, b"ok", end_stream=True)

    def on_data(self, stream_id: int, data: bytes) -> None:
        assert self.codec is not None
        self.codec.consume(stream_id, len(data))

    def on_trailers(self, stream_id: int, trailers: Headers) -> None:
        pass

    def on_end_stream(self, stream_id: int) -> None:
        pass

    def on_stream_closed(self, stream_id: int, error_code: int) -> None:
        pass

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        pass
