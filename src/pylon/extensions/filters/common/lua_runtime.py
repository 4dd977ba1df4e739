"""A sandboxed Lua state with Envoy's Lua stream API, on lupa (LuaJIT 2.1, the Lua Envoy embeds).

One `LuaState` per filter (or cluster specifier) per worker, as Envoy keeps one Lua state per worker thread. Each
script runs in its own global table over the shared, locked-down standard library, so a per-route script's
`envoy_on_request` never replaces the filter's. What a script may reach is Lua's own libraries without file or
process access (`io`, `os.execute`/`remove`/`rename`/`exit`/`tmpname`, `dofile`, `loadfile`, `debug`, C modules:
gone; `require` loads Lua files from `package.path` as Envoy's examples do) and the handles of
`lua_prelude.lua`. Python is never reachable: lupa's `python` module is not registered, and the bridge functions
the prelude calls are opaque (every attribute access on a Python object from Lua is refused).

A stream's script runs as a Lua coroutine: `run()` starts it and says what it waits for ("body", "http",
"respond") or that it ended; `resume()` goes on with the awaited value. Sans-IO: the filter owns the waiting.
"""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from typing import Any, Callable, Protocol

try:
    from lupa import luajit21 as lupa_impl
except ImportError:  # a lupa build without LuaJIT: Lua 5.1 has the same language
    from lupa import lua51 as lupa_impl  # type: ignore[no-redef]

from pylon.proxy.headers import check_scripted_header  # noqa: E402

LuaError = lupa_impl.LuaError
PRELUDE = (Path(__file__).parent / "lua_prelude.lua").read_bytes()

_SANDBOX = b"""
python = nil; io = nil; dofile = nil; loadfile = nil; debug = nil; module = nil
local os_ = os
os = {time = os_.time, clock = os_.clock, date = os_.date, difftime = os_.difftime, getenv = os_.getenv}
package.loadlib = nil; package.cpath = ""
if package.loaders then package.loaders[3] = nil; package.loaders[4] = nil end
if package.searchers then package.searchers[3] = nil; package.searchers[4] = nil end
"""

_LEVELS = (5, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)


class ScriptError(Exception):
    """A script does not compile or its top level fails."""


