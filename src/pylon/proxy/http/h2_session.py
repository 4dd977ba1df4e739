"""The HTTP/2 codec (sans-IO), both roles: bytes in, calls into an owner; submissions in, bytes out.

Built on libnghttp2 through pylon's own cffi binding (`_nghttp2`, built by
`_h2_build.py` from `h2_shim.c`): pure-Python HTTP/2 costs ~6x more CPU per
request (mesh-facts B4). As the HTTP/1 codecs beside it, it owns no socket:
`receive(data)` parses and calls the owner (`H2Owner`) for each stream event,
`data_to_send()` returns everything to write in one bytes object. C never
calls into Python: the shim records what the owner must hear (a HEADERS
block, a DATA chunk, a stream's end and close, GOAWAY, a PING's ACK) in an
event buffer while nghttp2 parses or frames, and the owner is called for each
once the library returned, in order. A cffi callback costs ~375 ns before it
does anything, even compiled; reading an event here ~85 ns (a gRPC call
through the proxy makes eight). Outbound bodies and their trailers are copied
into the shim as they are submitted and framed there, as the peer's windows
allow: no Python per DATA read either.

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

#: An event the shim recorded (h2_shim.c's pyl_event): kind, flag, headers category, stream id, a, b, payload size.
#: DATA's flag 1: its bytes are in the input at offset `a` (what libnghttp2 does), else they follow the event.
_EVENT = struct.Struct("=BBHiIII")
EVENT_SIZE = _EVENT.size
EV_HEADERS, EV_DATA, EV_END = lib.PYL_EV_HEADERS, lib.PYL_EV_DATA, lib.PYL_EV_END
EV_GOAWAY, EV_PING_ACK, EV_CLOSE = lib.PYL_EV_GOAWAY, lib.PYL_EV_PING_ACK, lib.PYL_EV_CLOSE
ST_EVENTS, ST_ENDED, ST_OUTBOUND_FLOOD = lib.PYL_ST_EVENTS, lib.PYL_ST_ENDED, lib.PYL_ST_OUTBOUND_FLOOD
HCAT_REQUEST, HCAT_RESPONSE = lib.NGHTTP2_HCAT_REQUEST, lib.NGHTTP2_HCAT_RESPONSE

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

    The events of one `receive` (or `data_to_send`: a stream closes when its
    last frame goes out) come after nghttp2 handled all of its bytes, in order.
    The calls may submit (send_response, send_data, consume, reset_stream...)
    but not call `receive` or `data_to_send`: the bytes framed before the
    events would go out after those framed in the call. An exception ends the
    connection (the events after it are dropped) and leaves the call.
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


_flattened = itertools.chain.from_iterable


def header_block(headers: Headers) -> bytes:
    """`name\\0value\\0...`: the shim builds nghttp2's array from it, and refuses a field holding a NUL."""
    return b"\0".join(_flattened(headers)) + b"\0"


