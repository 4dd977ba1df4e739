"""stateful_session's config: what loads and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from tests.extensions.filters.http.loading import load_filter
from tests.proxy.conftest import http_listener, route, static_cluster

TYPE = "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute"
COOKIE = {"name": "c", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState",
    "cookie": {"name": "s", "ttl": "10s", "path": "/", "attributes": [{"name": "Secure"}]}}}


def with_route(per_route: dict[str, Any]) -> None:
    first = route("/", "a")
    first["typed_per_filter_config"] = {"envoy.filters.http.stateful_session": {"@type": PER_ROUTE, **per_route}}
    listener = http_listener("main", 10000, [first])
    parse_bootstrap({"static_resources": {"listeners": [listener], "clusters": [static_cluster("a", [1])]}}, "b.yaml")


def test_what_loads() -> None:
    load_filter("envoy.filters.http.stateful_session", TYPE, {"session_state": COOKIE, "strict": True})
    load_filter("envoy.filters.http.stateful_session", TYPE, {})  # no session state: no sessions
    with_route({"disabled": True})
    with_route({"stateful_session": {"session_state": COOKIE}})


def test_what_is_refused() -> None:
    envelope = {"name": "e", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.http.stateful_session.envelope.v3.EnvelopeSessionState",
        "header": {"name": "h"}}}
    with pytest.raises(ConfigError, match="session_state.typed_config"):
        load_filter("envoy.filters.http.stateful_session", TYPE, {"session_state": envelope})
    with pytest.raises(ConfigError, match="cookie.name"):
        load_filter("envoy.filters.http.stateful_session", TYPE, {"session_state": {
            "name": "c", "typed_config": {**COOKIE["typed_config"], "cookie": {"name": ""}}}})
    for bad in ({"disabled": False}, {}, {"disabled": True, "stateful_session": {}}):
        with pytest.raises(ConfigError):
            with_route(bad)
