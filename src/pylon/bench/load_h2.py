"""`pylon load -h2` and `-grpc`: the load engine's calls carried as HTTP/2 streams.

Fortio's shapes, which decide how calls share connections:
- `-h2` (fhttp, Go's std client with `ForceAttemptHTTP2`, or `http2.Transport`
  with `AllowHTTP` for http:// — prior knowledge): each of the `-c` "threads"
  has a client of its own, so `-c` connections with one stream in flight each.
- `-grpc` (fgrpc/grpcrunner.go): `-c` connections, each shared by `-s`
  streams; every stream is a "thread" with one call in flight, so the run has
  `c * s` threads (`NumThreads`) and the calls of one connection overlap.
  `-ping` calls `/fgrpc.PingServer/Ping` with `seq` = the thread's index, `ts`
  = the run's start (ns), `payload` and `delayNanos` (`-grpc-ping-delay`); else
  `/grpc.health.v1.Health/Check` with `service` = `-healthservice`. A call that
  ends with grpc-status 0 counts as "SERVING" (ping) or the health status's
  name, any other outcome as "ERROR", as Fortio's RetCodes do.

The codec is pylon's libnghttp2 session (`H2Connection`); a connection is
one asyncio protocol owning it, the `_Slot`s of `load` are its users. Calls are
submitted to the session and written once per event: inside `receive` (a
call completing starts the next one) the write waits until nghttp2 returns.
A stream that fails (reset, refused, timed out) fails only its own call; a
lost connection fails every call in flight on it, and its slots reconnect
through `H2Pool` (one connection per group again, not one per slot).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from pylon.bench.grpc_messages import (
    HEALTH_METHOD, PING_METHOD, SERVING_STATUS, HealthCheckRequest, HealthCheckResponse, PingMessage, frame, unframe,
)
from pylon.proxy.http.h2_session import CANCEL, H2Connection, H2Error, Headers

if TYPE_CHECKING:
    from pylon.bench.fortio_args import LoadOptions
    from pylon.bench.load import _Engine, _Slot

GRPC_ERROR = "ERROR"  # Fortio's RetCodes key for a gRPC call that failed


class _Call:
    """One stream's response as it arrives."""

    __slots__ = ("slot", "status", "size", "grpc_status", "body")

    def __init__(self, slot: "_Slot") -> None:
        self.slot = slot
        self.status = 0
        self.size = 0
        self.grpc_status: bytes | None = None
        self.body: list[bytes] | None = None  # kept only when the reply must be read (health checks)


class H2Requests:
    """What every call of a run sends, built once: the header block, and the body for each slot.

    `reply(call)` turns a finished stream into the RetCodes key and whether it
    counts as a success: the HTTP status for `-h2`, Fortio's names for gRPC.
    """

    def __init__(self, options: "LoadOptions", user_agent: str) -> None:
        target = options.target
        self.grpc = options.grpc
        self.health = options.grpc and not options.ping
        if options.grpc:
            method, path = b"POST", (PING_METHOD if options.ping else HEALTH_METHOD).encode()
        else:
            method, path = options.http_method.encode(), target.path.encode("latin-1")
        extra = {name.lower(): value for name, value in options.headers}
        authority = extra.pop("host", target.authority)
        headers: Headers = [(b":method", method), (b":scheme", target.scheme.encode()),
                            (b":authority", authority.encode("latin-1")), (b":path", path)]
        if options.grpc:
            headers += [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
        elif options.content_type:
            headers.append((b"content-type", options.content_type.encode("latin-1")))
        headers.append((b"user-agent", extra.pop("user-agent", user_agent).encode("latin-1")))
        for name in ("content-length", "connection", "keep-alive", "transfer-encoding", "upgrade", "te",
                     "proxy-connection"):
            extra.pop(name, None)  # HTTP/2 forbids them; the framing says what they would
        headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in extra.items()]
        if not options.grpc and (options.payload or method in (b"POST", b"PUT", b"PATCH")):
            headers.append((b"content-length", b"%d" % len(options.payload)))
        self.headers = headers
        self._options = options
        self._started_ns = time.time_ns()

    def body(self, slot: int) -> bytes:
        """The request body of a slot's calls (gRPC: its message, with Fortio's seq for the slot)."""
        o = self._options
        if not o.grpc:
            return o.payload
        if o.ping:
            message = PingMessage(seq=slot, ts=self._started_ns, payload=o.payload.decode("utf-8", "replace"),
                                  delayNanos=round(o.grpc_ping_delay * 1e9))
        else:
            message = HealthCheckRequest(service=o.health_service)
        return frame(message.SerializeToString())

    def reply(self, call: _Call) -> tuple[int | str, bool]:
        if not self.grpc:
            return call.status, 200 <= call.status < 300
        if call.status != 200 or call.grpc_status != b"0":
            return GRPC_ERROR, False
        if not self.health:
            return "SERVING", True
        try:
            status = HealthCheckResponse.FromString(unframe(b"".join(call.body or ()))).status
        except ValueError:  # includes protobuf's DecodeError
            return GRPC_ERROR, False
        name = SERVING_STATUS.get(status, str(status))
        return name, name == "SERVING"


