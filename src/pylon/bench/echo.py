"""`pylon echo`: the workload server of every benchmark (Fortio's server role).

It must never be the bottleneck, so the common request costs as little Python
as possible: llhttp (httptools) parses, the reply to a plain `GET /` is a
precomputed byte string (refreshed once a second for its `Date`), and each
batch of pipelined requests leaves in a single `transport.write`. Fortio's
query arguments (see `echo_query`) shape other replies; `/echo` echoes the
request body and `/debug` describes the request in plain text.

`--concurrency N` forks N worker processes that each listen on the same port
with SO_REUSEPORT, so the kernel spreads connections across them.

Counters are shared across workers in an anonymous shared memory map, one slot
per worker (no locks: each worker writes only its own slot). `GET /stats`
answers Envoy-style `name: value` lines summed over all workers, and the
totals are printed when the server stops. `/stats` requests are not counted,
so a load run's count can be compared with `downstream_rq_total` exactly.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Callable

import httptools
import uvloop

from pylon.bench.echo_grpc import GrpcPingServer
from pylon.bench.echo_h2 import PREFACE, EchoH2Connection
from pylon.bench.echo_query import (
    EchoQueryError, Reply, build_response, debug_text, decide, filler, http_date, parse_echo_query,
)

DEFAULT_PORT = 8080
DEFAULT_BODY_SIZE = 100

COUNTER_NAMES = ("downstream_cx_total", "downstream_rq_total", "ssl.handshake", "ssl.session_reused",
                 "grpc_rq_total")
_CX, _RQ, _HS, _REUSED, _GRPC = range(len(COUNTER_NAMES))
_SLOT = len(COUNTER_NAMES)


class EchoCounters:
    """Per-worker counters in shared memory that survives fork; readers sum the slots."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._map = mmap.mmap(-1, 8 * _SLOT * workers)
        self.values = memoryview(self._map).cast("Q")

    def base(self, worker: int) -> int:
        return worker * _SLOT

    def totals(self) -> dict[str, int]:
        return {name: sum(self.values[w * _SLOT + i] for w in range(self.workers))
                for i, name in enumerate(COUNTER_NAMES)}

    def render(self) -> bytes:
        return "".join(f"{k}: {v}\n" for k, v in self.totals().items()).encode()


