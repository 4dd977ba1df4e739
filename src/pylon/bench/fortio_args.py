"""`pylon load`'s options: Fortio's flags, spelled with one dash or two, parsed into `LoadOptions`.

Users carry their Fortio command lines over unchanged (`-qps 100 -c 8 -t 30s
-H 'Host: x' -json out.json URL`), so the parser accepts Go's flag syntax:
single-dash long names, `-flag=value`, and boolean flags that take a value
only after `=` (`-keepalive=false`). Every flag also has a double-dash alias
for people used to GNU style. A bad flag or URL raises `LoadUsageError`, which
the CLI turns into a clear message and exit code 2.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence
from urllib.parse import urlsplit

from pylon.bench.histogram import DEFAULT_PERCENTILES, parse_percentiles


class LoadUsageError(ValueError):
    """A bad flag, value or URL on the `pylon load` command line."""


@dataclass(frozen=True)
class Target:
    """Where requests go, split once so the hot path only copies bytes."""

    url: str
    scheme: str
    host: str
    port: int
    path: str  # path plus query, as sent on the request line

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class LoadOptions:
    """Everything one load run needs; build it directly or with `parse_load_args`."""

    url: str
    qps: float = 8.0  # 0 = as fast as possible
    connections: int = 4
    duration: float = 5.0  # seconds; 0 = until interrupted (or -n reached)
    exactly: int = 0  # > 0: exact number of calls, overrides duration
    jitter: bool = False
    uniform: bool = False
    nocatchup: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    method: str = ""  # "" = GET, or POST when there is a payload
    payload: bytes = b""
    content_type: str = ""
    insecure: bool = False
    cacert: str = ""
    cert: str = ""
    key: str = ""
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    resolution: float = 0.001
    labels: str = ""
    json_path: str = ""  # "" = none, "-" = stdout
    auto_save: bool = False
    data_dir: str = "."
    csv_path: str = ""
    timeout: float = 3.0
    abort_on: int = 0  # HTTP code ending the run early; -1 = socket error; 0 = never
    keepalive: bool = True
    connection_reuse: tuple[int, int] | None = None
    procs: int = 1
    new_connection: bool = False
    h2: bool = False  # HTTP/2: prior knowledge for http://, ALPN h2 for https://
    grpc: bool = False  # gRPC to HOST:PORT: the health service, or Fortio's ping with `ping`
    ping: bool = False
    streams: int = 1  # -s: gRPC streams (threads) sharing each connection
    grpc_ping_delay: float = 0.0  # seconds the ping server is asked to wait before answering
    health_service: str = ""  # -healthservice: the service name a health check asks about
    extra: dict = field(default_factory=dict, compare=False)  # free-form notes copied into the JSON

    @property
    def target(self) -> Target:
        return grpc_target(self.url, self.cacert) if self.grpc else parse_target(self.url)

    @property
    def threads(self) -> int:
        """Fortio's NumThreads: one per connection, times the streams of each connection with gRPC."""
        return self.connections * self.streams

    @property
    def http_method(self) -> str:
        return self.method or ("POST" if self.payload else "GET")


