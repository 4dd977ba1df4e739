"""`pylon load`: the load generator engine (Fortio's client role) on uvloop and llhttp.

Each of the `-c` connections is a `_Slot` (a Fortio "thread") that keeps one
request in flight at a time. The hot path is callbacks only — no coroutine or
future per request: the response parser's `on_message_complete` records the
call and sends the next request (at `-qps 0`) or arms a timer for its intended
time (`pacing.Pacer`). Latency runs from the intended send time, so a stalled
server cannot hide behind a stalled client. Connections are made ahead of the
run (like Fortio's warm-up, but without sending requests, so the client's
count is exactly what the server served); coroutines are used only to connect.

Every failure — refused, reset, closed, timeout, tls, dns, protocol — is a
recorded call with code -1 and a kind, never an exception out of the run.
`--new-connection` makes every call open (and TLS-handshake) a fresh
connection and close it after the response; the stdlib `ssl` client never
offers a session to resume, so every handshake is a full one.

`-procs N` forks N processes, each running its share of the connections, rate
and calls; they connect, report ready, start together at a common monotonic
instant, and send their recorders home to be merged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ctypes
import multiprocessing
import multiprocessing.context
import os
import random
import resource
import signal
import socket
import ssl
import time
from datetime import datetime, timedelta
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterator

import httptools
import uvloop

from pylon import __version__
from pylon.bench.fortio_args import LoadOptions, LoadUsageError, Target, format_go_duration
from pylon.bench.load_h2 import H2ClientConnection, H2Pool
from pylon.bench.pacing import Pacer, Tickets, split
from pylon.bench.results import SOCKET_ERROR, Recorder, RunTiming, build_result
from pylon.proxy.http.h2_session import H2Error

perf_counter = time.perf_counter
USER_AGENT = f"pylon-load/{__version__}"

ProgressHook = Callable[[int], None]  # called with the number of completed calls


class FortioResult(dict):
    """A finished run: Fortio's JSON object (a dict), with a few conveniences.

    `load_cpu_seconds` is the CPU the load itself used (this process during
    the run plus every `-procs` worker), kept beside the JSON because Fortio's
    format has no field for it and benchmarks need it to show the load tool
    was not the bottleneck.
    """

    load_cpu_seconds: float = 0.0

    @property
    def count(self) -> int:
        return int(self["DurationHistogram"]["Count"])

    @property
    def ret_codes(self) -> dict[str, int]:
        return self["RetCodes"]

    @property
    def error_kinds(self) -> dict[str, int]:
        return self.get("ErrorKinds", {})


def classify_error(exc: BaseException | None) -> str:
    """The kind of a socket-level failure, as counted in `ErrorKinds`."""
    if exc is None:
        return "closed"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
        return "tls"
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, (httptools.HttpParserError, H2Error)):
        return "protocol"
    return "other"


def build_request(options: LoadOptions, target: Target, close: bool) -> bytes:
    """The request every call sends, serialised once."""
    headers = {name.lower(): (name, value) for name, value in options.headers}
    lines = [f"{options.http_method} {target.path} HTTP/1.1"]
    lines.append(f"Host: {headers.pop('host', ('', target.authority))[1]}")
    lines.append(f"User-Agent: {headers.pop('user-agent', ('', USER_AGENT))[1]}")
    headers.pop("content-length", None)
    if options.content_type and "content-type" not in headers:
        lines.append(f"Content-Type: {options.content_type}")
    lines.extend(f"{name}: {value}" for name, value in headers.values() if name.lower() != "connection")
    if options.payload or options.http_method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(options.payload)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + options.payload


def client_ssl_context(options: LoadOptions) -> ssl.SSLContext | None:
    """TLS settings from -k, -cacert, -cert and -key; None for plain http."""
    if not options.target.tls:
        return None
    try:
        ctx = ssl.create_default_context(cafile=options.cacert or None)
        if options.h2 or options.grpc:
            ctx.set_alpn_protocols(["h2"])
        if options.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if options.cert:
            ctx.load_cert_chain(options.cert, options.key or None)
    except (OSError, ssl.SSLError) as exc:
        raise LoadUsageError(f"TLS files: {exc}") from None
    return ctx


class _ClientProtocol(asyncio.Protocol):
    """One socket: feeds llhttp and hands complete responses to its slot."""

    __slots__ = ("slot", "transport", "parser", "rx", "body_len")

    def __init__(self, slot: "_Slot") -> None:
        self.slot = slot
        self.parser = httptools.HttpResponseParser(self)
        self.rx = 0
        self.body_len = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, slot: "_Slot") -> None:
        self.transport.write(slot.engine.request)

    def release(self, slot: "_Slot", abort: bool) -> None:
        """The slot is done with this connection (its own): close it, or abort it when a call was abandoned."""
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.rx += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.slot.lost(self, exc)
            self.transport.abort()

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)

    def on_message_complete(self) -> None:
        rx, body_len = self.rx, self.body_len
        self.rx = self.body_len = 0
        self.slot.complete(self, self.parser.get_status_code(), self.parser.should_keep_alive(),
                           rx, rx - body_len)

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.lost(self, exc)


class _Slot:
    """One Fortio "thread": a connection slot sending one request at a time on its pacer."""

    def __init__(self, engine: "_Engine", index: int) -> None:
        self.engine = engine
        self.index = index
        self.pacer: Pacer | None = None
        self.proto: _ClientProtocol | H2ClientConnection | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.intended = 0.0
        self.base = 0.0  # latency origin of the call in flight: min(intended, actual send)
        self.sent_at = 0.0
        self.in_flight = False
        self.connecting = False
        self.finished = False
        self.uses = 0
        self.reuse_limit = 0

    # connecting ---------------------------------------------------------------

    async def _open(self) -> _ClientProtocol | H2ClientConnection:
        e = self.engine
        if e.pool is not None:
            proto: _ClientProtocol | H2ClientConnection = await e.pool.get(self)
        else:
            proto = await e.connect(lambda: _ClientProtocol(self), self.index)
        reuse = e.options.connection_reuse
        self.reuse_limit = random.randint(*reuse) if reuse else 0
        self.uses = 0
        return proto

    async def preconnect(self) -> None:
        """Open the keep-alive connection before the run; a failure is retried by the first call."""
        try:
            self.proto = await self._open()
        except Exception:  # noqa: BLE001 - the first call reconnects and records the failure
            self.proto = None

    async def _connect_then_send(self) -> None:
        try:
            proto = await self._open()
        except Exception as exc:  # noqa: BLE001 - every failure is a counted call
            self.connecting = False
            self._failed(classify_error(exc))
            return
        self.connecting = False
        if self.finished:
            proto.transport.close()
            return
        self.proto = proto
        self._send()

    # the call cycle -------------------------------------------------------------

    def next(self) -> None:
        """Schedule this slot's next call, or finish it."""
        e = self.engine
        if e.stopping:
            self.finish()
            return
        now = perf_counter()
        intended = self.pacer.next_time(now)  # type: ignore[union-attr]
        if intended is None:
            self.finish()
            return
        self.intended = intended
        delay = intended - now
        if delay > 0.0002:
            self.timer = e.loop.call_later(delay, self._fire)
        else:
            self._fire()

    def _fire(self) -> None:
        self.timer = None
        if self.engine.stopping:
            self.finish()
            return
        self.base = self.intended
        if self.proto is not None:
            self._send()
            return
        self.connecting = True
        now = perf_counter()
        if now < self.base:
            self.base = now
        self.engine.loop.create_task(self._connect_then_send())

    def _send(self) -> None:
        now = perf_counter()
        if now < self.base:
            self.base = now
        self.sent_at = now
        self.in_flight = True
        self.proto.send(self)  # type: ignore[union-attr]

    def complete(self, proto: _ClientProtocol, code: int, keep_alive: bool, size: int, header_size: int) -> None:
        if proto is not self.proto or not self.in_flight:
            return
        self.in_flight = False
        self.engine.recorder.response(perf_counter() - self.base, code, size, header_size)
        self._completed(code, keep_alive)

    def complete_reply(self, proto: H2ClientConnection, key: int | str, ok: bool, keep_alive: bool,
                       size: int) -> None:
        """An HTTP/2 call's reply: `key` is its RetCodes key (the status, or Fortio's gRPC name)."""
        if proto is not self.proto or not self.in_flight:
            return
        self.in_flight = False
        self.engine.recorder.reply(perf_counter() - self.base, key, ok, size)
        self._completed(key, keep_alive)

    def stream_failed(self, proto: H2ClientConnection, kind: str) -> None:
        """This slot's stream failed (reset, refused), the connection lives on."""
        if proto is not self.proto or not self.in_flight:
            return
        self.in_flight = False
        self._failed(kind)

    def _completed(self, code: int | str, keep_alive: bool) -> None:
        e = self.engine
        e.completed += 1
        if code == e.options.abort_on:
            e.stop()
        self.uses += 1
        if not keep_alive or e.fresh_connections or (self.reuse_limit and self.uses >= self.reuse_limit):
            self._drop()
        self.next()

    def lost(self, proto: _ClientProtocol, exc: BaseException | None) -> None:
        if proto is not self.proto:
            return
        self.proto = None
        if self.in_flight:
            self.in_flight = False
            self._failed(classify_error(exc))

    def timed_out(self) -> None:
        self.in_flight = False
        self._drop(abort=True)
        self._failed("timeout")

    def _failed(self, kind: str) -> None:
        e = self.engine
        e.recorder.failure(perf_counter() - self.base, kind)
        e.completed += 1
        if e.options.abort_on == SOCKET_ERROR:
            e.stop()
        self.next()

    def _drop(self, abort: bool = False) -> None:
        proto, self.proto = self.proto, None
        if proto is not None:
            proto.release(self, abort)

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._drop()
        self.engine.slot_finished()


