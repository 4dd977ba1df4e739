"""The tap's recording, sans-IO (extensions/transport_sockets/tap_trace.py): Envoy's buffer limits and
truncation, the five file formats. Beside Envoy 1.40 on real connections: tests/proxy/test_proxy_tap_socket.py."""

from __future__ import annotations

import json
from pathlib import Path

from envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from google.protobuf import text_format
from google.protobuf.internal.decoder import _DecodeVarint

from pylon.config.envoy import convert
from pylon.extensions.transport_sockets.tap import Tap
from pylon.extensions.transport_sockets.tap_trace import TapSink
from pylon.stats.store import StatsStore


def sink(tmp_path: Path, fmt: str = "PROTO_BINARY", stats_prefix: str = "",
         **output: int) -> tuple[TapSink, StatsStore]:
    config = convert({
        "common_config": {"static_config": {"match": {"any_match": True}, "output_config": {
            "sinks": [{"format": fmt, "file_per_tap": {"path_prefix": str(tmp_path / "t")}}], **output}}},
        "socket_tap_config": {"stats_prefix": stats_prefix},
        "transport_socket": {"name": "raw", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}, Tap)
    stats = StatsStore()
    return TapSink(config, stats, worker_id=0), stats


def test_each_direction_stops_at_its_limit_as_envoy(tmp_path: Path) -> None:
    tap_sink, _ = sink(tmp_path, max_buffered_rx_bytes=5, max_buffered_tx_bytes=4)
    tapper = tap_sink.tapper()
    tapper.on_read(b"abc")
    tapper.on_read(b"de")  # exactly at the limit: kept whole, not truncated yet
    tapper.on_write(b"12345")  # crosses the limit: cut there, truncated
    tapper.on_read(b"f")  # past the limit: one empty event marks the truncation
    tapper.on_read(b"g")  # then nothing more of that direction
    tapper.on_write(b"6")
    trace = tapper.trace(("127.0.0.1", 1), ("127.0.0.1", 2)).socket_buffered_trace
    kinds = [(e.WhichOneof("event_selector"), (e.read.data if e.HasField("read") else e.write.data).as_bytes,
              (e.read.data if e.HasField("read") else e.write.data).truncated) for e in trace.events]
    assert kinds == [("read", b"abc", False), ("read", b"de", False), ("write", b"1234", True), ("read", b"", True)]
    assert trace.read_truncated and trace.write_truncated
    assert trace.connection.remote_address.socket_address.port_value == 2


def test_the_files_are_named_and_encoded_as_envoy_writes_them(tmp_path: Path) -> None:
    expected = {"PROTO_BINARY": ".pb", "PROTO_BINARY_LENGTH_DELIMITED": ".pb_length_delimited",
                "PROTO_TEXT": ".pb_text", "JSON_BODY_AS_BYTES": ".json", "JSON_BODY_AS_STRING": ".json"}
    for n, (fmt, extension) in enumerate(expected.items()):
        directory = tmp_path / fmt
        directory.mkdir()
        tap_sink, stats = sink(directory, fmt, stats_prefix="p")
        tapper = tap_sink.tapper()
        tapper.on_read(b"GET / HTTP/1.1\r\n\r\n")
        tapper.closed(n + 7, ("127.0.0.1", 1), ("127.0.0.1", 2))
        [path] = directory.iterdir()
        assert path.name == f"t_{n + 7}{extension}"
        data = path.read_bytes()
        trace = TraceWrapper()
        if fmt == "PROTO_BINARY":
            trace.ParseFromString(data)
        elif fmt == "PROTO_BINARY_LENGTH_DELIMITED":
            size, start = _DecodeVarint(data, 0)
            assert start + size == len(data)
            trace.ParseFromString(data[start:])
        elif fmt == "PROTO_TEXT":
            text_format.Parse(data.decode(), trace)
        else:
            body = json.loads(data)["socket_buffered_trace"]["events"][0]["read"]["data"]
            key = "as_string" if fmt == "JSON_BODY_AS_STRING" else "as_bytes"
            assert list(body) == [key, "truncated"] and body["truncated"] is False
            continue
        assert trace.socket_buffered_trace.trace_id == n + 7
        assert trace.socket_buffered_trace.events[0].read.data.as_bytes == b"GET / HTTP/1.1\r\n\r\n"
        assert stats.counter("transport.tap.p.buffered_submit").value == 1