class H2ClientConnection(asyncio.Protocol):
    """One HTTP/2 connection of a load run, shared by the slots of its group (the `H2Owner`)."""

    def __init__(self, engine: "_Engine", requests: H2Requests) -> None:
        self.engine = engine
        self.requests = requests
        self.h2 = H2Connection(self, server=False)
        self.calls: dict[int, _Call] = {}
        self.by_slot: dict[int, int] = {}  # slot index -> its stream in flight
        self.users: set[int] = set()
        self.bodies: dict[int, bytes] = {}
        self.receiving = False
        self.usable = True  # False once the peer sent GOAWAY or the connection is lost
        self.lost = False  # the socket is gone and the session freed: nothing may touch `h2` any more
        self.alpn_refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            self.usable = False
            self.alpn_refused = True  # H2Pool fails the connect: no HTTP/2 is spoken to a server that did not agree
            transport.abort()
            return
        self.flush()  # the preface and our SETTINGS

    def flush(self) -> None:
        if self.lost:
            return
        out = self.h2.data_to_send()
        if out:
            self.transport.write(out)
        if self.h2.closed:
            self.usable = False
            self.transport.close()

    # what a slot calls ------------------------------------------------------------------------------

    def send(self, slot: "_Slot") -> None:
        """Start the slot's call on a new stream."""
        if self.lost:  # lost while the slot waited for it to connect
            slot.lost(self, None)
            return
        body = self.bodies.get(slot.index)
        if body is None:
            body = self.bodies[slot.index] = self.requests.body(slot.index)
        try:
            sid = self.h2.send_request(self.requests.headers, end_stream=not body)
            if body:
                self.h2.send_data(sid, body, end_stream=True)
        except H2Error:  # the session is over (a GOAWAY raced the call)
            self.usable = False
            slot.stream_failed(self, "closed")
            return
        call = self.calls[sid] = _Call(slot)
        if self.requests.health:
            call.body = []
        self.by_slot[slot.index] = sid
        if not self.receiving:
            self.flush()

    def release(self, slot: "_Slot", abort: bool) -> None:
        """The slot stops using this connection; an abandoned call is reset, an unused connection closed."""
        self.users.discard(slot.index)
        sid = self.by_slot.pop(slot.index, None)
        if self.lost:
            return
        if abort and sid is not None and self.calls.pop(sid, None) is not None:
            self.h2.reset_stream(sid, CANCEL)
        if not self.users:
            self.usable = False
            self.transport.close()
        elif not self.receiving:
            self.flush()

    # input ------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.receiving = True
        try:
            self.h2.receive(data)
        except H2Error:
            self.h2.terminate()
        finally:
            self.receiving = False
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self.lost = True
        calls, self.calls = self.calls, {}
        self.by_slot.clear()
        for call in calls.values():
            call.slot.lost(self, exc)
        for index in list(self.users):
            self.engine.slots[index].lost(self, exc)
        self.h2.close()

    # H2Owner calls ----------------------------------------------------------------------------------

    def on_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        call = self.calls.get(stream_id)
        if call is None or headers[0][0] != b":status":  # nghttp2 has checked it comes first
            return
        status = int(headers[0][1])
        if status < 200:
            return  # a 1xx: the final response follows
        call.status = status
        if end_stream and self.requests.grpc:  # a trailers-only gRPC reply
            for name, value in headers:
                if name == b"grpc-status":
                    call.grpc_status = value

    def on_data(self, stream_id: int, data: bytes) -> None:
        self.h2.consume(stream_id, len(data))
        call = self.calls.get(stream_id)
        if call is not None:
            call.size += len(data)
            if call.body is not None:
                call.body.append(data)

    def on_trailers(self, stream_id: int, trailers: Headers) -> None:
        call = self.calls.get(stream_id)
        if call is not None:
            for name, value in trailers:
                if name == b"grpc-status":
                    call.grpc_status = value

    def on_end_stream(self, stream_id: int) -> None:
        """Nothing yet: the call completes when its stream closes."""

    def on_stream_closed(self, stream_id: int, error_code: int) -> None:
        call = self.calls.pop(stream_id, None)
        if call is None:
            return
        slot = call.slot
        if self.by_slot.get(slot.index) == stream_id:
            del self.by_slot[slot.index]
        if error_code or not call.status:
            slot.stream_failed(self, "reset")
            return
        key, ok = self.requests.reply(call)
        slot.complete_reply(self, key, ok, self.usable, call.size)

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        self.usable = False  # calls in flight finish; the slots' next calls take a new connection

    def on_ping_ack(self) -> None:
        """Nothing to do: the load client sends no PINGs of its own (an unsolicited ACK is ignored)."""


class H2Pool:
    """The run's connections, one per group of slots (`-s` slots each), connected on first use."""

    def __init__(self, engine: "_Engine", streams: int) -> None:
        self.engine = engine
        self.streams = streams
        self.requests = H2Requests(engine.options, engine.user_agent)
        self._groups: dict[int, asyncio.Future[H2ClientConnection]] = {}

    async def get(self, slot: "_Slot") -> H2ClientConnection:
        """The slot's group connection, connecting it (once, whoever asks first) when it is missing or spent."""
        group = slot.index // self.streams
        pending = self._groups.get(group)
        if pending is not None and pending.done() and (
                pending.exception() is not None or not pending.result().usable):
            pending = None
        if pending is None:
            pending = self._groups[group] = self.engine.loop.create_future()
            try:
                conn = await self.engine.connect(lambda: H2ClientConnection(self.engine, self.requests),
                                                 group * self.streams)
                if conn.alpn_refused:
                    raise H2Error("the server did not choose h2 by ALPN")
            except BaseException as exc:  # every slot of the group waiting sees the failure
                pending.set_exception(exc)
                pending.exception()  # retrieved: a group nobody else waits on must not warn
                raise
            pending.set_result(conn)
        conn = await asyncio.shield(pending)
        conn.users.add(slot.index)
        return conn