class _Engine:
    """One process's share of a load run."""

    def __init__(self, options: LoadOptions, address: tuple[str, int], peer: str) -> None:
        self.options = options
        self.target = options.target
        self.loop = asyncio.get_event_loop()
        self.address = address
        self.peer = peer
        self.ssl_context = client_ssl_context(options)
        self.sni = self.target.host if self.ssl_context else None
        self.fresh_connections = options.new_connection or not options.keepalive
        self.user_agent = USER_AGENT
        self.request = build_request(options, self.target, close=self.fresh_connections)
        self.recorder = Recorder(options.resolution, options.connections)
        self.slots = [_Slot(self, i) for i in range(options.threads)]
        self.pool = H2Pool(self, options.streams) if options.h2 or options.grpc else None
        self.completed = 0
        self.stopping = False
        self.unfinished = len(self.slots)
        self.done = self.loop.create_future()
        self.ended_at = 0.0

    def _pacers(self, start: float) -> list[Pacer]:
        o, c = self.options, len(self.slots)
        end = start + o.duration if o.duration > 0 and o.exactly <= 0 else None
        if o.qps <= 0:
            tickets = Tickets(o.exactly) if o.exactly > 0 else None
            return [Pacer(start, 0.0, end=end, tickets=tickets) for _ in range(c)]
        interval = c / o.qps
        total = o.exactly if o.exactly > 0 else (int(o.qps * o.duration) if o.duration > 0 else None)
        counts: list[int | None] = list(split(total, c)) if total is not None else [None] * c
        return [Pacer(start, interval, count=counts[i], offset=(i * interval / c if o.uniform else 0.0),
                      jitter=o.jitter, nocatchup=o.nocatchup) for i in range(c)]

    async def connect(self, factory: Callable[[], Any], index: int) -> Any:
        """A new connection made by `factory()`'s protocol, counted as slot `index`'s socket (times out)."""
        started = perf_counter()
        transport, proto = await asyncio.wait_for(
            self.loop.create_connection(factory, self.address[0], self.address[1],
                                        ssl=self.ssl_context, server_hostname=self.sni,
                                        ssl_handshake_timeout=self.options.timeout if self.ssl_context else None),
            self.options.timeout)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.recorder.connected(index // self.options.streams, perf_counter() - started, self.peer,
                                self.ssl_context is not None)
        return proto

    async def prepare(self) -> None:
        if not self.fresh_connections:
            await asyncio.gather(*(slot.preconnect() for slot in self.slots))

    async def run(self, start: float | None = None) -> float:
        """Run from `start` (a perf_counter instant, default now) until every slot is done."""
        if start is not None and start > perf_counter():
            await asyncio.sleep(start - perf_counter())
        start = perf_counter()
        for slot, pacer in zip(self.slots, self._pacers(start)):
            slot.pacer = pacer
        self._watchdog()
        for slot in self.slots:
            slot.next()
        await self.done
        return start

    def _watchdog(self) -> None:
        """Time out calls stuck longer than -timeout (one timer for all, not one per request)."""
        if self.done.done():
            return
        deadline = perf_counter() - self.options.timeout
        for slot in self.slots:
            if slot.in_flight and slot.sent_at < deadline:
                slot.timed_out()
        self.loop.call_later(min(0.1, self.options.timeout / 4), self._watchdog)

    def stop(self) -> None:
        """Finish the run: idle slots stop now, busy ones after their call."""
        self.stopping = True
        for slot in self.slots:
            if not (slot.in_flight or slot.connecting or slot.finished):
                slot.finish()

    def slot_finished(self) -> None:
        self.unfinished -= 1
        if self.unfinished == 0 and not self.done.done():
            self.ended_at = perf_counter()
            self.done.set_result(None)


