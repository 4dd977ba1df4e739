"""Load results: recording calls, merging processes, and Fortio's JSON and text output.

`Recorder` is the hot-path sink of one load process (plain counters and
Fortio histograms; picklable state so `-procs` children can ship it home).
`build_result` turns merged recorders plus the run's options into Fortio's
JSON object (`RunnerResults` + `HTTPRunnerResults` field names and types), so
tools that read Fortio's JSON read ours. pylon adds a few fields Fortio lacks:
`ErrorKinds` (socket errors by kind) and, for `--new-connection` runs,
`Handshakes`, `HandshakesPerSec` and `HandshakeHistogram`.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from pylon import __version__
from pylon.bench.fortio_args import LoadOptions, format_go_duration, payload_base64
from pylon.bench.histogram import Histogram, percentile_value

VERSION = f"pylon-{__version__}"
SOCKET_ERROR = -1  # Fortio's RetCodes key for calls that got no HTTP response


class Recorder:
    """Everything one load process observes, cheap to update per call."""

    def __init__(self, resolution: float, connections: int) -> None:
        self.durations = Histogram(0.0, resolution)
        self.errors = Histogram(0.0, resolution)
        self.connect_times = Histogram(0.0, resolution)
        self.sizes = Histogram(0.0, 100.0)  # Fortio's scales for sizes
        self.header_sizes = Histogram(0.0, 5.0)
        self.ret_codes: dict[int | str, int] = {}
        self.error_kinds: dict[str, int] = {}
        self.sockets = [0] * connections
        self.ip_counts: dict[str, int] = {}
        self.handshakes = 0

    def response(self, latency: float, code: int, size: int, header_size: int) -> None:
        """A complete HTTP response; non-2xx also lands in the error histogram, as in Fortio."""
        self.durations.record(latency)
        self.ret_codes[code] = self.ret_codes.get(code, 0) + 1
        self.sizes.record(size)
        self.header_sizes.record(header_size)
        if not 200 <= code < 300:
            self.errors.record(latency)

    def reply(self, latency: float, key: int | str, ok: bool, size: int) -> None:
        """An HTTP/2 call's reply, keyed by status or gRPC outcome; the codec keeps no header size (Fortio's
        std client reports none either)."""
        self.durations.record(latency)
        self.ret_codes[key] = self.ret_codes.get(key, 0) + 1
        self.sizes.record(size)
        self.header_sizes.record(0)
        if not ok:
            self.errors.record(latency)

    def failure(self, latency: float, kind: str) -> None:
        """A call that got no response: refused, reset, closed, timeout, tls, dns, protocol, other."""
        self.durations.record(latency)
        self.errors.record(latency)
        self.ret_codes[SOCKET_ERROR] = self.ret_codes.get(SOCKET_ERROR, 0) + 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        self.sizes.record(0)
        self.header_sizes.record(0)

    def connected(self, slot: int, seconds: float, peer: str, tls: bool) -> None:
        self.sockets[slot] += 1
        self.connect_times.record(seconds)
        if tls:
            self.handshakes += 1
        self.ip_counts[peer] = self.ip_counts.get(peer, 0) + 1

    def merge(self, other: "Recorder") -> None:
        for name in ("durations", "errors", "connect_times", "sizes", "header_sizes"):
            getattr(self, name).merge(getattr(other, name))
        for code, n in other.ret_codes.items():
            self.ret_codes[code] = self.ret_codes.get(code, 0) + n
        for kind, n in other.error_kinds.items():
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + n
        for peer, n in other.ip_counts.items():
            self.ip_counts[peer] = self.ip_counts.get(peer, 0) + n
        self.sockets.extend(other.sockets)
        self.handshakes += other.handshakes

    def to_state(self) -> dict[str, Any]:
        state = {k: v for k, v in vars(self).items() if not isinstance(v, Histogram)}
        state.update({k: v.to_state() for k, v in vars(self).items() if isinstance(v, Histogram)})
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Recorder":
        rec = cls.__new__(cls)
        for key, value in state.items():
            setattr(rec, key, Histogram.from_state(value) if isinstance(value, tuple) else value)
        return rec


@dataclass(frozen=True)
class RunTiming:
    """When the run started (wall clock, for StartTime) and how long it took."""

    start: datetime
    elapsed: float  # seconds


def default_labels(url: str) -> str:
    """Fortio's default labels: the URL and the client host name."""
    return f"{url} , {socket.gethostname()}"


def run_id(start: datetime, labels: str) -> str:
    """Fortio's auto-save id: start time then the labels with anything odd made '_'."""
    return start.strftime("%Y-%m-%d-%H%M%S") + "_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", labels).strip("_")


