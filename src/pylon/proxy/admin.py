"""Envoy's admin endpoint for `pylon proxy`: /ready, /stats, /stats/prometheus, /config_dump, ...

It runs in the supervisor's event loop and reads everything through an
`AdminBackend` (merged worker stats, cluster status, config, server state), so
scripts, probes and dashboards written for Envoy's admin port work unchanged:
same paths, same text and JSON shapes, same 404/405 behaviour.

`AdminHandler` is the sans-IO part (method + request target in, `AdminResponse`
out); `_AdminProtocol` is a small keep-alive HTTP/1.1 shell over httptools.
Admin traffic is rare, so clarity beats speed here.

Each answered request is logged to the bootstrap's admin access logs (`admin.access_log`
and the deprecated `admin.access_log_path`) as Envoy logs it: its admin endpoint is an
HTTP connection manager with `use_remote_address`, so a line sees the x-forwarded-for,
x-forwarded-proto and x-envoy-external-address that manager sets, response code details
`admin_filter_response`, and the body sizes of the request and the response.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, NamedTuple, Protocol, cast
from urllib.parse import parse_qs, urlsplit

import httptools
import msgspec
import re2

from pylon import __version__
from pylon.proxy.access_log import AccessLogger, AccessLogRecord
from pylon.proxy.http1 import local_reply
from pylon.proxy.local_address import forwarded_for_entry
from pylon.proxy.redact import redact
from pylon.stats.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from pylon.stats.prometheus import render_prometheus


class AdminBackend(Protocol):
    """What the admin endpoint needs from the proxy (the supervisor implements it)."""

    async def stats_snapshot(self) -> dict:
        """All workers' stats merged, in `pylon.stats.store` snapshot format."""

    async def clusters_text(self) -> str:
        """Envoy's /clusters text (`cluster::host:port::stat::value` lines)."""

    def config_dump(self) -> dict:
        """The running config, Envoy-shaped (may contain msgspec Structs)."""

    def server_info(self) -> dict:
        """{"state": "LIVE"|"DRAINING"|"PRE_INITIALIZING", "uptime_current_epoch": seconds,
        "uptime_all_epochs": seconds, "command_line_options": {"concurrency": N, ...}, "node": {...}}."""

    def is_ready(self) -> bool:
        """LIVE and every worker up."""

    async def quit(self) -> None:
        """Drain gracefully and exit (/quitquitquit)."""

    async def fail_health_check(self, failed: bool) -> None:
        """/healthcheck/fail (True) and /healthcheck/ok (False): every worker's health_check filters answer 503
        (and its connections close after each response) while failed, as Envoy's server health state."""

    def runtime(self) -> dict:
        """Envoy's /runtime JSON: {"entries": {key: {"layer_values": [...], "final_value": ...}}, "layers": [...]}."""


class AdminResponse(NamedTuple):
    status: int
    body: bytes
    content_type: bytes = b"text/plain; charset=UTF-8"
    after: Callable[[], None] | None = None  # runs once the response is written


JSON = b"application/json"

# Envoy's histogram summary quantiles (HistogramStatisticsImpl::supportedQuantiles).
QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad ?filter= is the client's 400, not a log line


# --------------------------------------------------------------------------- stats rendering


def select_stats(
    snapshot: Mapping[str, Any], pattern: Any = None, used_only: bool = False, stat_type: str = "All"
) -> dict[str, Any]:
    """The part of a snapshot that `?filter=`, `?usedonly` and `?type=` select.

    `pattern` is a compiled regex searched in the stat name (Envoy: RE2, partial
    match). The snapshot has no "used" flag, so `usedonly` keeps counters and
    gauges that are non-zero and histograms with samples.
    """

    def keep(name: str, used: bool) -> bool:
        return (not used_only or used) and (pattern is None or pattern.search(name) is not None)

    wanted = {"All": ("counters", "gauges", "histograms"), "Counters": ("counters",),
              "Gauges": ("gauges",), "Histograms": ("histograms",)}[stat_type]
    out: dict[str, Any] = {"counters": {}, "gauges": {}, "histograms": {}}
    for kind in ("counters", "gauges"):
        if kind in wanted:
            out[kind] = {n: v for n, v in snapshot.get(kind, {}).items() if keep(n, v != 0)}
    if "histograms" in wanted:
        out["histograms"] = {n: h for n, h in snapshot.get("histograms", {}).items() if keep(n, h["count"] > 0)}
    return out


