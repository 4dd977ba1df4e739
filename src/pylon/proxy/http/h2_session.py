"""The HTTP/2 codec (sans-IO), both roles: bytes in, calls into an owner; submissions in, bytes out.

Built on libnghttp2 through pylon's own cffi binding (`_nghttp2`, built by
`_h2_build.py` from `h2_shim.c`): pure-Python HTTP/2 costs ~6x more CPU per
request (mesh-facts B4). As the HTTP/1 codecs beside it, it owns no socket:
`receive(data)` parses and calls the owner (`H2Owner`) for each stream event,
`data_to_send()` returns everything to write in one bytes object. Events are
calls into the owner, not event objects: on a server a GET costs two calls
from C (its headers as one list, the stream's close), each calling the owner
directly, with no event allocation or dispatch loop. Outbound bodies and their
trailers are copied into the shim as they are submitted and framed there, as
the peer's windows allow: no call back into Python per DATA read;
codec alone this runs at ~105k requests per CPU-second (`benchmarks/h2_codec.py`).

What it decides on its own, as Envoy's codec does:
- SETTINGS: Envoy 1.40's (`H2Settings`, named as `http2_protocol_options`),
  in Envoy's order, with ENABLE_PUSH 0 first on the client side as Envoy's
  upstream codec sends; the connection window is raised to
  `initial_connection_window_size` at once.
- Flow control is manual (nghttp2's automatic WINDOW_UPDATE is off): received
  DATA is credited back only when the owner calls `consume`, so a proxy that
  cannot forward a body stops the peer instead of buffering it. Bytes never
  consumed are returned to the connection window when their stream closes.
- Floods end the connection with GOAWAY and count Envoy's `http2.*` stat
  (`FLOOD_STATS`): the inbound limits are counted per frame header in C
  (`h2_shim.c`), outbound frames queued behind a slow reader after each
  `receive` (DATA is bounded by the peer's windows and the owner's buffers
  instead), PING/SETTINGS acks by nghttp2's own `max_outbound_ack`. A header
  block over `max_header_bytes` or `max_headers_count` ends the connection
  (`http2.header_overflow`), as Envoy does since CVE-2024-27919, and so does a
  CONTINUATION run (CVE-2024-27316). Rapid reset (CVE-2023-44487): a token
  bucket in the shim stops parsing mid-buffer (`http2.rx_reset_flood`, pylon's
  own name); nghttp2's own limit is set too where the library has it (probed
  by symbol: Debian backports it to 1.52).
- GOAWAY is graceful as Envoy drains: `shutdown_notice()` first, `goaway()`
  later with the last stream id nghttp2 processed.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from pylon.proxy.http._nghttp2 import ffi, lib

NO_ERROR = 0
PROTOCOL_ERROR = 1
INTERNAL_ERROR = 2
REFUSED_STREAM = 7
CANCEL = 8
ENHANCE_YOUR_CALM = 11
NGHTTP2_ERR_STREAM_CLOSED = -510  # the shim's answer to a submission for a stream with no open body

Headers = list[tuple[bytes, bytes]]

#: The counter a tripped limit adds to, by the shim's PYL_TRIP_* code (Envoy's names).
FLOOD_STATS = {
    lib.PYL_TRIP_EMPTY: "http2.inbound_empty_frames_flood",
    lib.PYL_TRIP_PRIORITY: "http2.inbound_priority_frames_flood",
    lib.PYL_TRIP_WINDOW_UPDATE: "http2.inbound_window_update_frames_flood",
    lib.PYL_TRIP_HEADER_OVERFLOW: "http2.header_overflow",
    lib.PYL_TRIP_CONTINUATIONS: "http2.header_overflow",
    lib.PYL_TRIP_RAPID_RESET: "http2.rx_reset_flood",  # pylon's own: Envoy limits resets in its HCM instead
}

#: Whether libnghttp2 has the CVE-2023-44487 and CVE-2024-27316 limits (probed by symbol, not version).
HAS_RESET_RATE_LIMIT = bool(lib.pyl_has_reset_rate_limit())
HAS_MAX_CONTINUATIONS = bool(lib.pyl_has_max_continuations())


@dataclass(frozen=True, slots=True)
class H2Settings:
    """One connection's HTTP/2 limits: Envoy 1.40's defaults, under Envoy's field names.

    The windows and stream count are the defaults Envoy has had since 1.36
    (1024 streams, 16 MiB stream and 24 MiB connection windows; what Envoy
    1.40 sends, seen with `nghttp -v`), not the 2^31-1 / 256 MiB its older
    docs give. `max_header_bytes` and `max_headers_count` come from the HCM
    (`max_request_headers_kb`, `common_http_protocol_options`). The reset
    and CONTINUATION figures are libnghttp2's own defaults.
    """

    max_concurrent_streams: int = 1024
    initial_stream_window_size: int = 16 * 1024 * 1024
    initial_connection_window_size: int = 24 * 1024 * 1024
    hpack_table_size: int = 4096
    allow_connect: bool = False
    max_outbound_frames: int = 10000
    max_outbound_control_frames: int = 1000
    max_consecutive_inbound_frames_with_empty_payload: int = 1
    max_inbound_priority_frames_per_stream: int = 100
    max_inbound_window_update_frames_per_data_frame_sent: int = 10
    max_header_bytes: int = 60 * 1024
    max_headers_count: int = 100
    stream_reset_burst: int = 1000
    stream_reset_rate: int = 33
    max_continuations: int = 8
    #: connection_keepalive (config.core.v3.KeepaliveSettings), None: no PINGs of our own
    connection_keepalive: Any = None

    @classmethod
    def of(cls, options: Any, *, max_header_bytes: int, max_headers_count: int) -> "H2Settings":
        """From an Http2ProtocolOptions (the HCM's or a cluster's; unset fields: Envoy's defaults) and the header
        limits of the side it serves."""
        given = {name: getattr(options, name) for name in _OPTION_FIELDS if getattr(options, name) is not None}
        return cls(max_header_bytes=max_header_bytes, max_headers_count=max_headers_count, **given)


#: The Http2ProtocolOptions fields the codec takes as they are.
_OPTION_FIELDS = (
    "hpack_table_size", "allow_connect", "max_concurrent_streams", "initial_stream_window_size",
    "initial_connection_window_size",
    "max_outbound_frames", "max_outbound_control_frames", "max_consecutive_inbound_frames_with_empty_payload",
    "max_inbound_priority_frames_per_stream", "max_inbound_window_update_frames_per_data_frame_sent",
    "connection_keepalive",
)


#: The codec's per-connection counts that are gauges in Envoy, not counters.
GAUGES = frozenset({"http2.streams_active", "http2.pending_send_bytes"})

#: Envoy's `http2.*` counters a side lists at 0 before anything happened.
COUNTER_NAMES = ("rx_reset", "tx_reset", "rx_messaging_error", "goaway_sent", "trailers", "header_overflow",
                 "outbound_flood", "outbound_control_flood", "inbound_empty_frames_flood",
                 "inbound_priority_frames_flood", "inbound_window_update_frames_flood", "keepalive_timeout")


def add_counts(counter: Callable[[str], Any], counts: dict[str, int], seen: dict[str, int]) -> None:
    """Add what a connection's codec counted (`H2Connection.counters`) since `seen` (updated) to `counter(name)`,
    the stats of the side it serves (an HCM's, a cluster's); the gauges are left out."""
    for name, value in counts.items():
        if name in GAUGES:
            continue
        delta = value - seen.get(name, 0)
        if delta:
            seen[name] = value
            counter(name).value += delta


class H2Owner(Protocol):
    """What the connection calls while `receive` parses (a server's HCM side, or a client's pool).

    The calls may submit (send_response, send_data, consume, reset_stream...)
    but not call `receive` or `data_to_send`: nghttp2 is mid-parse. An
    exception ends the connection and leaves `receive` once nghttp2 returned.
    """

    def on_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        """A request (server) or a response (client; also each 1xx), pseudo-headers first."""

    def on_data(self, stream_id: int, data: bytes) -> None:
        """Body bytes; call `consume(stream_id, len(data))` once they are passed on."""

    def on_trailers(self, stream_id: int, trailers: Headers) -> None:
        """Trailers; the stream's input ends with them."""

    def on_end_stream(self, stream_id: int) -> None:
        """The stream's input ended after DATA (a HEADERS end says so in `on_headers`)."""

    def on_stream_closed(self, stream_id: int, error_code: int) -> None:
        """Both directions are done; a non-zero code is a reset (either side's) or a refused stream."""

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        """The peer will process no stream above `last_stream_id` (those close with REFUSED_STREAM)."""

    def on_ping_ack(self) -> None:
        """The peer acknowledged a PING (`ping`): the connection is alive (h2_keepalive.py)."""


class H2Error(Exception):
    """libnghttp2 refused a call (a stream id that is not open, a closed session)."""


def header_block(headers: Headers) -> bytes:
    """`name\\0value\\0...`: the shim builds nghttp2's array from it, and refuses a field holding a NUL."""
    return b"\0".join(itertools.chain.from_iterable(headers)) + b"\0"


class H2Connection:
    """One HTTP/2 connection, server or client side, sans-IO."""

    __slots__ = ("owner", "server", "settings", "_handle", "_c", "_session", "_streams", "_out_ptr", "_final", "_error",
                 "streams_active", "trailers", "stats", "closed")

    def __init__(self, owner: H2Owner, *, server: bool, settings: H2Settings | None = None) -> None:
        s = settings or H2Settings()
        self.owner = owner
        self.server = server
        self.settings = s
        self._handle = ffi.new_handle(self)  # the shim's callbacks find this object through it
        c = ffi.new("pyl_h2 *")
        c.handle = self._handle
        c.max_header_bytes = s.max_header_bytes
        c.max_headers_count = s.max_headers_count
        c.max_empty = s.max_consecutive_inbound_frames_with_empty_payload
        c.max_continuations = s.max_continuations
        c.max_priority_per_stream = s.max_inbound_priority_frames_per_stream
        c.max_wu_per_data = s.max_inbound_window_update_frames_per_data_frame_sent
        rv = lib.pyl_new(c, int(server), s.max_outbound_control_frames, s.stream_reset_burst, s.stream_reset_rate)
        if rv:
            raise H2Error(ffi.string(lib.nghttp2_strerror(rv)).decode())
        self._c = ffi.gc(c, lib.pyl_del)
        self._session = c.session
        self._streams: dict[int, int] = {}  # open streams the owner knows: received DATA bytes not yet consumed
        self._out_ptr = ffi.new("const uint8_t **")
        self._final: bytes | None = None  # after an outbound flood: the GOAWAY that replaces the queued frames
        self._error: BaseException | None = None  # raised by an owner call inside a callback
        self.streams_active = 0
        self.trailers = 0  # request trailers received (Envoy's http2.trailers)
        self.stats: dict[str, int] = {}  # counters this connection tripped: outbound/inbound floods, overflow
        self.closed = False  # a fatal error or a tripped limit: write data_to_send(), then close the socket
        entries = [
            (lib.NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, s.hpack_table_size),
            (lib.NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, int(s.allow_connect)),
            (lib.NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s.max_concurrent_streams),
            (lib.NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, s.initial_stream_window_size),
        ]  # fmt: skip
        if not server:
            entries.insert(0, (lib.NGHTTP2_SETTINGS_ENABLE_PUSH, 0))  # Envoy's upstream codec refuses server push
        self._check(lib.nghttp2_submit_settings(self._session, 0, ffi.new("nghttp2_settings_entry[]", entries),
                                                len(entries)))
        self._check(lib.nghttp2_session_set_local_window_size(self._session, 0, 0, s.initial_connection_window_size))

    # --- input -------------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Parse bytes from the peer, calling the owner; on a fatal error or a flood sets `closed`."""
        if self.closed:
            return
        rv = lib.nghttp2_session_mem_recv(self._session, data, len(data))
        if self._error is not None:
            error, self._error = self._error, None
            self._fail(INTERNAL_ERROR)
            raise error
        if rv < 0:
            self._fatal(rv)
            return
        if not lib.nghttp2_session_want_read(self._session):
            self.closed = True  # nghttp2 ended the session (a connection error) or a GOAWAY drain is over
        if lib.nghttp2_session_get_outbound_queue_size(self._session) > self.settings.max_outbound_frames:
            self._outbound_flood()

    def _outbound_flood(self) -> None:
        """The peer does not read: drop what is queued for it and send only a GOAWAY (Envoy does not flush either)."""
        self.stats["http2.outbound_flood"] = self.stats.get("http2.outbound_flood", 0) + 1
        self.stats["http2.goaway_sent"] = 1
        self.closed = True
        last = lib.nghttp2_session_get_last_proc_stream_id(self._session)
        self._final = struct.pack(">IBIII", (8 << 8) | 7, 0, 0, last, ENHANCE_YOUR_CALM)

    def _fatal(self, rv: int) -> None:
        tripped = self._c.tripped
        if tripped:
            self._trip(FLOOD_STATS[tripped])
        elif rv == lib.NGHTTP2_ERR_FLOODED:
            self._trip("http2.outbound_control_flood")
        elif rv == lib.NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
            self._trip("http2.header_overflow")
        else:  # a connection error nghttp2 found (bad preface, frame size, HPACK...): it queued its GOAWAY
            self._fail(PROTOCOL_ERROR)

    def _trip(self, stat: str) -> None:
        self.stats[stat] = self.stats.get(stat, 0) + 1
        self._fail(ENHANCE_YOUR_CALM)

    def _fail(self, code: int) -> None:
        """End the connection: a GOAWAY with `code` goes out (unless one did), then nothing more is parsed."""
        self.closed = True
        lib.nghttp2_session_terminate_session(self._session, code)

    # --- output ------------------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything nghttp2 will frame now (bounded by the peer's windows); b"" when there is nothing.

        A writer applying back-pressure stops calling this while its transport
        is full: frames then queue here and `max_outbound_frames` bounds them.
        """
        if self._final is not None:
            final, self._final = self._final, b""
            return final
        pp = self._out_ptr
        n = lib.pyl_send(self._c, pp)
        if self._error is not None:
            error, self._error = self._error, None
            self._fail(INTERNAL_ERROR)
            raise error
        if n < 0:
            self._fail(INTERNAL_ERROR)
            return b""
        if not lib.nghttp2_session_want_read(self._session):
            self.closed = True  # a GOAWAY that ends the session went out
        return ffi.buffer(pp[0], n)[:] if n else b""

    @property
    def pending_send_bytes(self) -> int:
        """Body bytes accepted by the submissions, not framed yet (Envoy's gauge; the shim holds them)."""
        return self._c.pending_send_bytes

    @property
    def want_read(self) -> bool:
        return not self.closed and bool(lib.nghttp2_session_want_read(self._session))

    @property
    def want_write(self) -> bool:
        return bool(lib.nghttp2_session_want_write(self._session))

    # --- submissions -------------------------------------------------------------------------------------

    def send_request(self, headers: Headers, end_stream: bool = False) -> int:
        """Client: open a stream with `headers` (pseudo-headers first); returns its id."""
        return self.send_request_block(header_block(headers), len(headers), end_stream)

    def send_request_block(self, block: bytes, count: int, end_stream: bool = False) -> int:
        """`send_request` with the head as a ready block of `count` fields (see `header_block`)."""
        sid = lib.pyl_submit_request(self._c, block, len(block), count, int(not end_stream))
        self._check(sid)
        self._streams[sid] = 0
        self.streams_active += 1
        return sid

    def send_response(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        """Server: the final response head (`:status` first); a body follows by `send_data` unless `end_stream`."""
        self.send_response_block(stream_id, header_block(headers), len(headers), end_stream)

    def send_response_block(self, stream_id: int, block: bytes, count: int, end_stream: bool = False) -> None:
        """`send_response` with the head as a ready `name\0value\0...` block of `count` fields (see `header_block`): for
        an encoder that builds it in its own pass over the fields instead of a list of pairs first."""
        self._known(stream_id)
        self._check(lib.pyl_submit_response(self._c, stream_id, block, len(block), count, int(not end_stream), b"", 0,
                                            0))

    def send_whole(self, stream_id: int, block: bytes, count: int, body: bytes) -> None:
        """Server: a complete response, its head (a block, as `send_response_block`) and `body` (the stream then
        ends), in one submission."""
        self._known(stream_id)
        self._check(lib.pyl_submit_response(self._c, stream_id, block, len(block), count, 1, body, len(body), 1))

    def send_informational(self, stream_id: int, headers: Headers) -> None:
        """Server: a 1xx response (100 Continue, 103 Early Hints) before the final one."""
        self._known(stream_id)
        block = header_block(headers)
        self._check(lib.pyl_submit_headers(self._c, stream_id, block, len(block), len(headers), 0))

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> int:
        """Queue body bytes (the shim copies them); they are framed as the peer's windows allow. Returns the bytes
        the stream has queued now, its share of the back-pressure (`pending`)."""
        queued = lib.pyl_data(self._c, stream_id, data, len(data), end_stream)
        if queued < 0:
            raise H2Error(f"stream {stream_id} has no open body")
        return queued

    def send_trailers(self, stream_id: int, trailers: Headers) -> None:
        """End the stream's body with trailers (sent after the last DATA; the block is checked now)."""
        block = header_block(trailers)
        rv = lib.pyl_trailers(self._c, stream_id, block, len(block), len(trailers))
        if rv == NGHTTP2_ERR_STREAM_CLOSED:
            raise H2Error(f"stream {stream_id} has no open body")
        self._check(rv)

    def pending(self, stream_id: int) -> int:
        """Body bytes of the stream accepted by `send_data` and not framed yet (its share of the back-pressure)."""
        return lib.pyl_pending(self._c, stream_id)

    def consume(self, stream_id: int, n: int) -> None:
        """The owner passed on `n` received body bytes: credit them back to the peer (WINDOW_UPDATE)."""
        left = self._streams.get(stream_id)
        if left is None:
            return  # the stream closed: its bytes went back to the connection window then
        n = min(n, left)
        self._streams[stream_id] = left - n
        lib.nghttp2_session_consume(self._session, stream_id, n)

    def reset_stream(self, stream_id: int, error_code: int = CANCEL) -> None:
        """RST_STREAM: abandon the stream both ways."""
        self._check(lib.nghttp2_submit_rst_stream(self._session, 0, stream_id, error_code))

    def ping(self) -> None:
        """Queue a PING (connection_keepalive); its ACK calls the owner's `on_ping_ack`."""
        self._check(lib.nghttp2_submit_ping(self._session, 0, ffi.NULL))

    def shutdown_notice(self) -> None:
        """Server: the first GOAWAY of a graceful drain (last stream id 2^31-1): clients stop opening streams."""
        self._check(lib.nghttp2_submit_shutdown_notice(self._session))

    def goaway(self, error_code: int = NO_ERROR) -> None:
        """The final GOAWAY, naming the last stream processed; open streams finish, then the connection ends."""
        last = lib.nghttp2_session_get_last_proc_stream_id(self._session)
        self._check(lib.nghttp2_submit_goaway(self._session, 0, last, error_code, ffi.NULL, 0))

    def terminate(self, error_code: int = NO_ERROR) -> None:
        """GOAWAY and end now: open streams are abandoned."""
        self._fail(error_code)

    def close(self) -> None:
        """Free the nghttp2 session (also done when this object is collected)."""
        self.closed = True
        lib.pyl_del(self._c)

    def counters(self) -> dict[str, int]:
        """Envoy's `http2.*` counters and gauges for this connection, to be summed into the listener's stats."""
        c = self._c
        out = dict(self.stats)
        out["http2.rx_reset"] = c.rx_reset
        out["http2.tx_reset"] = c.tx_reset
        out["http2.rx_messaging_error"] = c.rx_messaging_error
        out["http2.goaway_sent"] = c.goaway_sent + self.stats.get("http2.goaway_sent", 0)
        out["http2.trailers"] = self.trailers
        out["http2.streams_active"] = self.streams_active
        out["http2.pending_send_bytes"] = self.pending_send_bytes
        return out

    def _known(self, stream_id: int) -> None:
        if stream_id not in self._streams:
            raise H2Error(f"stream {stream_id} is not open")

    def _check(self, rv: int) -> None:
        if rv < 0:
            raise H2Error(ffi.string(lib.nghttp2_strerror(rv)).decode())


# --- callbacks from the shim (process-global; the handle says which connection) --------------------------


@ffi.def_extern()
def pyl_on_headers(handle, stream_id, cat, end, block, length):  # type: ignore[no-untyped-def]
    conn: H2Connection = ffi.from_handle(handle)
    try:
        fields = ffi.buffer(block, length)[:].split(b"\0")
        it = iter(fields)
        headers = list(zip(it, it))
        if cat == lib.NGHTTP2_HCAT_REQUEST:
            conn.streams_active += 1
            conn._streams[stream_id] = 0
            conn.owner.on_headers(stream_id, headers, bool(end))
        elif cat == lib.NGHTTP2_HCAT_RESPONSE or (headers and headers[0][0] == b":status"):
            conn.owner.on_headers(stream_id, headers, bool(end))
        else:
            if conn.server:
                conn.trailers += 1
            conn.owner.on_trailers(stream_id, headers)
    except BaseException as e:  # noqa: BLE001 - re-raised by receive() once nghttp2 has returned
        conn._error = e
        return lib.NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


@ffi.def_extern()
def pyl_on_data(handle, stream_id, data, length):  # type: ignore[no-untyped-def]
    conn: H2Connection = ffi.from_handle(handle)
    try:
        left = conn._streams.get(stream_id)
        if left is None:  # a stream this side already gave up: hand the window straight back
            lib.nghttp2_session_consume(conn._session, stream_id, length)
            return 0
        conn._streams[stream_id] = left + length
        conn.owner.on_data(stream_id, ffi.buffer(data, length)[:])
    except BaseException as e:  # noqa: BLE001
        conn._error = e
        return lib.NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


@ffi.def_extern()
def pyl_on_frame(handle, frame_type, stream_id, flags, a, b):  # type: ignore[no-untyped-def]
    conn: H2Connection = ffi.from_handle(handle)
    try:
        if frame_type == lib.NGHTTP2_DATA:
            conn.owner.on_end_stream(stream_id)
        elif frame_type == lib.NGHTTP2_GOAWAY:
            conn.owner.on_goaway(a, b)
        elif frame_type == lib.NGHTTP2_PING:
            conn.owner.on_ping_ack()
    except BaseException as e:  # noqa: BLE001
        conn._error = e
        return lib.NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


@ffi.def_extern()
def pyl_on_close(handle, stream_id, error_code):  # type: ignore[no-untyped-def]
    conn: H2Connection = ffi.from_handle(handle)
    try:
        left = conn._streams.pop(stream_id, None)
        if left is None:
            return 0  # refused or reset before its headers reached the owner
        if left:
            lib.nghttp2_session_consume_connection(conn._session, left)
        conn.streams_active -= 1
        conn.owner.on_stream_closed(stream_id, error_code)
    except BaseException as e:  # noqa: BLE001
        conn._error = e
        return lib.NGHTTP2_ERR_CALLBACK_FAILURE
    return 0
