"""Integration: envoy.filters.http.stateful_session (cookie and header session state), pylon beside Envoy 1.40.

One cluster of two upstream hosts, balanced round robin; three listeners: `cookie` (Envoy's docs' cookie: name,
path /path, ttl 120s; a route with the filter disabled), `strict` (a cookie on every path, strict) and `header`.
Each expectation holds for both proxies: which host served, what the response says about it, the stats.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pylon.extensions.filters.common.session_state import decode_cookie
from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster
from tests.proxy.upstreams import Upstream

ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
SS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute"
COOKIE_TYPE = "type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState"
HEADER_TYPE = "type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState"
NAME = "envoy.filters.http.stateful_session"
COOKIE = "global-session-cookie"


def cookie_state(path: str) -> dict[str, Any]:
    return {"name": "envoy.http.stateful_session.cookie",
            "typed_config": {"@type": COOKIE_TYPE, "cookie": {"name": COOKIE, "path": path, "ttl": "120s"}}}


CONFIGS = {
    "cookie": {"@type": SS_TYPE, "session_state": cookie_state("/path"), "stat_prefix": "ck"},
    "strict": {"@type": SS_TYPE, "session_state": cookie_state("/"), "strict": True, "stat_prefix": "st"},
    "header": {"@type": SS_TYPE, "stat_prefix": "hd", "session_state": {
        "name": "envoy.http.stateful_session.header",
        "typed_config": {"@type": HEADER_TYPE, "name": "session-header"}}},
}


def listener(name: str, port: int) -> dict[str, Any]:
    disabled = route("/path/off", "up")
    disabled["typed_per_filter_config"] = {NAME: {"@type": PER_ROUTE_TYPE, "disabled": True}}
    result = http_listener(name, port, [disabled, route("/", "up")])
    result["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
        {"name": NAME, "typed_config": CONFIGS[name]},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
    return result


class Setup:
    def __init__(self, proxy: RunningProxy, ports: dict[str, int], upstreams: list[Upstream]) -> None:
        self.proxy, self.ports, self.upstreams = proxy, ports, upstreams

    def get(self, listener: str, path: str, **headers: str) -> tuple[httpx.Response, int | None]:
        """The response and the port of the upstream that served it (None: none did)."""
        before = [len(u.requests) for u in self.upstreams]
        reply = httpx.get(f"http://127.0.0.1:{self.ports[listener]}{path}", headers=headers, timeout=5)
        served = [u.port for u, n in zip(self.upstreams, before) if len(u.requests) > n]
        return reply, served[0] if served else None

    def stats(self, listener: str, prefix: str) -> dict[str, int]:
        start = f"http.{listener}.stateful_session.{prefix}."
        return {k[len(start):]: v for k, v in self.proxy.stats().items() if k.startswith(start)}

    def other(self, port: int) -> int:
        return next(u.port for u in self.upstreams if u.port != port)


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    upstreams = [Upstream(), Upstream()]
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"stateful-{request.param}"))
    try:
        ports = {name: free_port() for name in CONFIGS}
        proxy = launcher.start([listener(name, port) for name, port in ports.items()],
                               [static_cluster("up", [u.port for u in upstreams])], implementation=request.param)
        yield Setup(proxy, ports, upstreams)
    finally:
        launcher.close()
        for upstream in upstreams:
            upstream.close()


def session_cookie(reply: httpx.Response) -> tuple[str, str]:
    """(the cookie's quoted value, its attributes) from the response's set-cookie."""
    (header,) = reply.headers.get_list("set-cookie")
    name_value, _, attributes = header.partition("; ")
    name, _, value = name_value.partition("=")
    assert name == COOKIE and value[0] == value[-1] == '"'
    return value[1:-1], attributes


def test_a_cookie_keeps_the_client_on_its_host(setup: Setup) -> None:
    first, port = setup.get("cookie", "/path/a")
    value, attributes = session_cookie(first)
    assert attributes == "Max-Age=120; Path=/path; HttpOnly"
    message = decode_cookie(base64.b64decode(value))
    assert message is not None and message.address == f"127.0.0.1:{port}".encode()
    assert abs(message.expires - (time.time() + 120)) < 10  # POSIX seconds (observed of Envoy 1.40)
    cookie = {"cookie": f'{COOKIE}="{value}"'}
    replies = [setup.get("cookie", "/path/b", **cookie) for _ in range(4)]
    assert [(served, r.headers.get("set-cookie")) for r, served in replies] == [(port, None)] * 4
    assert setup.stats("cookie", "ck") == {"routed": 4, "failed_open": 1, "failed_closed": 0, "no_session": 0}


def test_a_cookie_naming_the_other_host_goes_there(setup: Setup) -> None:
    first, port = setup.get("cookie", "/path")
    assert port is not None
    other = setup.other(port)
    value = base64.b64encode(f"127.0.0.1:{other}".encode()).decode()  # Envoy's older, bare format still reads
    replies = [setup.get("cookie", "/path?x", cookie=f"{COOKIE}={value}")[1] for _ in range(3)]
    assert replies == [other] * 3


def test_outside_the_cookie_path_or_where_disabled_there_is_no_session(setup: Setup) -> None:
    before = setup.stats("cookie", "ck")
    for path in ("/pathology", "/other", "/path/off"):
        reply, port = setup.get("cookie", path)
        assert port is not None and "set-cookie" not in reply.headers
    after = setup.stats("cookie", "ck")
    assert after["no_session"] - before["no_session"] == 2  # the disabled route is not counted at all


def test_an_unknown_host_fails_open_or_closed(setup: Setup) -> None:
    gone = base64.b64encode(f"127.0.0.1:{free_port()}".encode()).decode()
    reply, port = setup.get("cookie", "/path", cookie=f"{COOKIE}={gone}")
    assert port is not None and session_cookie(reply)[0]  # served elsewhere, and told so
    strict, port = setup.get("strict", "/", cookie=f"{COOKIE}={gone}")
    assert (strict.status_code, strict.content, port) == (503, b"no healthy upstream", None)
    assert setup.stats("strict", "st")["failed_closed"] == 1


def test_a_header_keeps_the_client_on_its_host(setup: Setup) -> None:
    first, port = setup.get("header", "/x")
    assert first.headers["session-header"] == base64.b64encode(f"127.0.0.1:{port}".encode()).decode()
    replies = [setup.get("header", "/y", **{"session-header": first.headers["session-header"]}) for _ in range(3)]
    assert [(served, "session-header" in r.headers) for r, served in replies] == [(port, False)] * 3
    assert setup.stats("header", "hd") == {"routed": 3, "failed_open": 1, "failed_closed": 0, "no_session": 0}
