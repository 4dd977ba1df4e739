"""Integration: the tap transport socket (envoy.transport_sockets.tap) beside Envoy 1.40.

A listener whose filter chain's transport socket is a tap (around raw_buffer or TLS) routes to a cluster whose
transport socket is a tap too; the cluster closes its connection after one request
(max_requests_per_connection: 1), so both connections end with the exchange and both proxies write one trace
per connection. The traces are read back with the real protos (envoy.data.tap.v3.TraceWrapper) and compared:
the same files (names up to the connection id), the same bytes each way (with the values that differ by nature,
dates and request ids, masked), the same truncation flags at the buffer limits, the plaintext under TLS.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from google.protobuf import json_format, text_format
from google.protobuf.internal.decoder import _DecodeVarint

from pylon.identity.certs import PemFiles, issue_leaf, make_ca, write_pem_files
from tests.conftest import free_port
from tests.proxy.conftest import (
    DOWNSTREAM_TLS_TYPE, UPSTREAM_TLS_TYPE, ProxyLauncher, RunningProxy, http_listener, route, static_cluster,
    tcp_listener, wait_until,
)
from tests.proxy.upstreams import TcpEcho, Upstream

TAP_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tap.v3.Tap"
RAW_BUFFER = {"name": "envoy.transport_sockets.raw_buffer",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}
HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FORMATS = ["JSON_BODY_AS_BYTES", "JSON_BODY_AS_STRING", "PROTO_BINARY", "PROTO_BINARY_LENGTH_DELIMITED", "PROTO_TEXT"]
REQUEST = b"GET /tapped/path HTTP/1.1\r\nHost: example.test\r\nUser-Agent: tap-test\r\nConnection: close\r\n\r\n"
#: Header values that differ between any two runs: masked before comparing bytes.
VARYING = re.compile(rb"(?im)^(date|x-request-id|x-envoy-upstream-service-time|x-envoy-expected-rq-timeout-ms"
                     rb"|server): [^\r\n]*")


def tap(inner: dict[str, Any], prefix: Path, fmt: str = "PROTO_BINARY", **output: Any) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tap", "typed_config": {
        "@type": TAP_TYPE,
        "common_config": {"static_config": {"match": {"any_match": True}, "output_config": {
            "sinks": [{"format": fmt, "file_per_tap": {"path_prefix": str(prefix)}}], **output}}},
        "transport_socket": inner}}


def with_stats_prefix(socket: dict[str, Any], prefix: str) -> dict[str, Any]:
    socket["typed_config"]["socket_tap_config"] = {"stats_prefix": prefix}
    return socket


def read_trace(path: Path) -> TraceWrapper:
    """A trace file in any of the five formats (unknown fields skipped: Envoy 1.40's protos are newer)."""
    data = path.read_bytes()
    trace = TraceWrapper()
    if path.suffix == ".pb":
        trace.ParseFromString(data)
    elif path.suffix == ".pb_length_delimited":
        size, start = _DecodeVarint(data, 0)
        assert start + size == len(data)
        trace.ParseFromString(data[start:])
    elif path.suffix == ".pb_text":
        text_format.Parse(data.decode(), trace, allow_unknown_field=True)
    else:
        json_format.Parse(data.decode(), trace, ignore_unknown_fields=True)
    return trace


@dataclass
class Directions:
    read: bytes
    write: bytes
    read_truncated: bool
    write_truncated: bool
    local_port: int
    write_size: int  # before masking


def directions(trace: TraceWrapper) -> Directions:
    """A buffered trace's bytes each way, joined (how a proxy splits them into events is its own)."""
    buffered = trace.socket_buffered_trace
    read, write = b"", b""
    for event in buffered.events:
        if event.HasField("read"):
            body = event.read.data
            read += body.as_bytes or body.as_string.encode()
        else:
            body = event.write.data
            write += body.as_bytes or body.as_string.encode()
    return Directions(VARYING.sub(rb"\1: *", read), VARYING.sub(rb"\1: *", write), buffered.read_truncated,
                      buffered.write_truncated, buffered.connection.local_address.socket_address.port_value, len(write))


def http_message(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """An HTTP/1 message as (start line, its header lines sorted, body)."""
    head, _, body = data.partition(b"\r\n\r\n")
    start, *headers = head.split(b"\r\n")
    return start, sorted(headers), body


def exchange(port: int, tls_ca: Path | None = None, timeout: float = 5.0) -> bytes:
    """Send REQUEST (over TLS when a CA is given) and read until the proxy closes."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock: socket.socket = raw
    if tls_ca is not None:
        ctx = ssl.create_default_context(cafile=str(tls_ca))
        sock = ctx.wrap_socket(raw, server_hostname="localhost")
    with sock:
        sock.sendall(REQUEST)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


@pytest.fixture
def pki(tmp_path: Path) -> PemFiles:
    ca = make_ca()
    return write_pem_files(tmp_path, "server", issue_leaf(
        ca, common_name="localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"]), ca)


def server_tls(pem: PemFiles) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": {"tls_certificates": [
            {"certificate_chain": {"filename": str(pem.cert)}, "private_key": {"filename": str(pem.key)}}]}}}


def client_tls(pem: PemFiles) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": UPSTREAM_TLS_TYPE, "common_tls_context": {
            "validation_context": {"trusted_ca": {"filename": str(pem.ca)}}}}}


def one_request_cluster(port: int, transport_socket: dict[str, Any]) -> dict[str, Any]:
    """Cluster `up`: its connection closes after one request, so its trace is written when the exchange ends."""
    return static_cluster("up", [port], transport_socket=transport_socket, typed_extension_protocol_options={
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS_TYPE, "common_http_protocol_options": {"max_requests_per_connection": 1},
            "explicit_http_config": {"http_protocol_options": {}}}})


@dataclass
class Run:
    proxy: RunningProxy
    port: int
    directory: Path
    response: bytes

    def traces(self, count: int) -> dict[str, TraceWrapper]:
        """The `count` trace files (waited for: written as the connections close), by name."""
        files = wait_until(lambda: (found := sorted(self.directory.iterdir())) and len(found) >= count and found,
                           timeout=15)
        assert len(files) == count, [f.name for f in files]
        return {f.name: read_trace(f) for f in files}


def run(implementation: str, tmp_path: Path, upstream: Upstream, downstream_socket: Any, upstream_socket: Any,
        tls_ca: Path | None = None) -> Run:
    """Start `implementation` with a tapped listener (`downstream_socket(prefix)`) and cluster
    (`upstream_socket(prefix)`), both writing into one directory; make the one exchange."""
    directory = tmp_path / f"taps-{implementation}"
    directory.mkdir()
    port = free_port()
    listener = http_listener("main", port, [route("/", "up")])
    listener["filter_chains"][0]["transport_socket"] = downstream_socket(directory / "down")
    launcher = ProxyLauncher(tmp_path)
    proxy = launcher.start([listener], [one_request_cluster(upstream.port, upstream_socket(directory / "up"))],
                           implementation=implementation)
    _launchers.append(launcher)
    return Run(proxy, port, directory, exchange(port, tls_ca))


_launchers: list[ProxyLauncher] = []


@pytest.fixture(autouse=True)
def _stop_proxies():
    yield
    while _launchers:
        _launchers.pop().close()


def by_side(traces: dict[str, TraceWrapper]) -> dict[str, Directions]:
    """{"down": ..., "up": ...}: the listener's trace and the cluster's, by their file name's prefix."""
    return {name.split("_")[0]: directions(trace) for name, trace in traces.items()}


def test_plain_text_taps_both_sides_as_envoy(tmp_path: Path) -> None:
    upstream = Upstream()
    try:
        results, stats = {}, {}
        for implementation in ("pylon", "envoy"):
            done = run(implementation, tmp_path, upstream, lambda p: tap(RAW_BUFFER, p, "JSON_BODY_AS_BYTES"),
                       lambda p: with_stats_prefix(tap(RAW_BUFFER, p, "PROTO_BINARY"), "up"))
            assert done.response.startswith(b"HTTP/1.1 200"), done.response
            traces = done.traces(2)
            names = sorted(re.sub(r"_\d+\.", "_ID.", name) for name in traces)
            assert names == ["down_ID.json", "up_ID.pb"]
            results[implementation] = by_side(traces), done
            stats[implementation] = {k: v for k, v in done.proxy.stats().items() if k.startswith("transport.tap")}
        (pylon, pylon_run), (envoy, _) = results["pylon"], results["envoy"]
        assert stats["pylon"] == stats["envoy"], stats
        assert stats["pylon"] == {
            "transport.tap.buffered_submit": 1, "transport.tap.streamed_submit": 0, "transport.tap.cx_sampled_out": 0,
            "transport.tap.up.buffered_submit": 1, "transport.tap.up.streamed_submit": 0,
            "transport.tap.up.cx_sampled_out": 0}
        assert pylon["down"].read == REQUEST
        assert pylon["down"].local_port == pylon_run.port
        assert pylon["up"].read.startswith(b"HTTP/1.1 200")
        assert b"GET /tapped/path HTTP/1.1\r\n" in pylon["up"].write
        for side in ("down", "up"):
            assert pylon[side].read_truncated == envoy[side].read_truncated
            assert pylon[side].write_truncated == envoy[side].write_truncated
        assert pylon["down"].read == envoy["down"].read
        assert pylon["up"].read == envoy["up"].read
        # what each proxy writes is its own HTTP/1 message: the same one, its headers in their own order
        assert http_message(pylon["down"].write) == http_message(envoy["down"].write)
        assert http_message(pylon["up"].write) == http_message(envoy["up"].write)
    finally:
        upstream.close()


def test_tls_is_tapped_as_plaintext_on_both_sides_as_envoy(tmp_path: Path, pki: PemFiles) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert, pki.key)
    upstream = Upstream(tls=context)
    try:
        sides = {}
        for implementation in ("pylon", "envoy"):
            done = run(implementation, tmp_path, upstream, lambda p: tap(server_tls(pki), p, "PROTO_TEXT"),
                       lambda p: tap(client_tls(pki), p, "JSON_BODY_AS_STRING"), tls_ca=pki.ca)
            assert done.response.startswith(b"HTTP/1.1 200"), done.response
            traces = done.traces(2)
            assert sorted(re.sub(r"_\d+\.", "_ID.", name) for name in traces) == ["down_ID.pb_text", "up_ID.json"]
            sides[implementation] = by_side(traces)
        pylon, envoy = sides["pylon"], sides["envoy"]
        assert pylon["down"].read == REQUEST == envoy["down"].read  # the plaintext, not TLS records
        assert pylon["up"].write.startswith(b"GET /tapped/path HTTP/1.1\r\n")
        assert http_message(pylon["up"].write) == http_message(envoy["up"].write)
        assert pylon["up"].read == envoy["up"].read
        assert http_message(pylon["down"].write) == http_message(envoy["down"].write)
    finally:
        upstream.close()


def test_truncation_at_the_buffer_limits_as_envoy(tmp_path: Path) -> None:
    upstream = Upstream()
    try:
        sides = {}
        for implementation in ("pylon", "envoy"):
            done = run(implementation, tmp_path, upstream,
                       lambda p: tap(RAW_BUFFER, p, max_buffered_rx_bytes=20, max_buffered_tx_bytes=len(REQUEST)),
                       lambda p: tap(RAW_BUFFER, p, max_buffered_rx_bytes=12, max_buffered_tx_bytes=0))
            assert done.response.startswith(b"HTTP/1.1 200"), done.response
            sides[implementation] = by_side(done.traces(2))
        pylon, envoy = sides["pylon"], sides["envoy"]
        for side in ("down", "up"):
            mine, theirs = pylon[side], envoy[side]
            assert (mine.read, mine.read_truncated, mine.write_truncated) == \
                   (theirs.read, theirs.read_truncated, theirs.write_truncated), side
            assert mine.write_size == theirs.write_size, side
        assert pylon["down"].read == REQUEST[:20] and pylon["down"].read_truncated
        assert pylon["up"].read == b"HTTP/1.1 200" and pylon["up"].read_truncated
        assert pylon["up"].write == b"" and pylon["up"].write_truncated
    finally:
        upstream.close()


def test_every_format_names_and_encodes_its_files_as_envoy(tmp_path: Path) -> None:
    found = {}
    for implementation in ("pylon", "envoy"):
        directory = tmp_path / f"formats-{implementation}"
        directory.mkdir()
        listeners = []
        for fmt in FORMATS:
            listener = http_listener(fmt.lower(), free_port(), [
                {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "tapped\n"}}}])
            listener["filter_chains"][0]["transport_socket"] = tap(RAW_BUFFER, directory / fmt.lower(), fmt)
            listeners.append(listener)
        launcher = ProxyLauncher(tmp_path)
        _launchers.append(launcher)
        proxy = launcher.start(listeners, [], implementation=implementation)
        for port in proxy.ports.values():
            assert exchange(port).startswith(b"HTTP/1.1 200")
        traces = Run(proxy, 0, directory, b"").traces(len(FORMATS))
        found[implementation] = {re.sub(r"_\d+\.", "_ID.", name): directions(trace) for name, trace in traces.items()}
    assert sorted(found["pylon"]) == sorted(found["envoy"])
    for name, mine in found["pylon"].items():
        theirs = found["envoy"][name]
        assert mine.read == REQUEST == theirs.read, name
        assert http_message(mine.write) == http_message(theirs.write), name