class StreamContext(Protocol):
    """What the bridge asks of one stream (the filter's side of a running script)."""

    def header_view(self, which: str) -> Any: ...  # get / get_all and iteration over (name, value) bytes

    def header_edit(self, which: str, op: str, name: bytes, value: bytes) -> None: ...

    def body_state(self) -> str: ...  # "wait", "none" or "ready"

    def body(self) -> bytes: ...

    def set_body(self, body: bytes) -> None: ...

    def has_trailers(self) -> bool: ...

    def respond(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None: ...

    def http_call(self, cluster: bytes, headers: list[tuple[bytes, bytes]], body: bytes, timeout_ms: float,
                  asynchronous: bool) -> None: ...

    def info(self, key: str) -> Any: ...

    def metadata(self, which: str) -> dict[str, Any]: ...  # "handle", "route" or "virtual_host": a Struct's fields

    def dynamic_metadata(self) -> dict[str, dict[str, Any]]: ...  # the stream's, namespace -> fields (a snapshot)

    def set_dynamic_metadata(self, namespace: str, values: dict[str, Any]) -> None: ...  # merged, fields replaced


def _deny_attributes(obj: Any, name: Any, setting: bool) -> Any:
    raise AttributeError("Python objects are opaque to Lua scripts")


def _pairs(flat: Any) -> list[tuple[bytes, bytes]]:
    """A Lua array {name, value, name, value, ...} as header pairs, names lower-cased."""
    items = [flat[i] for i in range(1, len(flat) + 1)]
    return [(bytes(items[i]).lower(), bytes(items[i + 1])) for i in range(0, len(items) - 1, 2)]


class RequestHeaders:
    """The request headers as Envoy's Lua sees them: pseudo-headers first, Host as :authority."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def _items(self) -> list[tuple[bytes, bytes]]:
        s = self.stream
        return [(b":authority", s.authority), (b":path", s.path), (b":method", s.method),
                (b":scheme", s.conn.scheme), *[(n, v) for n, v in s.headers if n != b"host"]]

    def get(self, name: bytes) -> bytes | None:
        values = self.get_all(name)
        return b",".join(values) if values else None

    def get_all(self, name: bytes) -> list[bytes]:
        if name == b"host":
            name = b":authority"
        return [v for n, v in self._items() if n == name]

    def __iter__(self) -> Any:
        return iter(self._items())


class LuaState:
    """One Lua state: the sandbox, the API's handles, the scripts loaded into it and the streams running."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.lua = lupa_impl.LuaRuntime(encoding=None, register_eval=False, register_builtins=False,
                                        unpack_returned_tuples=True, attribute_filter=_deny_attributes)
        self.streams: dict[int, StreamContext] = {}
        self._next_id = 0
        api = self.lua.execute(PRELUDE, self.lua.table_from(self._bridge()))
        self.lua.execute(_SANDBOX)
        self.lua.globals()[b"pairs"] = api[b"pairs"]
        self._start = api[b"start"]
        self.resume = api[b"resume"]
        self._env_of = self.lua.eval(b"""function(g) return setmetatable({}, {__index = g}) end""")
        self._load = self.lua.eval(b"""function(source, name, env)
            local chunk, err = loadstring(source, name)
            if chunk == nil then return false, err end
            setfenv(chunk, env)
            local ok, failure = pcall(chunk)
            if not ok then return false, tostring(failure) end
            return true, env
        end""")

    def load(self, source: bytes, name: str) -> Any:
        """Run a script's top level in a global table of its own; that table (its `envoy_on_*` functions)."""
        ok, env = self._load(source, b"=" + name.encode(), self._env_of(self.lua.globals()))
        if not ok:
            raise ScriptError(env.decode(errors="replace") if isinstance(env, bytes) else str(env))
        return env

    # ------------------------------------------------------------------ one stream's script
    def start(self, function: Any, context: StreamContext, side: str) -> "Run":
        """Call `function(handle)` as a coroutine; `Run.what` says where it stopped (DONE, FAILED or a wait)."""
        self._next_id += 1
        sid = self._next_id
        self.streams[sid] = context
        run = Run(self, sid)
        run.settle(self._start(function, sid, side.encode()))
        return run

    def table(self, values: list[Any]) -> Any:
        return self.lua.table_from(values)

    # ------------------------------------------------------------------ what the prelude calls
    def _bridge(self) -> dict[bytes, Callable[..., Any]]:
        streams = self.streams
        table = self.lua.table_from

        def header_get(sid: int, which: bytes, name: bytes) -> bytes | None:
            return streams[sid].header_view(which.decode()).get(bytes(name).lower())

        def header_at(sid: int, which: bytes, name: bytes, index: int) -> bytes | None:
            values = streams[sid].header_view(which.decode()).get_all(bytes(name).lower())
            return values[index] if 0 <= index < len(values) else None

        def header_count(sid: int, which: bytes, name: bytes) -> int:
            return len(streams[sid].header_view(which.decode()).get_all(bytes(name).lower()))

        def header_list(sid: int, which: bytes) -> Any:
            flat: list[bytes] = []
            for name, value in streams[sid].header_view(which.decode()):
                flat += (name, value)
            return table(flat)

        def header_edit(sid: int, which: bytes, op: bytes, name: bytes, value: bytes) -> None:
            name, value = bytes(name).lower(), bytes(value)
            check_scripted_header(name, value)
            streams[sid].header_edit(which.decode(), op.decode(), name, value)

        def body_state(sid: int) -> bytes:
            return streams[sid].body_state().encode()

        def body_length(sid: int) -> int:
            return len(streams[sid].body())

        def body_bytes(sid: int, index: int, length: int) -> bytes:
            body = streams[sid].body()
            if index < 0 or length < 0 or index + length > len(body):
                raise IndexError("getBytes() index out of range")
            return body[index:index + length]

        def body_set(sid: int, data: bytes) -> None:
            streams[sid].set_body(bytes(data))

        def has_trailers(sid: int) -> bool:
            return streams[sid].has_trailers()

        def respond(sid: int, flat: Any, body: bytes) -> None:
            streams[sid].respond(_pairs(flat), bytes(body))

        def http_call(sid: int, cluster: bytes, flat: Any, body: bytes, timeout_ms: float, asynchronous: bool) -> None:
            streams[sid].http_call(bytes(cluster), _pairs(flat), bytes(body), float(timeout_ms), bool(asynchronous))

        def info(sid: int, key: bytes) -> Any:
            value = streams[sid].info(key.decode())
            return value.encode() if isinstance(value, str) else value

        def lua_value(value: Any) -> Any:
            """A google.protobuf.Value as Envoy's Lua filter pushes it (MetadataMapHelper::setValue)."""
            if isinstance(value, str):
                return value.encode()
            if value is None or isinstance(value, bool):
                return value
            if isinstance(value, (int, float)):
                return float(value)  # protobuf's Value holds doubles
            if isinstance(value, list):
                return table([lua_value(item) for item in value])
            return table({key.encode(): lua_value(item) for key, item in value.items()})

        def metadata(sid: int, which: bytes) -> Any:
            return lua_value(streams[sid].metadata(which.decode()))

        def python_value(value: Any) -> Any:
            """A Lua value as the protobuf Value Envoy's Lua filter makes of it (strings, doubles, booleans, nil;
            a table with keys 1..n a list, another a struct of its string keys)."""
            if isinstance(value, bytes):
                return value.decode("utf-8", "surrogateescape")
            if value is None or isinstance(value, (bool, float, int)):
                return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
            if lupa_impl.lua_type(value) != "table":
                raise TypeError(f"a {lupa_impl.lua_type(value)} cannot be metadata")
            items = dict(value.items())
            if items and all(isinstance(k, (int, float)) for k in items) and \
                    sorted(items) == list(range(1, len(items) + 1)):
                return [python_value(items[i]) for i in range(1, len(items) + 1)]
            return {bytes(k).decode("utf-8", "surrogateescape") if isinstance(k, bytes) else str(k): python_value(v)
                    for k, v in items.items()}

        def dynamic_get(sid: int, namespace: bytes) -> Any:
            values = streams[sid].dynamic_metadata().get(bytes(namespace).decode("utf-8", "surrogateescape"))
            return lua_value(values) if values is not None else None

        def dynamic_all(sid: int) -> Any:
            return table({name.encode(): lua_value(values) for name, values in streams[sid].dynamic_metadata().items()})

        def dynamic_set(sid: int, namespace: bytes, key: bytes, value: Any) -> None:
            streams[sid].set_dynamic_metadata(bytes(namespace).decode("utf-8", "surrogateescape"),
                                              {bytes(key).decode("utf-8", "surrogateescape"): python_value(value)})

        def timestamp(resolution: Any = None) -> int:
            if resolution in (None, b"MILLISECOND"):
                return time.time_ns() // 1_000_000
            if resolution == b"MICROSECOND":
                return time.time_ns() // 1_000
            raise ValueError(f"timestamp resolution {resolution!r} is not one of MILLISECOND, MICROSECOND")

        def encode64(data: bytes) -> bytes:
            return base64.b64encode(bytes(data))

        def log(level: int, message: bytes) -> None:
            self.log.log(_LEVELS[level], "script log: %s", message.decode(errors="replace"))

        return {name.encode(): fn for name, fn in locals().items()
                if callable(fn) and name not in ("table", "lua_value", "python_value")}


