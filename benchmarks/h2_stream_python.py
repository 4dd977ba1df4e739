"""The Python CPU of one proxied HTTP/2 stream, in process: what a change to the per-stream path saves, without noise.

h2_ab.py measures the whole worker under h2load, kernel included; on 2 shared CPUs its per-rep figures spread by
±25% (the batch sizes follow the machine's load), so a cut worth a few percent does not show. This drives the same
Python path with no sockets and no event loop waits: a downstream `Http2Connection` (h2c, the test rig's connection
manager: one route to an HTTP/1.1 cluster) gets ten GET HEADERS frames per read, the upstream HTTP/1.1 connections
the pool opened get nginx's 100-byte answer, the client's frames are taken. Per stream: the codec's calls, the
`Stream`, routing, the pool, the HTTP/1.1 encoder and decoder, the response's frames. Not in it: the kernel's reads
and writes, uvloop, and the worker's deadline ticks. Process CPU time per request, the best of several runs.

The hot modules run as `pylon.compiled` loads them (their Cython builds when built; `PYLON_PURE_PYTHON=1` for the
interpreted baseline); the output says which.

`--call grpc` drives h2_vs_envoy's other load the same way: ten gRPC unary calls per read (HEADERS, then a DATA
frame with the 14-byte message and END_STREAM) through a route to an HTTP/2 cluster, each answered by the upstream
connection the pool opened with HEADERS, the message and trailers. Both peers' bytes are made before the timing
starts, by two of pylon's own sessions talking to each other (a client as h2load, a server as grpcio's answers,
HPACK indexing included), and replayed: the streams' ids line up because the proxy's upstream connection numbers its
streams in the order the client opened them. Per call: both codecs' calls, the `Stream`, routing, the HTTP/2 pool
and its stream, the request's and the response's frames and trailers.

Usage: PYTHONPATH=src:. python benchmarks/h2_stream_python.py [--call get|grpc] [--runs 5] [--rounds 500]
(from the tree to measure: it uses that tree's tests/proxy rig.) Prints one line; writes nothing.
"""

from __future__ import annotations

import argparse
import struct
import time
from typing import Any

import pytest

from h2_vs_envoy import GRPC_BODY, GRPC_PATH
from pylon import compiled
from pylon.proxy.h2_connection import H2Runtime, Http2Connection
from pylon.proxy.http.h2_session import H2Connection
from pylon.stats.store import StatsStore
from tests.proxy.http.h2_helpers import (DATA, END_HEADERS, END_STREAM, GET_BLOCK, HEADERS, WINDOW_UPDATE,
                                         client_start, frame, frames)
from tests.proxy.test_stream_states import FakeTransport, Rig

STREAMS = 10  # per read, as h2load -m10
RESPONSE = (b"HTTP/1.1 200 OK\r\nserver: nginx\r\ndate: Sun, 06 Dec 2026 06:00:00 GMT\r\ncontent-type: text/html\r\n"
            b"content-length: 100\r\nconnection: keep-alive\r\n\r\n" + b"x" * 100)


class Bench:
    """One h2c connection through the rig's connection manager, ten streams at a time."""

    def __init__(self) -> None:
        self.rig = Rig(pytest.MonkeyPatch(), {"match": {"prefix": "/"}, "route": {"cluster": "up"}})
        self.rig.hcm.h2 = H2Runtime(self.rig.hcm, StatsStore())
        self.conn = Http2Connection(self.rig.hcm)
        self.client = FakeTransport(("127.0.0.1", 5555))
        self.conn.connection_made(self.client)  # type: ignore[arg-type]
        # the client's connection window wide open, as h2load's: the responses are never held back
        self.conn.data_received(client_start() + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1 - 65535)))
        self.rig.loop.run()
        self.next_id = 1

    def round(self) -> bytes:
        """Ten GETs in one read, each upstream's answer, and what the client got."""
        rig, first = self.rig, self.next_id
        self.next_id += 2 * STREAMS
        self.conn.data_received(b"".join(frame(HEADERS, END_STREAM | END_HEADERS, first + 2 * i, GET_BLOCK)
                                         for i in range(STREAMS)))
        rig.loop.run()
        for upstream, _transport in rig.upstreams:
            if upstream.exchange is not None:
                upstream.data_received(RESPONSE)
        rig.loop.run()
        for _upstream, transport in rig.upstreams:
            transport.take()
        return self.client.take()


#: h2load's gRPC call in h2_vs_envoy.py, and its message (echoed back)
GRPC_REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", GRPC_PATH.encode()),
                (b":authority", b"127.0.0.1:10000"), (b"user-agent", b"h2load nghttp2/1.52.0"),
                (b"content-type", b"application/grpc"), (b"te", b"trailers"),
                (b"content-length", str(len(GRPC_BODY)).encode())]