def resolve(target: Target) -> tuple[tuple[str, int], str]:
    """Resolve the target once (as Fortio does): the address to connect to and its label."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LoadUsageError(f"cannot resolve {target.host!r}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    host, port = sockaddr[0], sockaddr[1]
    return (host, port), (f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}")


def _new_loop() -> asyncio.AbstractEventLoop:
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


@contextlib.contextmanager
def _stop_on_signals(loop: asyncio.AbstractEventLoop, handler: Callable[[], None]) -> Iterator[None]:
    """SIGINT/SIGTERM call `handler` during the run; afterwards the process's own handlers are back.

    The loop's handlers stay installed after `loop.close()` (bound to the closed
    loop, they do nothing), so without the restore a process that ran a load
    in-process, such as a test run, would ignore Ctrl-C and SIGTERM from then on.
    """
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        before = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, handler)
        except (RuntimeError, ValueError):  # not the main thread: the caller handles interruption
            continue
        previous[sig] = signal.SIG_DFL if before is None else before  # None: set outside Python
    try:
        yield
    finally:
        for sig, before in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, before)


def _run_here(options: LoadOptions, address: tuple[str, int], peer: str,
              progress: ProgressHook | None) -> tuple[Recorder, RunTiming]:
    loop = _new_loop()
    try:
        engine = _Engine(options, address, peer)
        with _stop_on_signals(loop, engine.stop):
            if progress is not None:
                def tick() -> None:
                    progress(engine.completed)
                    if not engine.done.done():
                        loop.call_later(0.25, tick)
                loop.call_soon(tick)
            loop.run_until_complete(engine.prepare())
            wall = datetime.now().astimezone()
            start = loop.run_until_complete(engine.run())
            if progress is not None:
                progress(engine.completed)
        return engine.recorder, RunTiming(wall, engine.ended_at - start)
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def worker_context() -> multiprocessing.context.BaseContext:
    """The start method for load processes: forkserver, never a fork of the caller.

    A fork copies only the forking thread; if another thread held a lock at
    that instant (grpc's pollers do, in any process that has used gRPC, such
    as a test session or a tool embedding pylon.bench next to a control
    plane), the child can block on it forever. Forkserver children come from
    a clean single-threaded server started once per process, with this
    module already imported, so each start stays cheap.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def _child(options: LoadOptions, address: tuple[str, int], peer: str, conn: Connection,
           counts: Any, index: int) -> None:
    """A `-procs` child: connect, report ready, start when told, send the recorder home."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns ^C into a stop message
    loop = _new_loop()
    engine = _Engine(options, address, peer)
    loop.add_signal_handler(signal.SIGTERM, engine.stop)

    def tick() -> None:
        counts[index] = engine.completed
        if not engine.done.done():
            loop.call_later(0.25, tick)

    loop.run_until_complete(engine.prepare())
    conn.send("ready")
    start_at = conn.recv()
    loop.add_reader(conn.fileno(), lambda: conn.poll() and conn.recv() == "stop" and engine.stop())
    tick()
    loop.run_until_complete(engine.run(start_at))
    counts[index] = engine.completed
    conn.send((engine.recorder.to_state(), engine.ended_at, process_cpu_seconds()))
    loop.close()


def _share(options: LoadOptions, procs: int) -> list[LoadOptions]:
    """Each process's options: its connections, its part of the rate and of the calls."""
    conns = split(options.connections, procs)
    calls = split(options.exactly, procs) if options.exactly > 0 else [0] * procs
    return [dataclasses.replace(options, connections=conns[i], exactly=calls[i], procs=1,
                                qps=options.qps * conns[i] / options.connections)
            for i in range(procs)]


