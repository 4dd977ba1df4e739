"""The tap transport socket's recording: one buffered trace per connection, written where Envoy 1.40 writes it.

Sans-IO: `SocketTapper` is told what the connection read and wrote (the inner transport socket's plaintext:
after TLS decryption, as Envoy taps) and that it closed; `TapSink` turns that into the
`envoy.data.tap.v3.TraceWrapper` Envoy writes (`socket_buffered_trace`: the connection's addresses, one event per
read or write with its wall-clock timestamp) and writes it with protobuf's own serializers, so a trace pylon
writes reads exactly as Envoy's (proxy/tap_socket.py feeds it from the connection). Envoy's rules, observed beside
it (tests/proxy/test_proxy_tap_socket.py):
- each direction keeps at most max_buffered_rx/tx_bytes (1 KiB by default); the read or write that crosses the
  limit is cut there and marks its body and the trace `read_truncated`/`write_truncated`, and later ones of that
  direction are not recorded at all (a read after the limit is exactly reached gives one empty, truncated event);
- the trace is written once, when the connection closes, even with no event (a connection that sent nothing);
- the file is `<path_prefix>_<connection id>` + `.pb`, `.pb_length_delimited`, `.pb_text` or `.json`;
  JSON_BODY_AS_STRING writes bodies as `as_string`, the others as `as_bytes`;
- `transport.tap[.<stats_prefix>].buffered_submit` counts the traces (`streamed_submit`, `cx_sampled_out` stay 0).

Its module, and protobuf with it, is imported only by a process whose config has a tap.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from google.protobuf import json_format, text_format
from google.protobuf.internal.encoder import _VarintBytes

from envoy.config.core.v3.address_pb2 import Address
from envoy.data.tap.v3.transport_pb2 import SocketBufferedTrace, SocketEvent
from envoy.data.tap.v3.wrapper_pb2 import TraceWrapper

if TYPE_CHECKING:
    from pylon.extensions.transport_sockets.tap import Tap

log = logging.getLogger("pylon.extensions.transport_sockets.tap")

#: Envoy's file extensions by sink format (MessageUtil::FileExtensions).
EXTENSIONS = {
    "PROTO_BINARY": ".pb",
    "PROTO_BINARY_LENGTH_DELIMITED": ".pb_length_delimited",
    "PROTO_TEXT": ".pb_text",
    "JSON_BODY_AS_BYTES": ".json",
    "JSON_BODY_AS_STRING": ".json",
}


def _address(address: Any) -> Address | None:
    """An (ip, port[, ...]) pair as config.core.v3.Address; None when unknown (a Unix socket, or gone)."""
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    result = Address()
    result.socket_address.address = address[0]
    result.socket_address.port_value = address[1]
    return result


class TapSink:
    """One tap transport socket's config in one worker: makes each connection's tapper and writes its trace."""

    def __init__(self, config: "Tap", stats: Any, worker_id: int) -> None:
        output = config.static_config.output_config
        assert output is not None  # required when read
        sink = output.sinks[0]
        assert sink.file_per_tap is not None  # the only sink read
        self.path_prefix = sink.file_per_tap.path_prefix
        self.format = sink.format
        self.rx_limit = output.rx_limit
        self.tx_limit = output.tx_limit
        named = config.socket_tap_config.stats_prefix
        prefix = f"transport.tap.{named}." if named else "transport.tap."
        self.buffered_submit = stats.counter(prefix + "buffered_submit")
        # Envoy's other two, at 0 here: no streamed traces, and no sampling (every connection is tapped)
        stats.counter(prefix + "streamed_submit")
        stats.counter(prefix + "cx_sampled_out")
        # Connections that have no id of their own (upstream ones): ids apart from the worker's downstream ones.
        self._ids = itertools.count((worker_id << 40) + (1 << 39) + 1)

    def tapper(self) -> SocketTapper:
        return SocketTapper(self)

    def next_id(self) -> int:
        return next(self._ids)

    def path(self, trace_id: int) -> str:
        return f"{self.path_prefix}_{trace_id}{EXTENSIONS[self.format]}"

    def encode(self, trace: TraceWrapper) -> bytes:
        """The file's content in the sink's format, as Envoy serialises it."""
        if self.format == "PROTO_BINARY":
            return trace.SerializeToString()
        if self.format == "PROTO_BINARY_LENGTH_DELIMITED":
            body = trace.SerializeToString()
            return _VarintBytes(len(body)) + body
        if self.format == "PROTO_TEXT":
            return text_format.MessageToString(trace).encode()
        if self.format == "JSON_BODY_AS_STRING":
            for event in trace.socket_buffered_trace.events:
                body = event.read.data if event.HasField("read") else event.write.data
                body.as_string = body.as_bytes.decode("utf-8", "replace")
        return json_format.MessageToJson(trace, preserving_proto_field_name=True, indent=1,
                                      always_print_fields_with_no_presence=True).encode()

    def submit(self, trace: TraceWrapper, trace_id: int) -> None:
        path = self.path(trace_id)
        try:
            with open(path, "wb") as out:
                out.write(self.encode(trace))
        except OSError as exc:  # as Envoy, a sink that cannot write loses the trace, not the connection
            log.warning("tap: cannot write %s: %s", path, exc)
            return
        self.buffered_submit.inc()


class SocketTapper:
    """One connection's buffered trace, recorded as it goes (sans-IO: told of reads, writes and the close)."""

    __slots__ = ("sink", "events", "rx_left", "tx_left", "read_truncated", "write_truncated")

    def __init__(self, sink: TapSink) -> None:
        self.sink = sink
        self.events: list[SocketEvent] = []
        self.rx_left = sink.rx_limit
        self.tx_left = sink.tx_limit
        self.read_truncated = False
        self.write_truncated = False

    def on_read(self, data: bytes, now: Callable[[], int] = time.time_ns) -> None:
        if self.read_truncated or not data:
            return
        event = SocketEvent()
        event.timestamp.FromMicroseconds(now() // 1000)  # Envoy's clock: microseconds
        kept = data[:self.rx_left]
        event.read.data.as_bytes = kept
        self.rx_left -= len(kept)
        if len(kept) < len(data):
            event.read.data.truncated = self.read_truncated = True
        self.events.append(event)

    def on_write(self, data: bytes, end_stream: bool = False, now: Callable[[], int] = time.time_ns) -> None:
        if self.write_truncated or not data:
            return
        event = SocketEvent()
        event.timestamp.FromMicroseconds(now() // 1000)  # Envoy's clock: microseconds
        kept = bytes(data[:self.tx_left])
        event.write.data.as_bytes = kept
        event.write.end_stream = end_stream
        self.tx_left -= len(kept)
        if len(kept) < len(data):
            event.write.data.truncated = self.write_truncated = True
        self.events.append(event)

    def trace(self, local: Any, remote: Any) -> TraceWrapper:
        """The trace as Envoy submits it when the connection closes."""
        trace = TraceWrapper()
        buffered: SocketBufferedTrace = trace.socket_buffered_trace
        buffered.SetInParent()
        buffered.events.extend(self.events)
        buffered.read_truncated = self.read_truncated
        buffered.write_truncated = self.write_truncated
        for field, address in (("local_address", local), ("remote_address", remote)):
            proto = _address(address)
            if proto is not None:
                getattr(buffered.connection, field).CopyFrom(proto)
        return trace

    def closed(self, trace_id: int, local: Any, remote: Any) -> None:
        trace = self.trace(local, remote)
        trace.socket_buffered_trace.trace_id = trace_id
        self.sink.submit(trace, trace_id)
