"""envoy.router.cluster_specifier_plugin.lua: a Lua script picks a route's cluster per request.

The script's `envoy_on_route(route_handle)` returns the cluster's name; `route_handle:headers()` reads the request
headers (get, getAtIndex, getNumValues, pairs; pseudo-headers included). When the script fails or returns no string,
the request goes to `default_cluster`, as in Envoy. A returned cluster that does not exist is the router's 503 (NC).
Each worker loads the script once, in its own sandboxed Lua state (filters/common/lua_runtime.py).
"""

from __future__ import annotations

import logging
from typing import Any

from pylon.config import registry
from pylon.config.datasource import DataSource, DataSourceError, read_bytes
from pylon.config.envoy import EnvoyStruct, NonEmptyStr
from pylon.config.errors import FieldError
from pylon.extensions.filters.common.lua_runtime import DONE, LuaState, RequestHeaders, ScriptError
from pylon.proxy.cluster_specifier import register_cluster_specifier

TYPE_URL = "type.googleapis.com/envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig"
log = logging.getLogger("pylon.router.lua")


class LuaConfig(EnvoyStruct, kw_only=True):
    """extensions.router.cluster_specifiers.lua.v3.LuaConfig."""

    source_code: DataSource
    default_cluster: NonEmptyStr | None = None

    def __post_init__(self) -> None:
        try:
            code = read_bytes(self.source_code)
        except DataSourceError as exc:
            raise FieldError("source_code", str(exc)) from None
        try:
            env = LuaState(log).load(code, "source_code")
        except ScriptError as exc:
            raise FieldError("source_code", f"the Lua script does not load: {exc}") from None
        if env[b"envoy_on_route"] is None:
            raise FieldError("source_code", "the script defines no envoy_on_route function")


class _RouteContext:
    """What `route_handle` reads: the request's headers only."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def header_view(self, which: str) -> Any:
        return RequestHeaders(self.stream)

    def header_edit(self, which: str, op: str, name: bytes, value: bytes) -> None:
        raise ValueError("route_handle headers are read-only")


class LuaPicker:
    """The route's picker in one process: the Lua state is made on first use (workers each have their own)."""

    def __init__(self, config: LuaConfig) -> None:
        self.config = config
        self.default = config.default_cluster or ""
        self.function: Any = None

    def __call__(self, stream: Any) -> str:
        if self.function is None:
            self.state = LuaState(log)
            self.function = self.state.load(read_bytes(self.config.source_code), "source_code")[b"envoy_on_route"]
        run = self.state.start(self.function, _RouteContext(stream), "route")
        what = run.what
        if what != DONE:
            run.finish()
            log.error("envoy_on_route failed (%s): using default_cluster", run.error or f"waited for {what}")
            return self.default
        result = run.result
        if isinstance(result, bytes):
            return result.decode("latin-1")
        return self.default


registry.register_typed(registry.CLUSTER_SPECIFIER, TYPE_URL, LuaConfig)
register_cluster_specifier(LuaConfig, LuaPicker)