def process_cpu_seconds() -> float:
    """User + system CPU of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_procs(options: LoadOptions, address: tuple[str, int], peer: str,
               progress: ProgressHook | None) -> tuple[Recorder, RunTiming, float]:
    """Run the shares in worker processes; also returns the CPU they used, which
    RUSAGE_CHILDREN cannot see (the forkserver, not we, is their parent)."""
    ctx = worker_context()
    shares = _share(options, options.procs)
    counts = ctx.RawArray(ctypes.c_uint64, len(shares))
    children = []
    for i, share in enumerate(shares):
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(share, address, peer, child_end, counts, i), daemon=True)
        proc.start()
        child_end.close()
        children.append((proc, parent_end))
    stop_requested = False

    def on_signal(_signum: int, _frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for proc, conn in children:
            if conn.recv() != "ready":
                raise RuntimeError("load process failed to start")
        start_at = perf_counter() + 0.05
        wall = datetime.now().astimezone() + timedelta(seconds=0.05)
        for _, conn in children:
            conn.send(start_at)
        pending = {conn: proc for proc, conn in children}
        results = []
        stop_sent = False
        while pending:
            if stop_requested and not stop_sent:
                for conn in pending:
                    conn.send("stop")
                stop_sent = True
            for conn in wait(list(pending), timeout=0.25):
                try:
                    results.append(conn.recv())
                except EOFError:
                    raise RuntimeError(f"load process {pending[conn].pid} died") from None
                pending.pop(conn).join()
            if progress is not None:
                progress(sum(counts))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for proc, _ in children:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    recorder = Recorder.from_state(results[0][0])
    for state, *_ in results[1:]:
        recorder.merge(Recorder.from_state(state))
    ended = max(r[1] for r in results)
    return recorder, RunTiming(wall, ended - start_at), sum(r[2] for r in results)


def run_load(options: LoadOptions, progress: ProgressHook | None = None) -> FortioResult:
    """Run a load test and return Fortio's result object. Call it outside any running event loop.

    Raises `LoadUsageError` for problems found before the run (bad URL, TLS files,
    unresolvable host); failures during the run are counted in the result.
    """
    target = options.target
    address, peer = resolve(target)
    client_ssl_context(options)  # check TLS files before starting anything
    cpu_before = process_cpu_seconds()
    workers_cpu = 0.0
    if options.procs > 1:
        recorder, timing, workers_cpu = _run_procs(options, address, peer, progress)
    else:
        recorder, timing = _run_here(options, address, peer, progress)
    result = FortioResult(build_result(options, recorder, timing))
    result.load_cpu_seconds = process_cpu_seconds() - cpu_before + workers_cpu
    return result


def start_banner(options: LoadOptions) -> str:
    """Fortio's opening lines, before the run starts."""
    rate = "max" if options.qps <= 0 else f"{options.qps:g}"
    if options.exactly > 0:
        span = f"for exactly {options.exactly} calls"
    elif options.duration > 0:
        span = f"for {format_go_duration(options.duration)}"
    else:
        span = "until interrupted"
    mode = " (new connection per call)" if options.new_connection else ""
    return (f"pylon load {__version__} running at {rate} queries per second, {os.cpu_count()} cpus, "
            f"{options.procs} process(es), {span}: {options.url}{mode}\n"
            f"Starting at {rate} qps with {options.connections} connection(s) {span}")