@dataclass(frozen=True)
class EchoConfig:
    """How to run the echo server; `serve_echo` takes one."""

    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""  # when set, clients must present a certificate signed by it (mTLS)
    concurrency: int = 1
    body_size: int = DEFAULT_BODY_SIZE
    grpc_port: int | None = None  # Fortio's -grpc-port: serve the gRPC ping and health services there

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls_cert:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.tls_cert, self.tls_key or None)
        if self.tls_ca:
            ctx.load_verify_locations(self.tls_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(["h2", "http/1.1"])  # as Go's server offers them: HTTP/2 by ALPN
        return ctx


class _Worker:
    """State shared by one worker's connections: precomputed replies and counters."""

    def __init__(self, config: EchoConfig, counters: EchoCounters, index: int) -> None:
        self.config = config
        self.tls = bool(config.tls_cert)
        self.counters = counters
        self.values = counters.values
        self.base = counters.base(index)
        self.body = filler(config.body_size)
        self.loop = asyncio.get_event_loop()
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the precomputed replies with the current Date, once a second."""
        self.date = http_date()
        self.default_response = build_response(200, self.body, self.date)
        self.default_close_response = build_response(200, self.body, self.date, close=True)
        self.loop.call_later(1.0, self.refresh)


class EchoProtocol(asyncio.Protocol):
    """One client connection: parse requests with llhttp, reply in order, write once per batch."""

    __slots__ = ("w", "transport", "parser", "url", "headers", "body", "out", "queue", "closing", "sniffed", "h2")

    def __init__(self, worker: _Worker) -> None:
        self.w = worker
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.body: list[bytes] | None = None
        self.out: list[bytes] = []
        self.queue: list[list] = []  # replies waiting behind a delayed one: [bytes | None, close]
        self.closing = False
        self.sniffed: bytes | None = b""  # the connection's first bytes while they may be an HTTP/2 preface
        self.h2: EchoH2Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        w = self.w
        w.values[w.base + _CX] += 1
        if w.tls:
            w.values[w.base + _HS] += 1
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.session_reused:
                w.values[w.base + _REUSED] += 1
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self.h2 = EchoH2Connection(w, self.transport, w.base + _RQ)
                return

    def data_received(self, data: bytes) -> None:
        if self.h2 is not None:
            self.h2.data_received(data)
            return
        if self.sniffed is not None:
            data = self.sniffed + data
            if self._sniff(data):
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(b"upgrade not supported")
        except httptools.HttpParserError as exc:
            self._fail(str(exc).encode())
        out = self.out
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        if self.closing and not self.queue:
            self.transport.close()

    def _sniff(self, data: bytes) -> bool:
        """Whether the connection's first bytes `data` are (the start of) HTTP/2's preface: then they are
        held until the whole preface is in, and the connection turns HTTP/2; else it stays HTTP/1.1."""
        if data[:len(PREFACE)] != PREFACE[:len(data)]:
            self.sniffed = None
            return False
        if len(data) < len(PREFACE):
            self.sniffed = data
            return True
        self.sniffed = None
        self.h2 = EchoH2Connection(self.w, self.transport, self.w.base + _RQ)
        self.h2.data_received(data)
        return True

    def _fail(self, reason: bytes) -> None:
        if not self.closing:
            self.out.append(build_response(400, reason + b"\n", self.w.date, close=True))
        self.closing = True

    # llhttp callbacks -------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = None
        self.body = None

    def on_url(self, url: bytes) -> None:
        self.url += url
        if self.url.startswith((b"/debug", b"/echo")):
            self.headers = []
            self.body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers is not None:
            self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        if self.body is not None:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.closing:
            return
        w = self.w
        keep_alive = self.parser.should_keep_alive()
        if self.url == b"/" and not self.queue:
            w.values[w.base + _RQ] += 1
            if keep_alive:
                self.out.append(w.default_response)
            else:
                self.out.append(w.default_close_response)
                self.closing = True
            return
        self._complex_reply(keep_alive)

    # everything but the plain `GET /` -----------------------------------------

    def _complex_reply(self, keep_alive: bool) -> None:
        w = self.w
        path, _, query = self.url.partition(b"?")
        if path == b"/stats":
            self._send(build_response(200, w.counters.render(), w.date, close=not keep_alive), 0.0,
                       not keep_alive)
            return
        w.values[w.base + _RQ] += 1
        try:
            reply = decide(parse_echo_query(query.decode("latin-1")))
        except EchoQueryError as exc:
            self._send(build_response(400, f"{exc}\n".encode(), w.date, close=True), 0.0, True)
            return
        close = reply.close or not keep_alive
        self._send(build_response(reply.status, self._body_for(path, reply), w.date, close=close,
                                  headers=reply.headers), reply.delay, close)

    def _body_for(self, path: bytes, reply: Reply) -> bytes:
        if reply.body_size is not None:
            return filler(reply.body_size)
        if path == b"/echo":
            return b"".join(self.body or ())
        if path == b"/debug":
            return self._debug_text()
        return self.w.body

    def _debug_text(self) -> bytes:
        request_line = b"%s %s HTTP/%s" % (self.parser.get_method(), self.url, self.parser.get_http_version().encode())
        return debug_text(socket.gethostname(), self.transport.get_extra_info("peername"), request_line,
                          self.headers or [], b"".join(self.body or ()))

    def _send(self, response: bytes, delay: float, close: bool) -> None:
        """Queue a reply in request order; a delayed one holds back those after it."""
        if close:
            self.closing = True
        if delay <= 0 and not self.queue:
            self.out.append(response)
            return
        slot: list = [None, close]
        self.queue.append(slot)
        if delay > 0:
            self.w.loop.call_later(delay, self._fill, slot, response, time.monotonic() + delay)
        else:
            slot[0] = response

    def _fill(self, slot: list, response: bytes, due: float) -> None:
        # libuv timers count from a cached loop clock in whole milliseconds and can fire a
        # little early; a server asked for 50 ms must not answer in 49.5.
        early = due - time.monotonic()
        if early > 0:
            self.w.loop.call_later(early, self._fill, slot, response, due)
            return
        slot[0] = response
        ready = []
        close = False
        while self.queue and self.queue[0][0] is not None:
            done = self.queue.pop(0)
            ready.append(done[0])
            close = close or done[1]
        if ready and not self.transport.is_closing():
            self.transport.write(b"".join(ready))
        if close or (self.closing and not self.queue):
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.clear()
        if self.h2 is not None:
            self.h2.connection_lost()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def _run_worker(config: EchoConfig, sock: socket.socket, counters: EchoCounters, index: int) -> None:
    """Serve on one socket until SIGTERM or SIGINT."""
    uvloop.install()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = _Worker(config, counters, index)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))

    async def serve() -> None:
        server = await loop.create_server(lambda: EchoProtocol(worker), sock=sock,
                                          ssl=config.ssl_context(), backlog=4096)
        async with server:
            await stop

    try:
        loop.run_until_complete(serve())
    finally:
        loop.close()


def serve_echo(config: EchoConfig, on_ready: Callable[[int, int | None], None] | None = None) -> dict[str, int]:
    """Run the echo server until SIGTERM/SIGINT; return (and print) the counters.

    `on_ready(port, grpc_port)` is called once every worker's socket is bound and the gRPC services (when
    asked for) serve; port 0 picks a free one. The gRPC server starts after the workers are forked: see
    `echo_grpc`.
    """
    if config.concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    config.ssl_context()  # fail before forking on a bad certificate or key
    counters = EchoCounters(config.concurrency)
    first = _listen(config.host, config.port)
    port = first.getsockname()[1]
    socks = [first] + [_listen(config.host, port) for _ in range(config.concurrency - 1)]
    grpc_server = None

    def ready() -> None:
        nonlocal grpc_server
        grpc_port = None
        if config.grpc_port is not None:
            grpc_server = GrpcPingServer(config.host, config.grpc_port, _grpc_counter(counters))
            grpc_port = grpc_server.start()
        if on_ready is not None:
            on_ready(port, grpc_port)

    try:
        if config.concurrency == 1:
            ready()
            _run_worker(config, first, counters, 0)
        else:
            _run_children(config, socks, counters, ready)
    finally:
        if grpc_server is not None:
            grpc_server.stop()
    totals = counters.totals()
    print("pylon echo stopped: " + ", ".join(f"{k} {v}" for k, v in totals.items()), flush=True)
    return totals


def _grpc_counter(counters: EchoCounters) -> Callable[[], None]:
    """The gRPC thread's count: its own word of worker 0's slot, which no worker writes."""
    values, index = counters.values, counters.base(0) + _GRPC

    def count() -> None:
        values[index] += 1

    return count


def _run_children(config: EchoConfig, socks: list[socket.socket], counters: EchoCounters,
                  forked: Callable[[], None]) -> None:
    """Fork one worker per socket, call `forked()`, forward SIGTERM/SIGINT to them, and wait for all."""
    pids = []
    for index, sock in enumerate(socks):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for other in socks:
                    if other is not sock:
                        other.close()
                _run_worker(config, sock, counters, index)
            except BaseException:  # a child must never fall back into the parent's code
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        pids.append(pid)
    for sock in socks:
        sock.close()

    def forward(signum: int, _frame: object) -> None:
        for child in pids:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            forked()
        except BaseException:
            forward(signal.SIGTERM, None)
            raise
        for child in pids:
            while True:
                try:
                    os.waitpid(child, 0)
                    break
                except ChildProcessError:
                    break
                except InterruptedError:
                    continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
