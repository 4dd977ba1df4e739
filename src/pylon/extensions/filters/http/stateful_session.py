"""envoy.filters.http.stateful_session: a client kept on one upstream host by a cookie or a header, as Envoy 1.40.

The session state (filters/common/session_state.py: `envoy.http.stateful_session.cookie` or `.header`) names the
host a request's earlier response came from; the request goes to that host when its cluster has it healthy, else
to the balancer's pick, or with `strict` to none (503 no healthy upstream). A response from another host than the
request named (or to a request that named none) says its host in a new cookie or header. A cookie applies only
to requests under its `path`. Per route: StatefulSessionPerRoute `disabled`, or a StatefulSession of its own.
With a `stat_prefix`, `http.<hcm prefix>.stateful_session.<stat_prefix>.{routed, failed_open, failed_closed,
no_session}`: routed when the named host answered, failed_open when another did (not strict), failed_closed
when strict found no host, no_session when a host answered a request without session state.
Checked beside Envoy 1.40 in tests/proxy/test_proxy_stateful_session.py. Refused: other session state
extensions (envelope) by their @type.
"""

from __future__ import annotations

import base64
from typing import Any, ClassVar

import msgspec

from pylon.config import registry
from pylon.config.constraints import Duration
from pylon.config.envoy import EnvoyStruct, NonEmptyStr, _exactly_one, _TypedExtension
from pylon.config.errors import FieldError
from pylon.extensions.filters.common import session_state as state
from pylon.proxy.filters.http import register_filter
from pylon.proxy.upstream.host import format_address

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute"
COOKIE_TYPE_URL = "type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState"
HEADER_TYPE_URL = "type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState"
STATS = ("routed", "failed_open", "failed_closed", "no_session")


class CookieAttribute(EnvoyStruct, kw_only=True):
    """type.http.v3.CookieAttribute."""

    name: NonEmptyStr
    value: str = ""


class Cookie(EnvoyStruct, kw_only=True):
    """type.http.v3.Cookie."""

    name: NonEmptyStr
    ttl: Duration | None = None
    path: str = ""
    attributes: list[CookieAttribute] = msgspec.field(default_factory=list)


class CookieBasedSessionState(EnvoyStruct, kw_only=True):
    cookie: Cookie


class HeaderBasedSessionState(EnvoyStruct, kw_only=True):
    name: NonEmptyStr


class SessionState(_TypedExtension, kw_only=True):
    category: ClassVar[str] = registry.SESSION_STATE


class StatefulSession(EnvoyStruct, kw_only=True):
    """extensions.filters.http.stateful_session.v3.StatefulSession (unset session_state: no sessions)."""

    session_state: SessionState | None = None
    strict: bool = False
    stat_prefix: str = ""


class StatefulSessionPerRoute(EnvoyStruct, kw_only=True):
    disabled: bool | None = None
    stateful_session: StatefulSession | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "disabled", "stateful_session")
        if self.disabled is False:
            raise FieldError("disabled", "must be true when set")


class _Session:
    """One request's session state: the host it names (None: none), and how a response names its host."""

    __slots__ = ("address", "config")

    def __init__(self, address: str | None, config: "_Compiled") -> None:
        self.address, self.config = address, config


class _Compiled:
    """A StatefulSession at work: its state kind, strictness and stats."""

    def __init__(self, config: StatefulSession, hcm_prefix: str, stats: Any) -> None:
        self.strict = config.strict
        self.counters = {name: stats.counter(f"http.{hcm_prefix}.stateful_session.{config.stat_prefix}.{name}")
                         for name in STATS} if config.stat_prefix else None
        kind = config.session_state.typed_config if config.session_state is not None else None
        self.cookie: Cookie | None = kind.cookie if isinstance(kind, CookieBasedSessionState) else None
        self.header = kind.name.lower().encode() if isinstance(kind, HeaderBasedSessionState) else None
        if self.cookie is not None:
            self.cookie_name = self.cookie.name.encode()
            self.in_path = state.path_matcher(self.cookie.path)
            self.ttl = int(self.cookie.ttl) if self.cookie.ttl is not None else 0
            self.attributes = [(a.name, a.value) for a in self.cookie.attributes]

    def count(self, name: str) -> None:
        if self.counters is not None:
            self.counters[name].inc()

    def session(self, stream: Any) -> _Session | None:
        """The request's session state; None when there is none (no state configured, a path the cookie is not
        for)."""
        if self.cookie is not None:
            if not self.in_path(stream.path):
                return None
            return _Session(state.cookie_address(stream.headers, self.cookie_name), self)
        if self.header is not None:
            return _Session(state.header_address(stream.headers, self.header), self)
        return None

    def write(self, headers: Any, address: str) -> None:
        """Name `address` in the response (a set-cookie added, or the header set)."""
        if self.cookie is not None:
            headers.add(b"set-cookie", state.set_cookie(self.cookie.name, address, self.cookie.path, self.ttl,
                                                        self.attributes))
        else:
            assert self.header is not None
            headers.set(self.header, base64.b64encode(address.encode("latin-1")))


_NO_SESSION = object()


class StatefulSessionFilter:
    """One HCM's stateful session filter in one worker."""

    def __init__(self, name: str, config: StatefulSession, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.stat_prefix = stat_prefix
        self.stats = stats
        self.config = _Compiled(config, stat_prefix, stats)
        self._per_route: dict[int, tuple[StatefulSessionPerRoute, _Compiled]] = {}
        #: the streams this filter is active on: their session, or (its config, no session)
        self._active: dict[Any, Any] = {}

    def decode_headers(self, stream: Any) -> bool:
        per_route = stream.route.filter_config(self.name) if stream.route is not None else None
        config = self.config
        if isinstance(per_route, StatefulSessionPerRoute):
            if per_route.disabled:
                return True
            config = self._compiled(per_route)
        session = config.session(stream)
        self._active[stream] = session if session is not None else (config, _NO_SESSION)
        stream.on_finish(lambda: self._active.pop(stream, None))
        if session is not None and session.address is not None:
            stream.override_host = (session.address, config.strict)
        return True

    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        active = self._active.get(stream)
        if active is None:
            return
        host = stream.last_host  # the host the request went to (also when it failed there), as Envoy's upstreamHost
        if not isinstance(active, _Session):
            if host is not None:
                active[0].count("no_session")
            return
        config = active.config
        if host is None:
            if config.strict and stream.flags == "UH":
                config.count("failed_closed")
            return
        address = format_address(host.address)
        if address != active.address:
            config.write(headers, address)
            if not config.strict:
                config.count("failed_open")
        else:
            config.count("routed")

    def _compiled(self, per_route: StatefulSessionPerRoute) -> _Compiled:
        known = self._per_route.get(id(per_route))
        if known is not None and known[0] is per_route:
            return known[1]
        assert per_route.stateful_session is not None
        compiled = _Compiled(per_route.stateful_session, self.stat_prefix, self.stats)
        self._per_route[id(per_route)] = (per_route, compiled)  # the config held: its id stays its own
        return compiled


registry.register_typed(registry.SESSION_STATE, COOKIE_TYPE_URL, CookieBasedSessionState)
registry.register_typed(registry.SESSION_STATE, HEADER_TYPE_URL, HeaderBasedSessionState)
registry.register_typed(registry.HTTP_FILTER, TYPE_URL, StatefulSession)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, StatefulSessionPerRoute)
register_filter(StatefulSession, StatefulSessionFilter)