GRPC_RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
GRPC_TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]


class _Collect:
    """An H2Owner for the byte generators: consumes what arrives; as the server, answers each call whole."""

    def __init__(self, server: bool) -> None:
        self.server = server
        self.conn: Any = None
        self.ended = 0

    def on_headers(self, stream_id: int, headers: Any, end_stream: bool) -> None:
        pass

    def on_data(self, stream_id: int, data: bytes) -> None:
        self.conn.consume(stream_id, len(data))

    def on_trailers(self, stream_id: int, trailers: Any) -> None:
        self.ended += 1

    def on_end_stream(self, stream_id: int) -> None:
        if self.server:
            self.conn.send_response(stream_id, GRPC_RESPONSE)
            self.conn.send_data(stream_id, GRPC_BODY)
            self.conn.send_trailers(stream_id, GRPC_TRAILERS)

    def on_stream_closed(self, stream_id: int, error_code: int) -> None:
        pass

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        pass


def grpc_conversation(rounds: int) -> list[tuple[bytes, bytes]]:
    """Per round: the client's bytes (ten calls, and its acks and window updates) and the server's (the answers)."""
    client_owner, server_owner = _Collect(False), _Collect(True)
    client = client_owner.conn = H2Connection(client_owner, server=False)
    server = server_owner.conn = H2Connection(server_owner, server=True)
    out = []
    for _ in range(rounds):
        for _ in range(STREAMS):
            sid = client.send_request(GRPC_REQUEST)
            client.send_data(sid, GRPC_BODY, end_stream=True)
        sent, answered = bytearray(), bytearray()
        while True:
            x = client.data_to_send()
            if x:
                sent += x
                server.receive(x)
            y = server.data_to_send()
            if y:
                answered += y
                client.receive(y)
            if not x and not y:
                break
        out.append((bytes(sent), bytes(answered)))
    if client_owner.ended != rounds * STREAMS:
        raise SystemExit(f"the generators completed {client_owner.ended} calls of {rounds * STREAMS}")
    return out


class GrpcBench:
    """One h2c connection carrying gRPC unary calls through the rig's connection manager to an HTTP/2 upstream."""

    def __init__(self, rounds: int) -> None:
        self.rig = Rig(pytest.MonkeyPatch(), {"match": {"prefix": "/"}, "route": {"cluster": "up"}}, http2={})
        self.rig.hcm.h2 = H2Runtime(self.rig.hcm, StatsStore())
        self.conn = Http2Connection(self.rig.hcm)
        self.client = FakeTransport(("127.0.0.1", 5555))
        self.conn.connection_made(self.client)  # type: ignore[arg-type]
        self.rig.loop.run()
        self.script = iter(grpc_conversation(rounds))

    def round(self) -> bytes:
        """Ten calls in one read, the upstream's answers in one read, and what the client got."""
        rig = self.rig
        request, answers = next(self.script)
        self.conn.data_received(request)
        rig.loop.run()
        (upstream, transport), = rig.upstreams
        upstream.data_received(answers)
        rig.loop.run()
        transport.take()
        return self.client.take()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--call", choices=("get", "grpc"), default="get")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=500, help="rounds of ten streams per run")
    args = parser.parse_args()
    warm = 200  # warm-up: the pool's connections, the codec's tables
    if args.call == "grpc":
        bench: Any = GrpcBench(1 + warm + args.runs * args.rounds)
        got = frames(bench.round())  # the message echoed, then trailers: not a local reply (trailers-only)
        echoed = sum(1 for ftype, _flags, _sid, payload in got if ftype == DATA and payload == GRPC_BODY)
        ended = min(echoed, sum(1 for ftype, flags, _sid, _payload in got if ftype == HEADERS and flags & END_STREAM))
    else:
        bench = Bench()
        ended = sum(1 for ftype, flags, _sid, payload in frames(bench.round())
                    if ftype == DATA and flags & END_STREAM and len(payload) == 100)
    if ended != STREAMS:
        raise SystemExit(f"expected {STREAMS} complete responses, the client got {ended}")
    for _ in range(warm):
        bench.round()
    runs = []
    for _ in range(args.runs):
        start = time.process_time()
        for _ in range(args.rounds):
            bench.round()
        runs.append((time.process_time() - start) / (args.rounds * STREAMS) * 1e6)
    print(compiled.summary())
    each = ", ".join(f"{r:.2f}" for r in runs)
    print(f"{args.call}: {min(runs):.2f} us of Python CPU per stream (best of {len(runs)}: {each})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
