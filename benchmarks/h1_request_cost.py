"""What one plain HTTP/1.1 request costs in pylon's Python, without sockets: time, bytecodes, frames and calls.

The real connection manager, stream, pool and HTTP/1 codecs run on the test doubles of
tests/proxy/test_stream_states.py (`Rig`: a loop the caller clocks, transports that record), as in
benchmarks/results/h1_request_profile.md: a keep-alive client sends wrk's request, one pooled upstream connection
answers with nginx's head and a 100-byte body. Figures per request:

- µs of process CPU time, the best of 1,000-request batches: what a cut saves, but it swings with the machine's
  load (run two trees interleaved, see --help);
- bytecodes executed and Python frames entered (`sys.settrace` with opcode events): exact and repeatable whatever
  the load, so each cut's effect shows even on a busy machine (C work such as llhttp or bytes formatting does not
  count in them);
- function calls as cProfile counts them (Python and C functions).

The hot modules run as `pylon.compiled` loads them: their Cython builds when built, and then the bytecodes and
frames count only what still runs interpreted (filters, the test doubles). `PYLON_PURE_PYTHON=1` measures the
interpreted data path, the builds' baseline. The first line of output says which it was.

`--variant NAME` puts one of benchmarks/filter_cost.py's filters ahead of the router (with the request headers
wrk sends there): the filter's own Python per request, free of the machine's noise. Only the GET variants whose
filter needs nothing outside the connection manager run here (UNSUPPORTED lists the others: side calls,
shared buckets, secrets, the POSTs...).

Usage: PYTHONPATH=<tree>/src:<tree> python benchmarks/h1_request_cost.py [--batches 30] [--top 0] [--variant NAME]
(<tree> on the path for `tests.proxy`); `--top N` prints the N functions with the most bytecodes per request.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections import Counter
from types import FrameType
from typing import Any, Callable

import pytest

import filter_cost
from pylon import compiled
from pylon.proxy import hcm as hcm_module
from pylon.proxy.access_log import AccessLogWriter
from pylon.proxy.stream import Stream
from tests.proxy.test_stream_states import ROUTER, FakeTransport, FakeWorker, Rig

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 03:30:00 GMT\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
            + b"x" * 100)
TRACED = 256  # requests under the tracer and the profiler (two request-id batches: the refill counts fairly)


#: the access log of examples/bench/proxy-json-log.yaml (proxy_vs_envoy's json-log), to /dev/null
JSON_LOG = {"access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/dev/null",
    "log_format": {"json_format": {
        "start_time": "%START_TIME%", "method": "%REQ(:METHOD)%", "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "protocol": "%PROTOCOL%", "response_code": "%RESPONSE_CODE%", "response_flags": "%RESPONSE_FLAGS%",
        "bytes_sent": "%BYTES_SENT%", "duration": "%DURATION%", "upstream_host": "%UPSTREAM_HOST%",
        "request_id": "%REQ(X-REQUEST-ID)%"}}}}]}
#: variants whose filter needs the worker's or the bootstrap's parts: side calls, shared token buckets (across
#: workers), secrets, JWKS fetched at start, the drain state, an upstream of their own; or a POST
UNSUPPORTED = {"ext_authz", "internal_listener", "local_ratelimit", "local_ratelimit_descriptors",
               "bandwidth_limit", "credential_injector", "jwt_authn", "jwt_cached", "health_check",
               *filter_cost.REQUEST_LUA, *filter_cost.ANSWERS}


def exchange(variant: str = "plain", json_log: bool = False, per_connection: bool = False) -> Callable[[], bytes]:
    """One request and its response through the rig, as a callable returning what the client got; the production
    Stream, not the checked one.
    `variant`: a filter of benchmarks/filter_cost.py ahead of the router, and the headers wrk sends with it;
    `json_log`: with proxy_vs_envoy's JSON access log; `per_connection`: each request on a connection of its own
    (`Connection: close`, as the handshake benchmarks' clients send it): the connection's set-up and teardown
    count too."""
    if variant in UNSUPPORTED:
        raise SystemExit(f"{variant}: needs more than the connection manager (use benchmarks/filter_cost.py)")
    http_filter = filter_cost.VARIANTS[variant][0]
    route: dict[str, Any] = {"match": {"prefix": "/"}, "route": {"cluster": "up", "timeout": "5s"}}
    if variant == "cors":
        route["typed_per_filter_config"] = {"envoy.filters.http.cors": filter_cost.CORS_POLICY}
    patch = pytest.MonkeyPatch()
    writer = AccessLogWriter()  # filled buffers go to its thread
    made = FakeWorker.__init__

    def with_writer(worker: FakeWorker, *args: Any) -> None:
        made(worker, *args)
        worker.access_log_writer = writer

    patch.setattr(FakeWorker, "__init__", with_writer)
    hcm = {**(JSON_LOG if json_log else {}), **({} if http_filter is None else {"http_filters": [http_filter, ROUTER]})}
    rig = Rig(patch, route, hcm=hcm)
    patch.setattr(hcm_module, "Stream", Stream)
    headers = filter_cost.request_headers(variant, 9)  # the rig's upstream is 127.0.0.1:9
    request = REQUEST[:-2] + b"".join(header.encode() + b"\r\n" for header in headers) + b"\r\n"

    def one() -> bytes:
        rig.conn.data_received(request)
        rig.loop.run()
        upstream, transport = rig.upstreams[-1]
        transport.written = b""
        upstream.data_received(RESPONSE)
        rig.loop.run()
        answer, rig.client.written = rig.client.written, b""
        return answer

    if not per_connection:
        return one
    request = request[:-2] + b"Connection: close\r\n\r\n"

    def connection() -> bytes:
        """A connection of its own: made, one request with `Connection: close`, the response, closed, gone."""
        conn = hcm_module.HttpConnection(rig.hcm)
        client = FakeTransport(("127.0.0.1", 5555))
        conn.connection_made(client)
        conn.data_received(request)
        rig.loop.run()
        upstream, transport = rig.upstreams[-1]
        transport.written = b""
        upstream.data_received(RESPONSE)
        rig.loop.run()
        assert client.closed
        conn.connection_lost(None)
        rig.loop.run()
        return client.written

    return connection


def cpu_per_request(one: Callable[[], bytes], batches: int) -> float:
    """µs of process CPU per request, the best batch of 1,000."""
    best = float("inf")
    for _ in range(batches):
        start = time.process_time()
        for _ in range(1000):
            one()
        best = min(best, time.process_time() - start)
    return best * 1000


def bytecodes(one: Callable[[], bytes]) -> tuple[float, float, Counter[str]]:
    """(bytecodes, Python frames) per request, and bytecodes per function over the traced requests."""
    per_function: Counter[str] = Counter()
    frames = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal frames
        if event == "call":
            frames += 1
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        elif event == "opcode":
            code = frame.f_code
            per_function[f"{code.co_filename.rpartition('/src/')[2]}:{code.co_name}"] += 1
        return trace

    sys.settrace(trace)
    try:
        for _ in range(TRACED):
            one()
    finally:
        sys.settrace(None)
    return sum(per_function.values()) / TRACED, frames / TRACED, per_function


def calls(one: Callable[[], bytes]) -> float:
    """Function calls per request as cProfile counts them."""
    profile = cProfile.Profile()
    profile.runcall(lambda: [one() for _ in range(TRACED)])
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    return (sum(entry[1] for entry in stats.values()) - 2) / TRACED  # less the lambda and its list comprehension


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30, help="1,000-request batches timed (the best counts)")
    parser.add_argument("--top", type=int, default=0, help="list the functions with the most bytecodes")
    parser.add_argument("--variant", default="plain", choices=[v for v in filter_cost.VARIANTS if v not in UNSUPPORTED],
                        help="a filter of benchmarks/filter_cost.py ahead of the router")
    parser.add_argument("--json-log", action="store_true", help="with proxy_vs_envoy's JSON access log")
    parser.add_argument("--per-connection", action="store_true",
                        help="each request on a new connection (Connection: close), set-up and teardown included")
    args = parser.parse_args()
    one = exchange(args.variant, args.json_log, args.per_connection)
    for _ in range(2000):  # warm: the interpreter specialises, the pool holds its connection
        one()
    micros = cpu_per_request(one, args.batches)
    codes, frames, per_function = bytecodes(one)
    print(compiled.summary())
    print(f"{micros:.2f} µs CPU/request (best of {args.batches} x 1,000), {codes:.0f} bytecodes, "
          f"{frames:.1f} Python frames, {calls(one):.1f} calls per request")
    for name, count in per_function.most_common(args.top):
        print(f"{count / TRACED:7.0f}  {name}")


if __name__ == "__main__":
    main()
