"""envoy.filters.http.lua: Envoy's Lua HTTP filter on a real Lua runtime (LuaJIT 2.1 through lupa).

The script (`default_source_code`, or per route a `LuaPerRoute` naming one of `source_codes` or giving its own
`source_code`; `disabled` skips the filter there) defines `envoy_on_request(request_handle)` and/or
`envoy_on_response(response_handle)`, called with Envoy's stream API (filters/common/lua_prelude.lua): headers()
(get, getAtIndex, getNumValues, add, replace, remove, pairs), body() / bodyChunks() (the body whole: the script
waits for it; setBytes replaces it), trailers(), respond() (request path), httpCall() to a cluster through the
worker's pools (proxy/async_client.py; synchronous on the request path, asynchronous on both), streamInfo()
(protocol, downstream addresses, requestedServerName, dynamicMetadata (the stream's own), downstreamSslConnection
presence), connection():ssl() presence, metadata() (the route's filter_metadata under the filter's name, else under
`envoy.filters.http.lua`), route():metadata() and virtualHost():metadata() (the route's and its virtual host's,
under the filter's name only), timestamp(),
base64Escape(), log*(). Any other API function raises a Lua error naming it. A failing script is logged and counted
(`http.<stat_prefix>.lua.[<stat_prefix>.]errors`; `executions` counts the hooks run), and the request goes on, as in Envoy. As there, headers and body objects die
when the script waits (body, trailers, a synchronous httpCall: "object used outside of proper scope"), a failed
synchronous httpCall hears the async client's local reply (503 / 504 with Envoy's text), an unknown cluster fails the
script, and a body over the connection's buffer limit is answered 413.

As an upstream HTTP filter (`UpstreamLuaFilter`, proxy/filters/upstream.py) the same API runs on each attempt's
request and the upstream's response head, headers only: a script that would wait there (body, trailers, a
synchronous httpCall) fails with a Lua error saying so (Envoy's waits: a departure), and respond() ends the request.

Departures: the request's pseudo-headers :path and :method, and content-length / transfer-encoding (pylon's
framing), cannot be changed (a Lua error says so); :authority / host can. A synchronous httpCall in
envoy_on_response is a Lua error (pylon cannot hold a response head). A header value with CR, LF or NUL (or a
name that is no token) is a Lua error, on the request and the response alike (Envoy refuses the request with a 503,
but writes such a response header as it is). bodyChunks() gives the body whole, as one
chunk. Sandbox: no io, os.execute & co, debug or C modules (lua_runtime.py). Refused by name: `inline_code`
(deprecated, use default_source_code), `clear_route_cache`, LuaPerRoute `filter_context`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec

from pylon.config import registry
from pylon.config.datasource import DataSource, DataSourceError, read_bytes
from pylon.config.envoy import EnvoyStruct, NotSupportedYet
from pylon.config.errors import FieldError
from pylon.extensions.filters.common.lua_runtime import DONE, FAILED, LuaState, RequestHeaders, Run, ScriptError
from pylon.proxy import async_client
from pylon.proxy import local_reply as lr
from pylon.proxy.filters.http import register_filter
from pylon.proxy.filters.upstream import FilterResponse, UpstreamHead, register_upstream_filter
from pylon.proxy.headers import HeaderList
from pylon.proxy.stream_states import RQ_DONE, RS_DONE

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
#: where handle:metadata() looks when the route has no metadata under the filter's own name (Envoy still reads it)
LEGACY_METADATA_KEY = "envoy.filters.http.lua"
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_FIXED_PSEUDO = frozenset({b":path", b":method", b":scheme", b":status"})
#: what a synchronous httpCall hears when the call fails: Envoy's async client answers with its local reply
_FAILED_CALL = {
    "timeout": lr.UPSTREAM_TIMEOUT,
    "no_host": lr.NO_HEALTHY_UPSTREAM,
    "overflow": lr.UPSTREAM_OVERFLOW,
    "reset": lr.UPSTREAM_RESET,
    "connect_failure": lr.CONNECT_FAILURE._replace(body=lr.UPSTREAM_RESET.body.replace(
        b"connection termination", b"remote connection failure")),  # as Envoy 1.40's async client says it
}


def _source(field: str, source: DataSource) -> bytes:
    try:
        return read_bytes(source)
    except DataSourceError as exc:
        raise FieldError(field, str(exc)) from None


def _check_compiles(field: str, code: bytes) -> None:
    """Envoy loads every script when it takes the config: one that does not compile or run is a config error."""
    try:
        LuaState(logging.getLogger(__name__)).load(code, field)
    except ScriptError as exc:
        raise FieldError(field, f"the Lua script does not load: {exc}") from None


class Lua(EnvoyStruct, kw_only=True):
    """extensions.filters.http.lua.v3.Lua."""

    inline_code: NotSupportedYet | None = None
    source_codes: dict[str, DataSource] = msgspec.field(default_factory=dict)
    default_source_code: DataSource | None = None
    stat_prefix: str = ""
    clear_route_cache: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.default_source_code is not None:
            _check_compiles("default_source_code", _source("default_source_code", self.default_source_code))
        for name, source in self.source_codes.items():
            _check_compiles(f"source_codes.{name}", _source(f"source_codes.{name}", source))

    def codes(self) -> tuple[bytes | None, dict[str, bytes]]:
        default = read_bytes(self.default_source_code) if self.default_source_code is not None else None
        return default, {name: read_bytes(source) for name, source in self.source_codes.items()}


class LuaPerRoute(EnvoyStruct, kw_only=True):
    """extensions.filters.http.lua.v3.LuaPerRoute: exactly one of disabled, name, source_code."""

    disabled: bool | None = None
    name: str | None = None
    source_code: DataSource | None = None
    filter_context: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        given = [f for f in ("disabled", "name", "source_code") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("exactly one of disabled, name, source_code must be set (override)")
        if self.disabled is False:
            raise FieldError("disabled", "must be true when set (Envoy's const rule)")
        if self.name is not None and not self.name:
            raise FieldError("name", "must not be empty")
        if self.source_code is not None:
            if self.source_code.inline_string is None:
                raise FieldError("source_code", "only inline_string is allowed here (as in Envoy)")
            _check_compiles("source_code", _source("source_code", self.source_code))


# ---------------------------------------------------------------------------- what a script sees of a stream


class _ResponseHeaders:
    def __init__(self, status: int, headers: HeaderList) -> None:
        self.status, self.headers = status, headers

    def get(self, name: bytes) -> bytes | None:
        values = self.get_all(name)
        return b",".join(values) if values else None

    def get_all(self, name: bytes) -> list[bytes]:
        if name == b":status":
            return [b"%d" % self.status]
        return self.headers.get_all(name)

    def __iter__(self) -> Any:
        return iter([(b":status", b"%d" % self.status), *self.headers])


def _response(headers: list[tuple[bytes, bytes]], body: bytes) -> FilterResponse:
    """What respond() answers: its :status (200-599), its other headers, text/plain unless they say (as Envoy)."""
    status = next((v for n, v in headers if n == b":status"), None)
    if status is None or not status.isdigit() or not 200 <= int(status) < 600:
        raise ValueError("respond() needs a :status header between 200 and 599")
    extra = [(n, v) for n, v in headers if not n.startswith(b":")]
    content_type = next((v for n, v in extra if n == b"content-type"), b"text/plain")
    return FilterResponse(int(status), body, [(n, v) for n, v in extra if n != b"content-type"], "lua_response",
                          content_type)


def _edit_list(headers: HeaderList, op: str, name: bytes, value: bytes) -> None:
    if op == "remove":
        headers.remove(name)
    elif op == "replace":
        headers.set(name, value)
    else:
        headers.add(name, value)


class _Context:
    """One stream's side (request or response) as the running script sees it (lua_runtime.StreamContext)."""

    def __init__(self, lua_filter: "LuaFilter", stream: Any, side: str) -> None:
        self.filter = lua_filter
        self.stream = stream
        self.side = side
        self.run: Run | None = None
        self.status = 0
        self.response: HeaderList | None = None
        self.response_body: bytes | None = None  # the whole response body, once the stream has it
        self.replaced: bytes | None = None

    def header_view(self, which: str) -> Any:
        if which == "request":
            return RequestHeaders(self.stream)
        if which == "response":
            assert self.response is not None
            return _ResponseHeaders(self.status, self.response)
        return self._trailers(which)

    def _trailers(self, which: str) -> HeaderList:
        trailers = self.stream.req_trailers if which == "request_trailers" else self.stream.resp_trailers
        return HeaderList(trailers if trailers is not None else [])

    def header_edit(self, which: str, op: str, name: bytes, value: bytes) -> None:
        if name in _FRAMING:
            raise ValueError(f"changing {name.decode()} is not supported by pylon's Lua filter (pylon frames bodies)")
        if which == "request":
            if name in (b":authority", b"host"):
                if op == "remove":
                    raise ValueError(f"removing {name.decode()} is not supported by pylon's Lua filter")
                self.stream.set_authority(value)
            elif name in _FIXED_PSEUDO:
                raise ValueError(f"changing {name.decode()} is not supported by pylon's Lua filter")
            else:
                self.stream.edit_request_header("set" if op == "replace" else op, name, value)
        elif which == "response":
            if name.startswith(b":"):
                raise ValueError(f"changing {name.decode()} is not supported by pylon's Lua filter")
            assert self.response is not None
            _edit_list(self.response, op, name, value)
        else:
            trailers = self._trailers(which)
            _edit_list(trailers, op, name, value)
            if which == "request_trailers":
                self.stream.req_trailers = trailers.items
            else:
                self.stream.resp_trailers = trailers.items

    def body_state(self) -> str:
        if self.side == "request":
            stream = self.stream
            if not (stream.req_length or stream.req_chunked):
                return "none"
            return "ready" if stream.rq_state == RQ_DONE else "wait"
        if self.response_body is None:
            return "wait"
        return "ready" if self.response_body else "none"

    def body(self) -> bytes:
        if self.replaced is not None:
            return self.replaced
        if self.side == "request":
            return b"".join(self.stream.waiting_body)
        return self.response_body or b""

    def set_body(self, body: bytes) -> None:
        self.replaced = body
        if self.side == "request":
            stream = self.stream
            stream.waiting_body = [body] if body else []
            stream.body_size = len(body)
            if stream.req_trailers is None:
                stream.req_chunked = False
                stream.req_length = len(body)

    def has_trailers(self) -> bool:
        return (self.stream.req_trailers if self.side == "request" else self.stream.resp_trailers) is not None

    def respond(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.stream.respond_from_filter(*_response(headers, body))

    def http_call(self, cluster: bytes, headers: list[tuple[bytes, bytes]], body: bytes, timeout_ms: float,
                  asynchronous: bool) -> None:
        stream = self.stream
        worker = stream.hcm.worker
        name = cluster.decode("latin-1")
        if worker.clusters.get(name) is None:
            raise ValueError(f"http call cluster invalid. Must be configured: {name}")
        pseudo = {n: v for n, v in headers if n.startswith(b":")}
        for needed in (b":method", b":path", b":authority"):
            if needed not in pseudo:
                raise ValueError(f"http call headers must include ':path', ':method' and ':authority' "
                                 f"(missing {needed.decode()})")
        rest = [(n, v) for n, v in headers if not n.startswith(b":")]
        if body:
            rest = [(n, v) for n, v in rest if n != b"content-length"]
        timeout = timeout_ms / 1000

        def ignored(response: async_client.Response | None, reason: str) -> None:
            pass

        if asynchronous:
            async_client.send(worker, name, pseudo[b":method"], pseudo[b":path"], pseudo[b":authority"], rest,
                              body, timeout, ignored)
            return
        call = async_client.send(worker, name, pseudo[b":method"], pseudo[b":path"], pseudo[b":authority"], rest,
                                 body, timeout, self._answered)
        if call is not None:
            stream.on_finish(call.cancel)

    def _answered(self, response: async_client.Response | None, reason: str) -> None:
        if self.stream.rs_state >= RS_DONE or self.run is None:
            return
        if response is None:
            reply = _FAILED_CALL.get(reason, lr.UPSTREAM_RESET)
            body = reply.body
            flat: list[bytes] = [b":status", b"%d" % reply.status, b"content-length", b"%d" % len(body),
                                 b"content-type", b"text/plain"]
        else:
            flat = [b":status", b"%d" % response.status]
            for name, value in response.headers:
                flat += (name, value)
            body = response.body
        self.filter.advance(self, self.run.step(self.filter.state.table(flat), body))

    def info(self, key: str) -> Any:
        conn = self.stream.conn
        if key == "protocol":
            return "HTTP/1.0" if self.stream.http10 else "HTTP/1.1"
        if key == "tls":
            return conn.connection_info().tls
        if key == "sni":
            return conn.connection_info().requested_server_name
        if key == "route":
            route = self.stream.route
            return route.name if route is not None else ""
        if key == "local":
            address = conn.local
        else:
            address = conn.peer
        return f"{address[0]}:{address[1]}" if address else ""

    def dynamic_metadata(self) -> dict[str, dict[str, Any]]:
        return self.stream.dynamic_metadata or {}

    def set_dynamic_metadata(self, namespace: str, values: dict[str, Any]) -> None:
        self.stream.set_dynamic_metadata(namespace, values)

    def metadata(self, which: str) -> dict[str, Any]:
        """The filter's metadata on the route (`handle`: else under `envoy.filters.http.lua`, Envoy's older key;
        `route`: only its own name) or on the route's virtual host (`virtual_host`); empty without a route."""
        route = self.stream.route
        if route is None:
            return {}
        levels = route.virtual_host_metadata if which == "virtual_host" else route.metadata
        name = self.filter.name
        if name in levels:
            return levels[name]
        return levels.get(LEGACY_METADATA_KEY, {}) if which == "handle" else {}


_NOT_IN_REQUEST_LINE = re.compile(rb"[\x00-\x20\x7f]")
_HEADERS_ONLY = ("pylon's Lua filter as an upstream filter sees headers only (bodies, trailers and synchronous "
                 "httpCalls are not supported there)")


class _UpstreamHeaders(RequestHeaders):
    """An attempt's request headers as an upstream Lua script sees them: pseudo-headers first (the Host and path
    the router made), then the router's headers."""

    def __init__(self, head: UpstreamHead, scheme: bytes) -> None:
        self.head, self.scheme = head, scheme

    def _items(self) -> list[tuple[bytes, bytes]]:
        head = self.head
        return [(b":authority", head.authority), (b":path", head.path), (b":method", head.method),
                (b":scheme", self.scheme), *head.headers.items]


class _UpstreamContext(_Context):
    """One attempt's side as an upstream script sees it: the attempt's request (each pseudo-header but :scheme may
    change: the head is made for each attempt), the upstream's response head; what would wait is a Lua error."""

    def __init__(self, lua_filter: "LuaFilter", stream: Any, side: str, head: UpstreamHead | None) -> None:
        super().__init__(lua_filter, stream, side)
        self.head = head
        self.answer: FilterResponse | None = None

    def header_view(self, which: str) -> Any:
        if which == "response":
            return super().header_view(which)
        if which != "request" or self.head is None:
            raise ValueError(_HEADERS_ONLY)
        return _UpstreamHeaders(self.head, self.stream.conn.scheme)

    def header_edit(self, which: str, op: str, name: bytes, value: bytes) -> None:
        if which != "request":
            return super().header_edit(which, op, name, value)
        if name in _FRAMING:
            raise ValueError(f"changing {name.decode()} is not supported by pylon's Lua filter (pylon frames bodies)")
        head = self.head
        assert head is not None  # the request side has one
        if name in (b":authority", b"host", b":path", b":method"):
            if op == "remove" or not value:
                raise ValueError(f"removing {name.decode()} is not supported by pylon's Lua filter")
            if _NOT_IN_REQUEST_LINE.search(value):  # it goes into the request line (or Host) as it is
                raise ValueError(f"invalid header value for: {name.decode()}")
            if name == b":path":
                head.path = value
            elif name == b":method":
                head.method = value
            else:
                head.authority = value
        elif name.startswith(b":"):
            raise ValueError(f"changing {name.decode()} is not supported by pylon's Lua filter")
        else:
            _edit_list(head.headers, op, name, value)

    def body_state(self) -> str:
        raise ValueError(_HEADERS_ONLY)

    def has_trailers(self) -> bool:
        raise ValueError(_HEADERS_ONLY)

    def respond(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.answer = _response(headers, body)

    def http_call(self, cluster: bytes, headers: list[tuple[bytes, bytes]], body: bytes, timeout_ms: float,
                  asynchronous: bool) -> None:
        if not asynchronous:
            raise ValueError(_HEADERS_ONLY)
        super().http_call(cluster, headers, body, timeout_ms, asynchronous)


# ---------------------------------------------------------------------------- the filter


class LuaFilter:
    """One HCM's Lua filter in one worker: its Lua state and the scripts loaded into it."""

    def __init__(self, name: str, config: Lua, stat_prefix: str, stats: Any, loop: Any) -> None:
        self._setup(name, config, f"http.{stat_prefix}.", stats)

    def _setup(self, name: str, config: Lua, scope: str, stats: Any) -> None:
        self.name = name
        self.log = logging.getLogger(f"pylon.filters.lua.{name}")
        self.state = LuaState(self.log)
        default, named = config.codes()
        self.default = self._load(default, "default_source_code") if default is not None else None
        self.named = {key: self._load(code, f"source_codes.{key}") for key, code in named.items()}
        self.per_route: dict[bytes, dict[bytes, Any]] = {}  # inline per-route scripts, by their text
        prefix = f"{scope}lua." + (f"{config.stat_prefix}." if config.stat_prefix else "")
        self.errors = stats.counter(prefix + "errors")
        self.executions = stats.counter(prefix + "executions")
        self.waiting: dict[Any, _Context] = {}  # streams whose envoy_on_response waits for the whole body

    def _load(self, code: bytes, name: str) -> dict[bytes, Any]:
        """A script's hooks (`envoy_on_request`, `envoy_on_response`: Lua functions or None), looked up once."""
        env = self.state.load(code, name)
        return {hook: env[hook] for hook in (b"envoy_on_request", b"envoy_on_response")}

    def _script(self, stream: Any) -> dict[bytes, Any] | None:
        per_route = stream.route.filter_config(self.name) if stream.route is not None else None
        if not isinstance(per_route, LuaPerRoute):
            return self.default
        if per_route.disabled:
            return None
        if per_route.name is not None:
            return self.named.get(per_route.name)  # Envoy: an unknown name runs nothing
        code = read_bytes(per_route.source_code)  # type: ignore[arg-type]  # one of the three is set
        hooks = self.per_route.get(code)
        if hooks is None:
            hooks = self.per_route[code] = self._load(code, "source_code")
        return hooks

    def _start(self, stream: Any, side: str, hook: bytes, status: int = 0,
               headers: HeaderList | None = None, upstream: bool = False,
               head: UpstreamHead | None = None) -> _Context | None:
        """Run the script's `hook` for this stream until it ends or waits (None: no such hook here); `upstream`:
        in an upstream chain, where `head` is the attempt's request (request side)."""
        hooks = self._script(stream)
        function = hooks[hook] if hooks is not None else None
        if function is None:
            return None
        self.executions.inc()
        context = _UpstreamContext(self, stream, side, head) if upstream else _Context(self, stream, side)
        context.status, context.response = status, headers
        context.run = self.state.start(function, context, side)
        return context

    # ------------------------------------------------------------------ request path
    def decode_headers(self, stream: Any) -> bool:
        context = self._start(stream, "request", b"envoy_on_request")
        if context is None:
            return True
        run = context.run
        assert run is not None
        if run.what != DONE and run.what != FAILED:
            stream.on_finish(run.finish)  # the script waits: let go of it however the stream ends
        return self.advance(context, run.what, in_headers=True)

    def advance(self, context: _Context, what: str, in_headers: bool = False) -> bool:
        """The script stopped at `what`: wait for it, or let the stream go on (True if it may go on now)."""
        stream = context.stream
        if what == FAILED:
            self.errors.inc()
            self.log.error("script error: %s", context.run.error if context.run else "")
        if what in (DONE, FAILED):
            context.run = None
            if context.side == "request" and not in_headers and stream.rs_state < RS_DONE:
                stream.continue_decoding()
            return True
        if what == "body" and context.side == "request":
            stream.body_watch = lambda: self._request_body(context)
        elif what == "body":
            self.waiting[stream] = context
            stream.on_finish(lambda: self._forget(stream))
        return False  # "http": the answer resumes it; "respond": answered

    def _request_body(self, context: _Context) -> None:
        stream = context.stream
        if stream.body_size > stream.hcm.buffer_limit:
            stream.body_watch = None
            stream.hcm.rq_too_large.value += 1
            stream.local(lr.PAYLOAD_TOO_LARGE)
            return
        if stream.rq_state != RQ_DONE or context.run is None:
            return
        stream.body_watch = None
        self.advance(context, context.run.step(b"ready"))

    # ------------------------------------------------------------------ response path
    def encode_headers(self, stream: Any, status: int, headers: HeaderList) -> None:
        context = self._start(stream, "response", b"envoy_on_response", status, headers)
        if context is None:
            return
        assert context.run is not None
        self.advance(context, context.run.what)

    def _forget(self, stream: Any) -> None:
        context = self.waiting.pop(stream, None)
        if context is not None and context.run is not None:
            context.run.finish()

    def wants_response_body(self, stream: Any) -> bool:
        return stream in self.waiting

    def encode_body(self, stream: Any, status: int, headers: HeaderList, body: bytes) -> bytes | None:
        context = self.waiting.pop(stream, None)
        if context is None or context.run is None:
            return None
        context.response, context.response_body = headers, body
        self.advance(context, context.run.step(b"ready" if body else b"none"))
        if context.run is not None:  # waits again (a synchronous call is refused here): nothing more can come
            context.run.finish()
        return context.replaced


class UpstreamLuaFilter(LuaFilter):
    """The filter as an upstream HTTP filter: `envoy_on_request` on each attempt's request (run again for a retry,
    the Lua state's globals kept, as Envoy's per-worker state), `envoy_on_response` on the upstream's response head
    before the router reads it; a respond() ends the request with that response, unretried (Envoy 1.40,
    observed). Headers only: a script that would wait (body, trailers, a synchronous httpCall) fails there, logged
    and counted, and the request goes on. Stats under the chain's scope (`cluster.<name>.lua.*` for a cluster's)."""

    def __init__(self, name: str, config: Lua, scope: str, stats: Any) -> None:
        self._setup(name, config, scope, stats)

    def upstream_request(self, stream: Any, head: UpstreamHead) -> FilterResponse | None:
        context = self._start(stream, "request", b"envoy_on_request", upstream=True, head=head)
        if context is None:
            return None
        self._ended(context)
        return context.answer  # type: ignore[attr-defined]

    def upstream_response(self, stream: Any, status: int, headers: HeaderList) -> None:
        context = self._start(stream, "response", b"envoy_on_response", status, headers, upstream=True)
        if context is not None:
            self._ended(context)

    def _ended(self, context: _Context) -> None:
        """The script ran to its end, failed, or answered (respond(): it waits no more upstream)."""
        run = context.run
        assert run is not None
        if run.what == FAILED:
            self.errors.inc()
            self.log.error("script error: %s", run.error)
        elif run.what != DONE:
            run.finish()
        context.run = None


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, Lua)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, LuaPerRoute)
register_filter(Lua, LuaFilter)
registry.register_typed(registry.UPSTREAM_HTTP_FILTER, TYPE_URL, Lua)
register_upstream_filter(Lua, UpstreamLuaFilter)