#: what a running script waits for (the first value it yielded), or that it ended
DONE, FAILED = "done", "failed"


class Run:
    """One script call (envoy_on_request / envoy_on_response / envoy_on_route) as a coroutine."""

    def __init__(self, state: LuaState, sid: int) -> None:
        self.state = state
        self.sid = sid
        self.thread: Any = None  # the Lua coroutine while the script waits
        self.what = ""  # what it waits for, DONE or FAILED
        self.result: Any = None  # what the function returned, once DONE
        self.error = ""

    def settle(self, outcome: tuple[Any, ...]) -> str:
        ok, thread, value = outcome if len(outcome) == 3 else (*outcome, None)
        if not ok:
            self.error = thread.decode(errors="replace") if isinstance(thread, bytes) else str(thread)
            self.what = FAILED
        elif thread is None:
            self.result = value
            self.what = DONE
        else:
            self.thread = thread
            self.what = value.decode() if isinstance(value, bytes) else str(value)
            return self.what
        self.finish()
        return self.what

    def step(self, *values: Any) -> str:
        """Resume the waiting script with `values`; what it waits for next, DONE or FAILED (`error` says why)."""
        thread, self.thread = self.thread, None
        return self.settle(self.state.resume(thread, *values))

    def finish(self) -> None:
        self.state.streams.pop(self.sid, None)
