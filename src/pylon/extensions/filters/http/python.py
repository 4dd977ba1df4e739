"""pylon.filters.http.python: an HTTP filter written in plain Python, in a file the config names.

Envoy extends its HTTP path with Lua or Wasm; pylon is Python, so a filter can
be a few lines of Python with nothing to compile. The file defines either or
both of:

    def on_request(request): ...        # request headers are in; the route is chosen
    def on_request_body(request): ...   # the whole request body is in: request.body
    def on_response(response): ...      # the response head is about to go out
    def on_response_body(response): ... # the whole response is in: response.body
    def on_request_data(request): ...   # each request body piece as it passes: request.data
    def on_response_data(response): ... # each response body piece as it passes: response.data
    def on_request_trailers(request): ...   # the request's trailers: request.trailers
    def on_response_trailers(response): ... # the response's trailers: response.trailers

`request.method`, `.path`, `.authority` (str); `request.headers` and
`response.headers` read and change headers (`get`, `get_all`, `set`, `add`,
`remove`, `items`; names are case-insensitive, values str); `response.status`;
`request.respond(status, body="", headers=None)` answers locally (the upstream
is never asked; `on_response` still sees the reply, as Envoy's encoders see
local replies); `request.connection` is the downstream connection's facts
(peer certificate SANs, SNI, addresses: `proxy/connection_info.py`);
`request.config` / `response.config` is the filter's `config` object from the
Envoy config; `request.log` / `response.log` a logger named after the filter.

The route was chosen before filters run (as with Envoy's Lua filter): changing
a request header does not re-route. Headers the connection manager sets
itself (host, x-forwarded-*, x-request-id, x-envoy-*, content-length,
transfer-encoding, connection) cannot be changed here (ValueError): the
proxy's own framing and trust decisions stay its own. Nor can a header be
written that is no token or holds CR, LF or NUL (ValueError, as Lua's): the
codec would split it into headers of the script's, or the client's, making.

An exception in `on_request` answers 500 (fail closed; `python.errors`); in
`on_response` it is logged and counted and the response goes on unchanged.
The file is checked every `check_interval` (1 s; 0: never) and reloaded when
it changed; a file that no longer loads keeps the old code running
(`python.reload_failed`, logged). Stats: `http.<stat_prefix>.python.{errors,
reloaded, reload_failed, local_replies}`.

Bodies: a file that defines `on_request_body` makes the proxy wait for the
whole request body (requests that have one) before routing it upstream;
`request.body` is its bytes, and assigning bytes (or str, sent as UTF-8)
replaces it — it then goes upstream with a content-length. `on_response_body`
does the same for responses (upstream ones and local replies, not HEAD, 204 or
304): `response.body` replaces, `response.headers` may still change, since
nothing has been sent. A body bigger than the connection's buffer limit
(`per_connection_buffer_limit_bytes`) is answered 413 (request) or 500
(response), as Envoy's buffering filters answer, counted in
`http.<stat_prefix>.downstream_rq_too_large` / `rs_too_large`. Buffering
costs latency and memory: define a body hook only when it is needed. An
exception in `on_request_body` answers 500; in `on_response_body` the
response goes on unchanged.

Streams: `on_request_data` / `on_response_data` see each body piece as it
passes, without holding the body (`.data`, bytes; assign bytes or str to
replace it, b"" to drop it; `.end_stream` is True on the last call, which may
carry no bytes - the place to append a tail). The pieces may change size, so
a request or response such a hook sees goes without its content-length
(chunked). They run before the whole-body hooks. An exception in
`on_request_data` fails the request (500 if nothing was answered yet, else a
reset); in `on_response_data` the piece goes on unchanged.

Trailers: where a message has them (HTTP/1.1 trailers after a chunked body,
carried with `enable_trailers` on the connection manager and the cluster),
`on_request_trailers` / `on_response_trailers` see them as `.trailers`, with
the headers' methods; changes are what is sent. They run once the message is
complete, so the request has mostly gone upstream already: an exception in
either is logged and counted and the trailers go on unchanged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pylon.config import registry
from pylon.config.envoy import Duration, EnvoyStruct, NonEmptyStr
from pylon.config.errors import FieldError
from pylon.proxy import local_reply as lr
from pylon.proxy.filters.http import register_filter
from pylon.proxy.headers import HeaderList, check_scripted_header

TYPE_URL = "type.googleapis.com/pylon.filters.http.v1.Python"
HOOKS = ("on_request", "on_request_body", "on_response", "on_response_body", "on_request_data", "on_response_data",
         "on_request_trailers", "on_response_trailers")

#: What filters may not touch: the connection manager's own framing, routing inputs and trust headers.
_PROTECTED = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"x-forwarded-for",
                        b"x-forwarded-proto", b"x-forwarded-client-cert", b"x-request-id", b"upgrade", b"te"})


class PythonFilterConfig(EnvoyStruct, kw_only=True):
    """pylon.filters.http.v1.Python: the file of the filter's code, and what it is given."""

    path: NonEmptyStr
    config: dict[str, Any] = {}
    check_interval: Duration = Duration(1)

    def __post_init__(self) -> None:
        try:
            load_hooks(self.path)
        except ScriptError as exc:
            raise FieldError("path", str(exc)) from None