def test_tcp_proxy_connections_are_tapped_both_ways_as_envoy(tmp_path: Path) -> None:
    payload = b"ping over tcp_proxy " * 10
    upstream = TcpEcho()
    try:
        sides = {}
        for implementation in ("pylon", "envoy"):
            directory = tmp_path / f"tcp-{implementation}"
            directory.mkdir()
            port = free_port()
            listener = tcp_listener("main", port, "echo")
            listener["filter_chains"][0]["transport_socket"] = tap(RAW_BUFFER, directory / "down")
            launcher = ProxyLauncher(tmp_path)
            _launchers.append(launcher)
            proxy = launcher.start([listener], [static_cluster("echo", [upstream.port],
                                                               transport_socket=tap(RAW_BUFFER, directory / "up"))],
                                   implementation=implementation)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(payload)
                echoed = b""
                while len(echoed) < len(payload):
                    chunk = sock.recv(65536)
                    assert chunk, echoed
                    echoed += chunk
            assert echoed == payload
            sides[implementation] = by_side(Run(proxy, port, directory, b"").traces(2))
        for implementation, side in sides.items():
            assert side["down"].read == side["down"].write == payload, implementation
            assert side["up"].write == side["up"].read == payload, implementation
            assert not any(side[s].read_truncated or side[s].write_truncated for s in side), implementation
    finally:
        upstream.close()


def test_a_failed_tls_handshake_leaves_an_empty_trace_as_envoy(tmp_path: Path, pki: PemFiles) -> None:
    found = {}
    for implementation in ("pylon", "envoy"):
        directory = tmp_path / f"handshake-{implementation}"
        directory.mkdir()
        port = free_port()
        listener = http_listener("main", port, [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200}}])
        listener["filter_chains"][0]["transport_socket"] = tap(server_tls(pki), directory / "down")
        launcher = ProxyLauncher(tmp_path)
        _launchers.append(launcher)
        proxy = launcher.start([listener], [], implementation=implementation)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plaintext to a TLS listener
            sock.recv(65536)  # the alert, then the close
        [trace] = Run(proxy, port, directory, b"").traces(1).values()
        buffered = trace.socket_buffered_trace
        found[implementation] = (len(buffered.events), buffered.connection.local_address.socket_address.port_value)
    assert found["pylon"][0] == found["envoy"][0] == 0
    assert found["pylon"][1] != 0 and found["envoy"][1] != 0