def build_result(options: LoadOptions, rec: Recorder, timing: RunTiming) -> dict[str, Any]:
    """The run as Fortio's JSON object: HTTPRunnerResults, or GRPCRunnerResults with -grpc."""
    labels = options.labels or default_labels(options.target.url if options.grpc else options.url)
    count = rec.durations.count
    if options.exactly > 0:
        requested_duration = f"exactly {options.exactly} calls"
        if count != options.exactly:
            requested_duration += f", interrupted after {count}"
    elif options.duration > 0:
        requested_duration = format_go_duration(options.duration)
    else:
        requested_duration = "until stop"
    target = options.target
    result: dict[str, Any] = {
        "RunType": grpc_run_type(options) if options.grpc else "HTTP",
        "Labels": labels,
        "StartTime": timing.start.isoformat(),
        "RequestedQPS": "max" if options.qps <= 0 else f"{options.qps:.9g}",
        "RequestedDuration": requested_duration,
        "ActualQPS": count / timing.elapsed if timing.elapsed > 0 else 0.0,
        "ActualDuration": int(timing.elapsed * 1e9),
        "NumThreads": options.threads,
        "Version": VERSION,
        "DurationHistogram": rec.durations.export(options.percentiles),
        "ErrorsDurationHistogram": rec.errors.export(options.percentiles),
        "Exactly": options.exactly,
        "Jitter": options.jitter,
        "Uniform": options.uniform,
        "NoCatchUp": options.nocatchup,
        "RunID": 0,
        "AccessLoggerInfo": "",
        "ID": run_id(timing.start, labels),
    }
    if options.grpc:
        result.update(_grpc_fields(options, rec))
    else:
        result.update(_http_fields(options, rec, timing))
    if options.extra:
        result.update(options.extra)
    return result


def grpc_run_type(options: LoadOptions) -> str:
    """Fortio's RunType for a gRPC run: "GRPC Ping" (with its delay and payload length), or the health check."""
    if options.ping:
        run_type = "GRPC Ping"
        if options.grpc_ping_delay > 0:
            run_type += f" Delay={format_go_duration(options.grpc_ping_delay)}"
    else:
        run_type = f"GRPC Health for '{options.health_service}'"
    if options.payload:
        run_type += f" PayloadLength={len(options.payload)}"
    return run_type


def _grpc_fields(options: LoadOptions, rec: Recorder) -> dict[str, Any]:
    """GRPCRunnerResults' own fields; calls without a reply count as "ERROR", as every failure does in Fortio.
    pylon adds what the HTTP result has for the report: Sizes (reply bytes), sockets and error kinds."""
    codes: dict[str, int] = {}
    for code, n in rec.ret_codes.items():
        key = "ERROR" if code == SOCKET_ERROR else str(code)
        codes[key] = codes.get(key, 0) + n
    return {
        "RetCodes": dict(sorted(codes.items())),
        "Destination": options.target.url,
        "Streams": options.streams,
        "Ping": options.ping,
        "Metadata": None,
        "Sizes": rec.sizes.export(),
        "Sockets": list(rec.sockets),
        "SocketCount": sum(rec.sockets),
        "ConnectionStats": rec.connect_times.export(options.percentiles),
        "ErrorKinds": dict(sorted(rec.error_kinds.items())),
        "Procs": options.procs,
    }


def _http_fields(options: LoadOptions, rec: Recorder, timing: RunTiming) -> dict[str, Any]:
    target = options.target
    result: dict[str, Any] = {
        "RetCodes": {str(code): n for code, n in sorted(rec.ret_codes.items())},
        "IPCountMap": dict(rec.ip_counts),
        "URL": target.url,
        "NumConnections": options.connections,
        "Compression": False,
        "DisableFastClient": False,
        "HTTP10": False,
        "DisableKeepAlive": not options.keepalive or options.new_connection,
        "AllowHalfClose": False,
        "H2": options.h2,
        "Insecure": options.insecure,
        "FollowRedirects": False,
        "Resolve": "",
        "HTTPReqTimeOut": int(options.timeout * 1e9),
        "UserCredentials": "",
        "ContentType": options.content_type,
        "Payload": payload_base64(options.payload),
        "MethodOverride": options.method,
        "CACert": options.cacert,
        "Cert": options.cert,
        "Key": options.key,
        "UnixDomainSocket": "",
        "LogErrors": True,
        "SequentialWarmup": False,
        "ConnReuseRange": list(options.connection_reuse or (0, 0)),
        "NoResolveEachConn": False,
        "Sizes": rec.sizes.export(),
        "HeaderSizes": rec.header_sizes.export(),
        "Sockets": list(rec.sockets),
        "SocketCount": sum(rec.sockets),
        "ConnectionStats": rec.connect_times.export(options.percentiles),
        "AbortOn": options.abort_on,
        "ErrorKinds": dict(sorted(rec.error_kinds.items())),
        "Procs": options.procs,
    }
    if options.new_connection:
        result["NewConnection"] = True
        result["Handshakes"] = rec.handshakes if target.tls else 0
        result["HandshakesPerSec"] = (result["Handshakes"] / timing.elapsed) if timing.elapsed > 0 else 0.0
        result["HandshakeHistogram"] = rec.connect_times.export(options.percentiles)
    return result