class ScriptError(Exception):
    """The filter's file cannot be read or run, or defines no hook."""


@dataclass(frozen=True)
class Hooks:
    on_request: Callable[[Any], Any] | None
    on_request_body: Callable[[Any], Any] | None
    on_response: Callable[[Any], Any] | None
    on_response_body: Callable[[Any], Any] | None
    on_request_data: Callable[[Any], Any] | None
    on_response_data: Callable[[Any], Any] | None
    on_request_trailers: Callable[[Any], Any] | None
    on_response_trailers: Callable[[Any], Any] | None
    stamp: tuple[int, int]  # the file's (mtime_ns, size) when loaded


def _stamp(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_mtime_ns, info.st_size


def load_hooks(path: str) -> Hooks:
    """Run the file as a module of its own and take its hooks; ScriptError says what is wrong."""
    try:
        stamp = _stamp(path)
        source = Path(path).read_text()
    except OSError as exc:
        raise ScriptError(f"cannot read {path}: {exc.strerror or exc}") from None
    namespace: dict[str, Any] = {"__name__": f"pylon_filter:{path}", "__file__": path}
    try:
        exec(compile(source, path, "exec"), namespace)
    except Exception as exc:  # the user's module: any error it raises is its own
        raise ScriptError(f"{path} does not load: {type(exc).__name__}: {exc}") from None
    hooks = {name: namespace[name] if callable(namespace.get(name)) else None for name in HOOKS}
    if not any(hooks.values()):
        raise ScriptError(f"{path} defines none of " + ", ".join(f"{name}()" for name in HOOKS))
    return Hooks(**hooks, stamp=stamp)


def _name(name: str) -> bytes:
    encoded = name.lower().encode("latin-1")
    if encoded in _PROTECTED or encoded.startswith(b"x-envoy-"):
        raise ValueError(f"header {name!r} is the connection manager's own and cannot be changed by a filter")
    return encoded


def _written(name: str, value: str) -> tuple[bytes, bytes]:
    """The header as the codec will write it; a CR/LF in it would write headers of the script's making."""
    encoded_name, encoded_value = _name(name), value.encode("latin-1")
    check_scripted_header(encoded_name, encoded_value)
    return encoded_name, encoded_value


class _Headers:
    """Headers as str, changed through `apply(op, name, value)`."""

    def __init__(self, read: Callable[[], HeaderList], apply: Callable[[str, bytes, bytes], None]) -> None:
        self._read, self._apply = read, apply

    def get(self, name: str) -> str | None:
        value = self._read().get(name.lower().encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    def get_all(self, name: str) -> list[str]:
        return [v.decode("latin-1") for v in self._read().get_all(name.lower().encode("latin-1"))]

    def items(self) -> list[tuple[str, str]]:
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._read()]

    def set(self, name: str, value: str) -> None:
        self._apply("set", *_written(name, value))

    def add(self, name: str, value: str) -> None:
        self._apply("add", *_written(name, value))

    def remove(self, name: str) -> None:
        self._apply("remove", _name(name), b"")


def _editable(headers: HeaderList) -> _Headers:
    """A `_Headers` view that changes `headers` itself."""

    def apply(op: str, name: bytes, value: bytes) -> None:
        if op == "remove":
            headers.remove(name)
        else:
            getattr(headers, op)(name, value)

    return _Headers(lambda: headers, apply)


class Request:
    """What `on_request` gets: one request, its headers, its connection."""

    def __init__(self, stream: Any, runtime: "PythonFilter") -> None:
        self._stream = stream
        self._runtime = runtime
        self.headers = _Headers(lambda: HeaderList(stream.headers), stream.edit_request_header)
        self.config = runtime.config.config
        self.log = runtime.log
        self.responded = False
        self.body: bytes | str | None = None  # the whole body, in on_request_body only
        self.data: bytes | str = b""  # one body piece, in on_request_data only
        self.end_stream = False  # ... and whether it is the last
        self.trailers: _Headers | None = None  # in on_request_trailers only

    @property
    def method(self) -> str:
        return self._stream.method.decode("latin-1")

    @property
    def path(self) -> str:
        return self._stream.path.decode("latin-1")

    @property
    def authority(self) -> str:
        return self._stream.authority.decode("latin-1")

    @property
    def connection(self) -> Any:
        return self._stream.conn.connection_info()

    def respond(self, status: int, body: str | bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Answer locally; the upstream is never asked."""
        self.responded = True
        payload = body.encode() if isinstance(body, str) else body
        extra = [(_name(k), v.encode("latin-1")) for k, v in (headers or {}).items()]
        self._runtime.local_replies.inc()
        self._stream.respond_from_filter(status, payload, extra)


class Response:
    """What `on_response` gets: the response head about to go out."""

    def __init__(self, status: int, headers: HeaderList, runtime: "PythonFilter") -> None:
        self.status = status
        self.headers = _editable(headers)
        self.config = runtime.config.config
        self.log = runtime.log
        self.body: bytes | str | None = None  # the whole body, in on_response_body only
        self.data: bytes | str = b""  # one body piece, in on_response_data only
        self.end_stream = False  # ... and whether it is the last
        self.trailers: _Headers | None = None  # in on_response_trailers only


class PythonFilter:
    """One configured Python filter in one worker: its hooks, kept current with its file."""

    def __init__(self, name: str, config: PythonFilterConfig, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.config = config
        self.log = logging.getLogger(f"pylon.filters.python.{name}")
        self.hooks = load_hooks(config.path)
        self.failed_stamp: tuple[int, int] | None = None  # the version of the file that did not load
        prefix = f"http.{stat_prefix}.python."
        self.errors = stats.counter(prefix + "errors")
        self.reloaded = stats.counter(prefix + "reloaded")
        self.reload_failed = stats.counter(prefix + "reload_failed")
        self.local_replies = stats.counter(prefix + "local_replies")
        self.loop = loop
        if config.check_interval > 0 and loop is not None:  # None: built only to validate the config
            loop.call_later(float(config.check_interval), self._check_file)

    def _check_file(self) -> None:
        try:
            stamp: tuple[int, int] | None = _stamp(self.config.path)
        except OSError:
            stamp = None  # gone for now: keep running what was loaded
        if stamp is not None and stamp != self.hooks.stamp and stamp != self.failed_stamp:
            try:
                self.hooks = load_hooks(self.config.path)
                self.reloaded.inc()
                self.log.info("reloaded %s", self.config.path)
            except ScriptError as exc:
                self.failed_stamp = stamp  # tried once; the next change of the file is tried again
                self.reload_failed.inc()
                self.log.error("%s; the previous code keeps running", exc)
        self.loop.call_later(float(self.config.check_interval), self._check_file)

    def decode_headers(self, stream: Any) -> bool:
        hook = self.hooks.on_request
        if hook is None:
            return True
        request = Request(stream, self)
        return self._run_request_hook("on_request", hook, request, stream) and not request.responded

    def wants_request_body(self, stream: Any) -> bool:
        return self.hooks.on_request_body is not None

    def decode_body(self, stream: Any, body: bytes) -> bytes | None:
        """The whole request body through `on_request_body`: its replacement, or None when unchanged or answered."""
        hook = self.hooks.on_request_body
        if hook is None:
            return None
        request = Request(stream, self)
        request.body = body

        def run(req: Request) -> None:
            hook(req)
            req.body = _body_bytes(req.body)

        if not self._run_request_hook("on_request_body", run, request, stream) or request.responded:
            return None
        return request.body  # type: ignore[return-value]  # bytes, by run()

    def _run_request_hook(self, label: str, hook: Callable[[Any], Any], request: "Request", stream: Any) -> bool:
        """Call a request hook; if it raises, the request fails closed (500). True when it returned."""
        try:
            hook(request)
        except Exception:  # the user's code: whatever it raises fails this request, not the proxy
            self.errors.inc()
            self.log.exception("%s failed: answering 500", label)
            if not request.responded:
                stream.local(lr.LocalReply(500, "-", b"python filter error", "python_filter_error"))
            return False
        return True

    def wants_request_data(self, stream: Any) -> bool:
        return self.hooks.on_request_data is not None

    def decode_data(self, stream: Any, data: bytes, end_stream: bool) -> bytes:
        """One request body piece through `on_request_data`: its replacement (b"" once the request failed)."""
        hook = self.hooks.on_request_data
        if hook is None:  # the file changed since the stream asked: pass the rest through
            return data
        request = Request(stream, self)
        request.data, request.end_stream = data, end_stream

        def run(req: Request) -> None:
            hook(req)
            req.data = _body_bytes(req.data)

        if not self._run_request_hook("on_request_data", run, request, stream) or request.responded:
            return b""
        return request.data  # type: ignore[return-value]  # bytes, by run()

    def wants_response_data(self, stream: Any) -> bool:
        return self.hooks.on_response_data is not None

    def encode_data(self, stream: Any, data: bytes, end_stream: bool) -> bytes:
        """One response body piece through `on_response_data`: its replacement, or the piece if the hook fails."""
        hook = self.hooks.on_response_data
        if hook is None:
            return data
        response = Response(stream.status, HeaderList([]), self)
        response.data, response.end_stream = data, end_stream
        try:
            hook(response)
            return _body_bytes(response.data)
        except Exception:  # the user's code: this piece goes on unchanged
            self.errors.inc()
            self.log.exception("on_response_data failed: the piece goes on unchanged")
            return data

    def wants_response_body(self, stream: Any) -> bool:
        return self.hooks.on_response_body is not None

    def encode_body(self, stream: Any, status: int, headers: HeaderList, body: bytes) -> bytes | None:
        """The whole response body through `on_response_body`: its replacement (headers changed in place)."""
        hook = self.hooks.on_response_body
        if hook is None:
            return None
        working = HeaderList(list(headers.items))  # changed only if the hook returns
        response = Response(status, working, self)
        response.body = body
        try:
            hook(response)
            replaced = _body_bytes(response.body)
        except Exception:  # the user's code: the response goes on unchanged
            self.errors.inc()
            self.log.exception("on_response_body failed: the response goes on unchanged")
            return None
        headers.items = working.items
        return replaced

    def encode_headers(self, stream: Any, status: int, headers: HeaderList) -> None:
        hook = self.hooks.on_response
        if hook is None:
            return
        working = HeaderList(list(headers.items))  # changed only if the hook returns
        try:
            hook(Response(status, working, self))
        except Exception:  # the user's code: the response goes on unchanged
            self.errors.inc()
            self.log.exception("on_response failed: the response goes on unchanged")
            return
        headers.items = working.items


    def decode_trailers(self, stream: Any, trailers: list[tuple[bytes, bytes]]) -> None:
        hook = self.hooks.on_request_trailers
        if hook is not None:
            request = Request(stream, self)
            self._run_trailer_hook("on_request_trailers", hook, request, trailers)

    def encode_trailers(self, stream: Any, trailers: list[tuple[bytes, bytes]]) -> None:
        hook = self.hooks.on_response_trailers
        if hook is not None:
            self._run_trailer_hook("on_response_trailers", hook, Response(stream.status, HeaderList([]), self),
                                   trailers)  # fmt: skip

    def _run_trailer_hook(self, label: str, hook: Callable[[Any], Any], message: "Request | Response",
                          trailers: list[tuple[bytes, bytes]]) -> None:  # fmt: skip
        """Call a trailer hook on a copy of `trailers`; if it returns, the copy replaces them in place."""
        working = HeaderList(list(trailers))
        message.trailers = _editable(working)
        try:
            hook(message)
        except Exception:  # the user's code: the trailers go on unchanged
            self.errors.inc()
            self.log.exception("%s failed: the trailers go on unchanged", label)
            return
        trailers[:] = working.items


def _body_bytes(body: object) -> bytes:
    """What a hook left in `.body`, as bytes; anything else is the hook's error."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    raise TypeError(f"body must be bytes or str, not {type(body).__name__}")


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, PythonFilterConfig)
register_filter(PythonFilterConfig, PythonFilter)
