"""A grpcio server for the upstream HTTP/2 tests: service `test.Echo`, bytes in and out (no codegen).

Methods: Unary (echoes; a request `fail:<code>:<message>` aborts with that status; `trailers-only` aborts before
any message, so grpcio sends a trailers-only response), Sleep (unary, waits the seconds it is given and notes
whether it saw its call cancelled), Split (server streaming: each byte of the request as its own message),
Join (client streaming: the messages joined), Bidi (each message echoed upper-cased as it comes), Big (a
message of the size the request says).
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any, Iterator

import grpc

SERVICE = "test.Echo"


class EchoServer:
    """A grpcio server on a free loopback port; `cancelled` lists the Sleep calls it saw cancelled."""

    def __init__(self, workers: int = 32, **options: Any) -> None:
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
        self.port = self.server.add_insecure_port("127.0.0.1:0")
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