class H2Connection:
    """One HTTP/2 connection, server or client side, sans-IO."""

    __slots__ = ("owner", "server", "settings", "_c", "_session", "_streams", "_out_ptr", "_final", "streams_active",
                 "trailers", "stats", "closed", "_on_headers", "_on_data", "_on_trailers", "_on_end_stream",
                 "_on_stream_closed")

    def __init__(self, owner: H2Owner, *, server: bool, settings: H2Settings | None = None) -> None:
        s = settings or H2Settings()
        self.owner = owner
        # the owner's calls of every stream, bound once (a method look-up per event costs as much as reading it)
        self._on_headers = owner.on_headers
        self._on_data = owner.on_data
        self._on_trailers = owner.on_trailers
        self._on_end_stream = owner.on_end_stream
        self._on_stream_closed = owner.on_stream_closed
        self.server = server
        self.settings = s
        c = ffi.new("pyl_h2 *")
        c.max_outbound_frames = s.max_outbound_frames
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
        c = self._c
        st = lib.pyl_recv(c, data, len(data))
        if st < 0:
            if c.elen:  # what came before the error reaches the owner, as it would have before the error
                self._dispatch(ffi.buffer(c.ebuf, c.elen)[:], data)
            self._fatal(st)
            return
        if st & ST_EVENTS:
            self._dispatch(ffi.buffer(c.ebuf, c.elen)[:], data)
            if lib.nghttp2_session_get_outbound_queue_size(self._session) > self.settings.max_outbound_frames:
                st |= ST_OUTBOUND_FLOOD  # what the owner submitted for these events counts too
        if st & ST_ENDED:
            self.closed = True  # nghttp2 ended the session (a connection error) or a GOAWAY drain is over
        if st & ST_OUTBOUND_FLOOD:
            self._outbound_flood()

    def _dispatch(self, events: bytes, data: bytes) -> None:
        """Call the owner for each event the shim recorded (`data`: the bytes parsed, where DATA may lie)."""
        streams = self._streams
        unpack = _EVENT.unpack_from
        at, end = 0, len(events)
        try:
            while at < end:
                kind, flag, cat, stream_id, a, b, size = unpack(events, at)
                at += EVENT_SIZE
                if kind == EV_DATA:
                    if flag:  # still in the input
                        chunk = data[a:a + size]
                    else:
                        chunk = events[at:at + size]
                        at += size
                    left = streams.get(stream_id)
                    if left is None:  # a stream this side already gave up: hand the window straight back
                        lib.nghttp2_session_consume(self._session, stream_id, size)
                    else:
                        streams[stream_id] = left + size
                        self._on_data(stream_id, chunk)
                elif kind == EV_HEADERS:
                    fields = events[at:at + size].split(b"\0")
                    at += size
                    it = iter(fields)
                    headers = list(zip(it, it))
                    if cat == HCAT_REQUEST:
                        self.streams_active += 1
                        streams[stream_id] = 0
                        self._on_headers(stream_id, headers, flag == 1)
                    elif cat == HCAT_RESPONSE or (headers and headers[0][0] == b":status"):
                        self._on_headers(stream_id, headers, flag == 1)
                    else:
                        if self.server:
                            self.trailers += 1
                        self._on_trailers(stream_id, headers)
                elif kind == EV_CLOSE:
                    left = streams.pop(stream_id, None)
                    if left is not None:  # else refused or reset before its headers reached the owner
                        if left:
                            lib.nghttp2_session_consume_connection(self._session, left)
                        self.streams_active -= 1
                        self._on_stream_closed(stream_id, a)
                elif kind == EV_END:
                    self._on_end_stream(stream_id)
                elif kind == EV_GOAWAY:
                    self.owner.on_goaway(a, b)
                elif kind == EV_PING_ACK:
                    self.owner.on_ping_ack()
        except BaseException:
            self._fail(INTERNAL_ERROR)
            raise

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
        st = lib.pyl_send(self._c, pp)
        if st < 0:
            self._fail(INTERNAL_ERROR)
            return b""
        out = ffi.buffer(pp[0], st >> 2)[:] if st > 3 else b""
        if st & ST_ENDED:
            self.closed = True  # a GOAWAY that ends the session went out
        if st & ST_EVENTS:  # streams whose last frame went out closed
            c = self._c
            self._dispatch(ffi.buffer(c.ebuf, c.elen)[:], b"")
        return out

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

    def send_whole(self, stream_id: int, block: bytes, count: int, body: bytes,
                   trailers: Headers | None = None) -> None:
        """Server: a complete response, its head (a block, as `send_response_block`), `body` and its `trailers` if
        any (the stream then ends), in one submission."""
        self._known(stream_id)
        if not trailers:
            self._check(lib.pyl_submit_response(self._c, stream_id, block, len(block), count, 1, body, len(body), 1))
            return
        tblock = header_block(trailers)
        rv = lib.pyl_submit_response_trailers(self._c, stream_id, block, len(block), count, body, len(body), tblock,
                                              len(tblock), len(trailers))
        if rv == NGHTTP2_ERR_STREAM_CLOSED:
            raise H2Error(f"stream {stream_id} has no open body")
        self._check(rv)

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