def histogram_quantiles(hist: Mapping[str, Any]) -> list[float]:
    """Envoy's summary quantiles estimated from bucket counts (linear within a bucket; nan when empty).

    A bucket `i` holds samples in (bounds[i-1], bounds[i]]; samples above the
    last bound can only be placed at that bound.
    """
    bounds, counts, total = hist["bounds"], hist["counts"], hist["count"]
    if total == 0:
        return [math.nan] * len(QUANTILES)
    values = []
    for q in QUANTILES:
        rank = q * total
        below = 0
        for i, count in enumerate(counts):
            if count and below + count >= rank:
                break
            below += count
        if i >= len(bounds):
            values.append(float(bounds[-1]))
            continue
        lower = bounds[i - 1] if i > 0 else 0.0
        values.append(lower + (bounds[i] - lower) * (rank - below) / count)
    return values


def _number(value: float) -> str:
    """A double as Envoy prints it: shortest form, integers without `.0`, `nan`."""
    if math.isnan(value):
        return "nan"
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def render_stats_text(stats: Mapping[str, Any]) -> str:
    """`name: value` lines, counters and gauges sorted together, then histograms (Envoy's order)."""
    scalars = {**stats["counters"], **stats["gauges"]}
    lines = [f"{name}: {scalars[name]}" for name in sorted(scalars)]
    for name in sorted(stats["histograms"]):
        hist = stats["histograms"][name]
        if hist["count"] == 0:
            lines.append(f"{name}: No recorded values")
            continue
        summary = " ".join(
            f"P{_number(q * 100)}(nan,{_number(v)})" for q, v in zip(QUANTILES, histogram_quantiles(hist))
        )
        lines.append(f"{name}: {summary}")
    return "".join(line + "\n" for line in lines)


