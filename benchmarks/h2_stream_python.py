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

Usage: PYTHONPATH=src:. python benchmarks/h2_stream_python.py [--runs 5] [--rounds 500]
(from the tree to measure: it uses that tree's tests/proxy rig.) Prints one line; writes nothing.
"""

from __future__ import annotations

import argparse
import struct
import time

import pytest

from pylon import compiled
from pylon.proxy.h2_connection import H2Runtime, Http2Connection
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=500, help="rounds of ten streams per run")
    args = parser.parse_args()
    bench = Bench()
    ended = sum(1 for ftype, flags, _sid, payload in frames(bench.round())
                if ftype == DATA and flags & END_STREAM and len(payload) == 100)
    if ended != STREAMS:
        raise SystemExit(f"expected {STREAMS} complete responses, the client got {ended}")
    for _ in range(200):  # warm-up: the pool's connections, the codec's tables
        bench.round()
    runs = []
    for _ in range(args.runs):
        start = time.process_time()
        for _ in range(args.rounds):
            bench.round()
        runs.append((time.process_time() - start) / (args.rounds * STREAMS) * 1e6)
    print(compiled.summary())
    print(f"{min(runs):.2f} us of Python CPU per stream (best of {len(runs)}: {', '.join(f'{r:.2f}' for r in runs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