def parse_target(url: str) -> Target:
    """Split and check a target URL; a scheme-less `host:port/path` means http, as in Fortio."""
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise LoadUsageError(f"invalid URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise LoadUsageError(f"invalid URL {url!r}: scheme must be http or https")
    if not parts.hostname:
        raise LoadUsageError(f"invalid URL {url!r}: no host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return Target(url=url, scheme=parts.scheme, host=parts.hostname, port=port, path=path)


GRPC_DEFAULT_PORT = 8079  # Fortio's default gRPC port (fnet.DefaultGRPCPort)


def grpc_target(destination: str, cacert: str = "") -> Target:
    """A gRPC destination as Fortio reads it: `host[:port]` (port 8079), or an http:// (port 80) or
    https:// (443) URL whose path is dropped; TLS for https:// or when a CA is given (`-cacert`)."""
    scheme, default_port = ("https" if cacert else "http"), GRPC_DEFAULT_PORT
    for prefix, port in (("http://", 80), ("https://", 443)):
        if destination.lower().startswith(prefix):
            scheme = "https" if prefix == "https://" or cacert else "http"
            destination, default_port = destination[len(prefix):], port
    host_port = destination.split("/", 1)[0]
    try:
        parts = urlsplit(f"//{host_port}")
        port = parts.port
    except ValueError as exc:
        raise LoadUsageError(f"invalid gRPC destination {destination!r}: {exc}") from None
    if not parts.hostname:
        raise LoadUsageError(f"invalid gRPC destination {destination!r}: no host")
    port = default_port if port is None else port
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Target(url=f"{host}:{port}", scheme=scheme, host=parts.hostname, port=port, path="/")


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Go's `time.ParseDuration` ("1m30s", "250ms", "0"); a bare number is taken as seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if not match:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError("empty duration")
    return total


def format_go_duration(seconds: float) -> str:
    """Go's `Duration.String()`, as Fortio writes `RequestedDuration` ("5s", "1m0s", "250ms")."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return f"{sign}{_trim(ns / size)}{unit}"
    hours, rest = divmod(ns, 3600 * 1_000_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000_000)
    secs = _trim(rest / 1e9)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def _trim(value: float) -> str:
    return f"{value:.9f}".rstrip("0").rstrip(".")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true", "yes", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "off"):
        return False
    raise LoadUsageError(f"invalid boolean value {text!r}")


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header {text!r} must be 'Name: value'")
    return name.strip(), value.strip()


def _parse_reuse(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    try:
        lo = int(low)
        hi = int(high) if sep else lo
    except ValueError:
        raise argparse.ArgumentTypeError(f"connection reuse {text!r} must be 'min:max'") from None
    if lo < 1 or hi < lo:
        raise argparse.ArgumentTypeError(f"connection reuse {text!r} needs 1 <= min <= max")
    return lo, hi


def _duration_arg(text: str) -> float:
    try:
        value = parse_go_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must not be negative")
    return value


def _bounded(convert: Callable[[str], float], what: str, minimum: float) -> Callable[[str], float]:
    """An argparse type: `convert` the text, then refuse values below `minimum` with a clear message."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be >= {minimum:g}")
        return value

    return parse


_positive_int = _bounded(int, "integer", 1)
_non_negative_float = _bounded(float, "number", 0)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise LoadUsageError(message)


# Boolean flags: Go accepts `-flag` and `-flag=false` but never `-flag false`.
_BOOL_FLAGS = {
    "jitter": "jitter",
    "uniform": "uniform",
    "nocatchup": "nocatchup",
    "k": "insecure",
    "https-insecure": "insecure",
    "a": "auto_save",
    "keepalive": "keepalive",
    "new-connection": "new_connection",
    "h2": "h2",
    "grpc": "grpc",
    "ping": "ping",
}


def _names(name: str) -> list[str]:
    return [f"-{name}", f"--{name}"]


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for `pylon load` (single- and double-dash spellings)."""
    p = _Parser(prog="pylon load", allow_abbrev=False,
                description="Fortio-compatible HTTP load generator.")
    add = p.add_argument
    add(*_names("qps"), type=_non_negative_float, default=8.0, help="queries per second, 0 = max speed (8)")
    add(*_names("c"), "--connections", dest="connections", type=_positive_int, default=4, help="connections (4)")
    add(*_names("t"), "--duration", dest="duration", type=_duration_arg, default=5.0, help="duration, 0 = until ^C (5s)")
    add(*_names("n"), dest="n", type=int, default=0, help="exact number of calls (overrides -t)")
    add(*_names("H"), "--header", action="append", type=_parse_header, default=[], dest="headers",
        help="extra header 'Name: value' (repeatable)")
    add(*_names("X"), "--method", default="", dest="method", help="HTTP method (GET, or POST with a payload)")
    add(*_names("payload"), default=None, help="request body text")
    add(*_names("payload-size"), type=int, default=0, dest="payload_size", help="random request body of this size")
    add(*_names("content-type"), default="", dest="content_type", help="request Content-Type")
    add(*_names("cacert"), default="", help="CA bundle to verify the server")
    add(*_names("cert"), default="", help="client certificate (mTLS)")
    add(*_names("key"), default="", help="client private key (mTLS)")
    add(*_names("p"), "--percentiles", default=",".join(f"{v:g}" for v in DEFAULT_PERCENTILES), dest="percentiles",
        help="percentiles to report (50,75,90,99,99.9)")
    add(*_names("r"), "--resolution", type=float, default=0.001, dest="resolution",
        help="histogram resolution in seconds (0.001)")
    add(*_names("labels"), default="", help="labels for the run (URL and hostname by default)")
    add(*_names("json"), default="", dest="json_path", help="write JSON results to FILE, or - for stdout")
    add(*_names("data-dir"), default=".", dest="data_dir", help="directory for -a results (.)")
    add(*_names("csv"), default="", dest="csv_path", help="write an Istio-style CSV row to FILE")
    add(*_names("timeout"), type=_duration_arg, default=3.0, help="per request timeout (3s)")
    add(*_names("abort-on"), type=int, default=0, dest="abort_on",
        help="HTTP code that aborts the run, -1 for socket errors (0 = never)")
    add(*_names("connection-reuse"), type=_parse_reuse, default=None, dest="connection_reuse",
        help="requests per connection, random within min:max")
    add(*_names("procs"), type=_positive_int, default=1, help="client processes (1)")
    add(*_names("s"), "--streams", dest="streams", type=_positive_int, default=None,
        help="gRPC: streams per connection, each a thread (1)")
    add(*_names("grpc-ping-delay"), type=_duration_arg, default=0.0, dest="grpc_ping_delay",
        help="gRPC ping: delay the server is asked to add to each reply (0)")
    add(*_names("healthservice"), default="", dest="health_service",
        help="gRPC health check: the service name to ask about ('')")
    for flag, dest in _BOOL_FLAGS.items():
        add(*_names(flag), action="store_true", dest=dest, default=(dest == "keepalive"),
            help=argparse.SUPPRESS if flag in ("k", "https-insecure", "a") else None)
        add(f"--{flag}=false", action="store_false", dest=dest, help=argparse.SUPPRESS)
    add("url", metavar="URL", help="target URL (http:// or https://), or HOST:PORT with -grpc")
    p.epilog = ("Boolean flags: -k/-https-insecure skip TLS verification; -a auto-names the JSON file; "
                "-h2 HTTP/2 (prior knowledge for http://); -grpc gRPC health checks, -ping Fortio's ping instead.")
    return p


_BOOL_SPELLING = re.compile(r"^--?(?P<name>[A-Za-z][\w-]*)=(?P<value>.*)$")


def _normalise_bools(argv: Sequence[str]) -> list[str]:
    """Rewrite `-flag=value` for boolean flags into the two forms argparse understands."""
    out: list[str] = []
    for arg in argv:
        match = _BOOL_SPELLING.match(arg)
        if match and match.group("name") in _BOOL_FLAGS:
            name = match.group("name")
            out.append(f"--{name}" if _parse_bool(match.group("value")) else f"--{name}=false")
        else:
            out.append(arg)
    return out


def parse_load_args(argv: Sequence[str]) -> LoadOptions:
    """Parse a Fortio-style command line into `LoadOptions`; raise `LoadUsageError` when it is wrong."""
    ns = build_parser().parse_args(_normalise_bools(argv))
    _check_protocol_flags(ns)
    grpc_target(ns.url, ns.cacert) if ns.grpc else parse_target(ns.url)  # fail early on a bad URL
    try:
        percentiles = tuple(parse_percentiles(ns.percentiles))
    except ValueError as exc:
        raise LoadUsageError(f"argument -p: {exc}") from None
    if ns.resolution <= 0:
        raise LoadUsageError("argument -r: resolution must be > 0")
    if ns.n < 0:
        raise LoadUsageError("argument -n: must be >= 0")
    if bool(ns.cert) != bool(ns.key):
        raise LoadUsageError("-cert and -key go together (client certificate for mTLS)")
    if ns.payload is not None and ns.payload_size:
        raise LoadUsageError("use either -payload or -payload-size, not both")
    payload = ns.payload.encode() if ns.payload is not None else os.urandom(ns.payload_size) if ns.payload_size else b""
    if ns.procs > ns.connections:
        raise LoadUsageError(f"-procs {ns.procs} needs at least as many connections (-c {ns.connections})")
    return LoadOptions(
        url=ns.url, qps=ns.qps, connections=ns.connections, duration=ns.duration, exactly=ns.n,
        jitter=ns.jitter, uniform=ns.uniform, nocatchup=ns.nocatchup, headers=tuple(ns.headers),
        method=ns.method.upper(), payload=payload, content_type=ns.content_type, insecure=ns.insecure,
        cacert=ns.cacert, cert=ns.cert, key=ns.key, percentiles=percentiles, resolution=ns.resolution,
        labels=ns.labels, json_path=ns.json_path, auto_save=ns.auto_save, data_dir=ns.data_dir,
        csv_path=ns.csv_path, timeout=ns.timeout, abort_on=ns.abort_on, keepalive=ns.keepalive,
        connection_reuse=ns.connection_reuse, procs=ns.procs, new_connection=ns.new_connection,
        h2=ns.h2, grpc=ns.grpc, ping=ns.ping, streams=ns.streams or 1, grpc_ping_delay=ns.grpc_ping_delay,
        health_service=ns.health_service,
    )


def _check_protocol_flags(ns: argparse.Namespace) -> None:
    """Refuse the gRPC flags without -grpc, and HTTP/1.1 connection handling with HTTP/2, rather than
    accept a flag that would change nothing."""
    if not ns.grpc:
        for flag, given in (("-ping", ns.ping), ("-s", ns.streams is not None),
                            ("-grpc-ping-delay", ns.grpc_ping_delay > 0), ("-healthservice", ns.health_service)):
            if given:
                raise LoadUsageError(f"{flag} needs -grpc")
    elif ns.ping and ns.health_service:
        raise LoadUsageError("-healthservice is for health checks, not -ping")
    elif not ns.ping and (ns.grpc_ping_delay > 0 or ns.payload is not None or ns.payload_size):
        raise LoadUsageError("-grpc-ping-delay and -payload need -ping (a health check has neither)")
    if ns.grpc and ns.payload_size:
        raise LoadUsageError("-payload-size is for HTTP; gRPC ping takes a -payload string")
    if ns.h2 or ns.grpc:
        mode = "-grpc" if ns.grpc else "-h2"
        for flag, given in (("-new-connection", ns.new_connection), ("-keepalive=false", not ns.keepalive),
                            ("-connection-reuse", ns.connection_reuse is not None)):
            if given:
                raise LoadUsageError(f"{flag} is not supported with {mode}")
    if ns.grpc and (ns.method or ns.content_type or ns.headers):
        raise LoadUsageError("-X, -content-type and -H are HTTP flags, not supported with -grpc")


def payload_base64(payload: bytes) -> str | None:
    """Fortio's JSON carries the payload base64-encoded (Go's []byte), null when empty."""
    return base64.b64encode(payload).decode() if payload else None