def render_stats_json(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Envoy's `/stats?format=json`: {"stats": [{"name", "value"}, ..., {"histograms": {...}}]}.

    pylon keeps cumulative counts only, so each quantile's `interval` is null.
    """
    scalars = {**stats["counters"], **stats["gauges"]}
    entries: list[dict[str, Any]] = [{"name": name, "value": scalars[name]} for name in sorted(scalars)]
    if stats["histograms"]:
        computed = []
        for name in sorted(stats["histograms"]):
            values = histogram_quantiles(stats["histograms"][name])
            computed.append({
                "name": name,
                "values": [{"cumulative": None if math.isnan(v) else v, "interval": None} for v in values],
            })
        entries.append({"histograms": {
            "supported_quantiles": [q * 100 for q in QUANTILES],
            "computed_quantiles": computed,
        }})
    return {"stats": entries}


def render_server_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """Envoy's ServerInfo JSON from the backend's values; numeric uptimes become "<seconds>s".

    Keys beyond Envoy's (pylon's own details, such as per-worker data) follow them unchanged.
    """

    def duration(value: Any) -> str:
        return value if isinstance(value, str) else f"{int(value)}s"

    envoy_fields = {
        "version": info.get("version", f"pylon/{__version__}"),
        "state": info["state"],
        "hot_restart_version": "disabled",
        "command_line_options": dict(info.get("command_line_options", {})),
        "node": dict(info.get("node", {})),
        "uptime_current_epoch": duration(info.get("uptime_current_epoch", 0)),
        "uptime_all_epochs": duration(info.get("uptime_all_epochs", 0)),
    }
    return {**envoy_fields, **{k: v for k, v in info.items() if k not in envoy_fields}}


def _pretty_json(value: Any) -> bytes:
    return msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n"


# --------------------------------------------------------------------------- request handling


class _Endpoint(NamedTuple):
    help: str
    handler: Callable[[dict[str, list[str]]], Awaitable[AdminResponse]]
    mutates: bool  # Envoy requires POST for endpoints that change server state


class AdminHandler:
    """Maps (method, request target) to a response; no sockets involved."""

    def __init__(self, backend: AdminBackend, allow_paths: Sequence[Callable[[str], bool]] = ()) -> None:
        self._backend = backend
        #: admin.allow_paths, compiled: when any, a target none of them matches is refused before routing
        self._allow_paths = tuple(allow_paths)
        self._background: set[asyncio.Task[None]] = set()
        self._endpoints: dict[str, _Endpoint] = {
            "/": _Endpoint("Admin home page", self._help, False),
            "/clusters": _Endpoint("upstream cluster status", self._clusters, False),
            "/config_dump": _Endpoint("dump current Envoy configs", self._config_dump, False),
            "/healthcheck/fail": _Endpoint("cause the server to fail health checks", self._health_fail, True),
            "/healthcheck/ok": _Endpoint("cause the server to pass health checks", self._health_ok, True),
            "/help": _Endpoint("print out list of admin commands", self._help, False),
            "/quitquitquit": _Endpoint("exit the server", self._quit, True),
            "/ready": _Endpoint("print server state, return 200 if LIVE, otherwise return 503", self._ready, False),
            "/runtime": _Endpoint("print runtime values", self._runtime, False),
            "/runtime_modify": _Endpoint("Adds or modifies runtime values as passed in query parameters. To "
                                         "delete a previously added key, use an empty string as the value.",
                                         self._runtime_modify, True),
            "/server_info": _Endpoint("print server version/status information", self._server_info, False),
            "/stats": _Endpoint("print server stats", self._stats, False),
            "/stats/prometheus": _Endpoint("print server stats in prometheus format", self._prometheus, False),
        }

    def help_text(self) -> str:
        return "admin commands are:\n" + "".join(
            f"  {path}: {endpoint.help}\n" for path, endpoint in sorted(self._endpoints.items())
        )

    async def handle(self, method: str, target: str) -> AdminResponse:
        if self._allow_paths and not any(allowed(target) for allowed in self._allow_paths):
            return AdminResponse(403, f"request to path {target} not allowed".encode())
        parts = urlsplit(target)
        endpoint = self._endpoints.get(parts.path)
        if endpoint is None:
            return AdminResponse(404, ("invalid path. " + self.help_text()).encode())
        if endpoint.mutates and method != "POST":
            return AdminResponse(405, f"Method {method} not allowed, POST required.".encode())
        return await endpoint.handler(parse_qs(parts.query, keep_blank_values=True))

    async def _help(self, query: dict[str, list[str]]) -> AdminResponse:
        return AdminResponse(200, self.help_text().encode())

    async def _ready(self, query: dict[str, list[str]]) -> AdminResponse:
        state = self._backend.server_info()["state"]
        return AdminResponse(200 if self._backend.is_ready() else 503, f"{state}\n".encode())

    async def _health_fail(self, query: dict[str, list[str]]) -> AdminResponse:
        await self._backend.fail_health_check(True)
        return AdminResponse(200, b"OK\n")

    async def _health_ok(self, query: dict[str, list[str]]) -> AdminResponse:
        await self._backend.fail_health_check(False)
        return AdminResponse(200, b"OK\n")

    async def _runtime(self, query: dict[str, list[str]]) -> AdminResponse:
        return AdminResponse(200, _pretty_json(self._backend.runtime()), JSON)

    async def _runtime_modify(self, query: dict[str, list[str]]) -> AdminResponse:
        # Envoy writes to the admin layer here (503 "No admin layer specified" without one). pylon reads
        # its runtime when a process loads the bootstrap, so it cannot change values while running yet.
        return AdminResponse(503, b"runtime values cannot be modified while pylon runs (not supported yet); "
                                  b"set them in a static_layer of the bootstrap's layered_runtime\n")

    async def _server_info(self, query: dict[str, list[str]]) -> AdminResponse:
        return AdminResponse(200, _pretty_json(render_server_info(self._backend.server_info())), JSON)

    async def _config_dump(self, query: dict[str, list[str]]) -> AdminResponse:
        return AdminResponse(200, _pretty_json(redact(msgspec.to_builtins(self._backend.config_dump()))), JSON)

    async def _clusters(self, query: dict[str, list[str]]) -> AdminResponse:
        fmt = query.get("format", ["text"])[-1]
        if fmt != "text":
            return AdminResponse(400, f"/clusters supports format=text only, not {fmt!r}\n".encode())
        return AdminResponse(200, (await self._backend.clusters_text()).encode())

    async def _quit(self, query: dict[str, list[str]]) -> AdminResponse:
        return AdminResponse(200, b"OK\n", after=self._start_quit)

    def _start_quit(self) -> None:
        task = asyncio.ensure_future(self._backend.quit())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _selected(self, query: dict[str, list[str]]) -> dict[str, Any] | AdminResponse:
        """The snapshot narrowed by filter/usedonly/type, or the 400 for a bad parameter."""
        pattern = None
        if "filter" in query:
            try:
                pattern = re2.compile(query["filter"][-1], options=_RE2_OPTIONS)
            except re2.error as exc:
                return AdminResponse(400, f"Invalid re2 regex: {exc}\n".encode())
        stat_type = query.get("type", ["All"])[-1]
        if stat_type not in ("All", "Counters", "Gauges", "Histograms"):
            return AdminResponse(400, b"usage: /stats?type=(All|Counters|Gauges|Histograms)\n")
        snapshot = await self._backend.stats_snapshot()
        return select_stats(snapshot, pattern, "usedonly" in query, stat_type)

    async def _stats(self, query: dict[str, list[str]]) -> AdminResponse:
        fmt = query.get("format", ["text"])[-1]
        if fmt not in ("text", "json", "prometheus"):
            return AdminResponse(400, b"usage: /stats?format=(json|prometheus|text)\n")
        stats = await self._selected(query)
        if isinstance(stats, AdminResponse):
            return stats
        if fmt == "json":
            return AdminResponse(200, msgspec.json.encode(render_stats_json(stats)), JSON)
        if fmt == "prometheus":
            return AdminResponse(200, render_prometheus(stats), PROMETHEUS_CONTENT_TYPE.encode())
        return AdminResponse(200, render_stats_text(stats).encode())

    async def _prometheus(self, query: dict[str, list[str]]) -> AdminResponse:
        return await self._stats({**query, "format": ["prometheus"]})


# --------------------------------------------------------------------------- HTTP/1.1 shell

# Admin requests are small; anything bigger is refused rather than buffered.
MAX_REQUEST_BYTES = 1024 * 1024


class _Request(NamedTuple):
    """One parsed admin request, with what its access-log line needs."""

    method: str
    target: str
    keep_alive: bool
    headers: list[tuple[bytes, bytes]]  # (lower-case name, value) as received
    body_size: int
    http_version: str
    start_time: float  # epoch seconds, when its first byte was parsed
    start: float  # loop time, likewise
    received: float  # loop time when it was complete


class _AdminProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1 over httptools; pipelined requests are answered in order."""

    def __init__(self, handler: AdminHandler, access_loggers: Sequence[AccessLogger] = (),
                 connection_id: int = 0) -> None:
        self._handler = handler
        self._access_loggers = access_loggers
        self._connection_id = connection_id
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer: Any = None
        self._local: Any = None
        self._url = b""
        self._size = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body_size = 0
        self._start_time = 0.0
        self._start = 0.0
        self._pending: deque[_Request] = deque()
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._peer = transport.get_extra_info("peername")
        self._local = transport.get_extra_info("sockname")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400)
        except httptools.HttpParserError:  # includes errors raised by the callbacks below
            self._refuse(413 if self._size > MAX_REQUEST_BYTES else 400)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._size = 0
        self._headers = []
        self._body_size = 0
        self._start_time = time.time()
        self._start = asyncio.get_running_loop().time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value))
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._grow(len(body))
        self._body_size += len(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode()
        self._pending.append(_Request(
            method, self._url.decode("latin-1"), self._parser.should_keep_alive(), self._headers, self._body_size,
            self._parser.get_http_version(), self._start_time, self._start, asyncio.get_running_loop().time()))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve())

    def _grow(self, amount: int) -> None:
        self._size += amount
        if self._size > MAX_REQUEST_BYTES:
            raise ValueError("request too large")

    def _refuse(self, status: int) -> None:
        assert self._transport is not None
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(local_reply(status, f"{HTTPStatus(status).phrase}\n".encode(), close=True))
            self._transport.close()

    async def _serve(self) -> None:
        assert self._transport is not None
        while self._pending:
            request = self._pending.popleft()
            method, keep_alive = request.method, request.keep_alive
            try:
                response = await self._handler.handle(method, request.target)
            except Exception as exc:  # a failing backend must not hang the connection
                response = AdminResponse(500, f"{type(exc).__name__}: {exc}\n".encode())
            if self._transport.is_closing():
                break
            reply = local_reply(
                response.status, response.body, close=not keep_alive, content_type=response.content_type,
                extra=[(b"cache-control", b"no-cache, max-age=0"), (b"x-content-type-options", b"nosniff")],
                head_only=method == "HEAD",
            )
            self._transport.write(reply)
            if self._access_loggers:
                self._log(request, response, reply)
            if response.after is not None:
                response.after()
            if not keep_alive:
                self._transport.close()
                break
        self._task = None


    def _log(self, request: _Request, response: AdminResponse, reply: bytes) -> None:
        """One access-log record for an answered request, to every admin access log."""
        peer_ip = self._peer[0] if isinstance(self._peer, tuple) else None
        headers = [(name, value) for name, value in request.headers
                   if name not in (b"x-forwarded-proto", b"x-envoy-external-address")]
        if peer_ip is not None:
            # What Envoy's admin connection manager (use_remote_address) sets before its admin filter runs.
            entry = forwarded_for_entry(peer_ip).encode()
            xff = [value for name, value in headers if name == b"x-forwarded-for"]
            headers = [(name, value) for name, value in headers if name != b"x-forwarded-for"]
            headers.append((b"x-forwarded-for", b",".join([*xff, entry])))
            headers.append((b"x-envoy-external-address", peer_ip.encode()))
        headers.append((b"x-forwarded-proto", b"http"))
        head = reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
        now = asyncio.get_running_loop().time()
        record = AccessLogRecord(
            request.start_time,
            method=request.method,
            path=request.target,
            scheme="http",
            authority=next((value.decode("latin-1") for name, value in request.headers if name == b"host"), None),
            protocol=f"HTTP/{request.http_version}",
            request_headers=headers,
            response_code=response.status,
            response_code_details="admin_filter_response",
            response_flags="-",
            response_headers=[(name.lower(), value.lstrip()) for name, _, value in
                              (line.partition(b":") for line in head)],
            bytes_received=request.body_size,
            bytes_sent=len(response.body),  # for HEAD too, as Envoy counts it
            duration=(now - request.start) * 1000,
            request_duration=(request.received - request.start) * 1000,
            downstream_remote=self._peer,
            downstream_local=self._local,
            connection_id=self._connection_id,
        )
        for logger in self._access_loggers:
            logger.log(record)


async def start_admin_server(host: str, port: int, backend: AdminBackend,
                             access_loggers: Sequence[AccessLogger] = (),
                             allow_paths: Sequence[Callable[[str], bool]] = ()) -> asyncio.Server:
    """Listen on host:port (port 0 picks one: read it from `server.sockets`); log requests to `access_loggers`;
    serve only the targets one of `allow_paths` matches, when any are given."""
    handler = AdminHandler(backend, allow_paths)
    loop = asyncio.get_running_loop()
    connection_ids = itertools.count()
    return await loop.create_server(lambda: _AdminProtocol(handler, access_loggers, next(connection_ids)), host, port)