def _counter_line(msg: str, h: Mapping[str, Any]) -> str:
    return (f"{msg} : count {h['Count']} avg {h['Avg']:.8g} +/- {h['StdDev']:.4g} "
            f"min {h['Min']:g} max {h['Max']:g} sum {h['Sum']:.9g}")


def histogram_text(msg: str, h: Mapping[str, Any]) -> str:
    """Fortio's histogram print: counters, one line per bucket, then the target percentiles."""
    if not h.get("Data"):
        return f"{msg} : no data"
    lines = [_counter_line(msg, h), "# range, mid point, percentile, count"]
    for i, b in enumerate(h["Data"]):
        sep = ">=" if i == 0 else ">"
        lines.append(f"{sep} {b['Start']:.6g} <= {b['End']:.6g} , {(b['Start'] + b['End']) / 2:.6g} , "
                     f"{b['Percent']:.2f}, {b['Count']}")
    for p in h.get("Percentiles") or ():
        lines.append(f"# target {p['Percentile']:g}% {p['Value']:.6g}")
    return "\n".join(lines)


def summary_text(result: Mapping[str, Any]) -> str:
    """Fortio's end-of-run text summary for a result object."""
    out = io.StringIO()
    h = result["DurationHistogram"]
    count = h["Count"]
    grpc = "Destination" in result
    elapsed = result["ActualDuration"] / 1e9
    print(f"Ended after {format_go_duration(elapsed)} : {count} calls. qps={result['ActualQPS']:.5g}", file=out)
    print(histogram_text("Aggregated Function Time", h), file=out)
    print(histogram_text("Error cases", result["ErrorsDurationHistogram"]), file=out)
    if result.get("ConnectionStats", {}).get("Count"):
        print(_counter_line("Connection time (s)", result["ConnectionStats"]), file=out)
    if "SocketCount" in result:
        ideal = result["NumThreads"] // result.get("Streams", 1)
        print(f"Sockets used: {result['SocketCount']} (for perfect keepalive, would be {ideal})", file=out)
    print(f"Uniform: {str(result['Uniform']).lower()}, Jitter: {str(result['Jitter']).lower()}, "
          f"Catchup allowed: {str(not result['NoCatchUp']).lower()}", file=out)
    if not grpc:
        print("IP addresses distribution:", file=out)
        for peer, n in result["IPCountMap"].items():
            print(f"{peer}: {n}", file=out)
    for code, n in result["RetCodes"].items():
        share = f"{100.0 * n / count if count else 0:.1f} %"
        if grpc:  # Fortio's lines for a gRPC run: "Ping SERVING : 10", "Health NOT_SERVING : 3"
            print(f"{'Ping' if result.get('Ping') else 'Health'} {code} : {n} ({share})", file=out)
        else:
            print(f"Code {int(code):3d} : {n} ({share})", file=out)
    for kind, n in result.get("ErrorKinds", {}).items():
        print(f"Socket errors {kind} : {n}", file=out)
    if "Handshakes" in result:
        hs = result["HandshakeHistogram"]
        pct = ", ".join(f"p{p['Percentile']:g} {p['Value'] * 1000:.3f} ms" for p in hs.get("Percentiles") or ())
        print(f"TLS handshakes: {result['Handshakes']} ({result['HandshakesPerSec']:.1f}/s) {pct}", file=out)
    if "HeaderSizes" in result:
        print(_counter_line("Response Header Sizes", result["HeaderSizes"]), file=out)
    if "Sizes" in result:
        print(_counter_line("Response Body/Total Sizes", result["Sizes"]), file=out)
    print(f"All done {count} calls (plus 0 warmup) {h['Avg'] * 1000:.3f} ms avg, "
          f"{result['ActualQPS']:.1f} qps", file=out)
    return out.getvalue()


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read a Fortio (or pylon) JSON result, checking the fields the report needs."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    missing = [k for k in ("Labels", "ActualQPS", "DurationHistogram", "RetCodes") if k not in data]
    if missing:
        raise ValueError(f"{path}: not a Fortio result (missing {', '.join(missing)})")
    return data


def write_json(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


def error_percent(result: Mapping[str, Any]) -> float:
    """Istio's definition: calls that did not get a 200 (a gRPC run: SERVING), over all calls."""
    total = int((result.get("Sizes") or result["DurationHistogram"])["Count"])  # Fortio's gRPC JSON has no Sizes
    if total == 0:
        return 0.0
    ok = "SERVING" if "Destination" in result else "200"
    return 100.0 * (total - int(result["RetCodes"].get(ok, 0))) / total


def latency_ms(result: Mapping[str, Any], percentile: float) -> float | None:
    value = percentile_value(result["DurationHistogram"], percentile)
    return None if value is None else value * 1000.0

