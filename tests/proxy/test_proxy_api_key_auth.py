"""Integration: envoy.filters.http.api_key_auth through pylon and Envoy 1.40 side by side.

The listener follows Envoy's documentation example: keys one_key (one_client) and another_key (another_client)
read from Authorization (with or without `Bearer `), the client's name forwarded in x-client-id; `/admin` reads
the key from the `api_key` parameter and allows another_client only; `/special` has its own credential read from
X-Special-Key; `/static` disables the filter (envoy.config.route.v3.FilterConfig); `/hidden` hides the key
(header, parameter and cookie sources) from the upstream. Replies, details and what the upstream saw are compared.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    ProxyLauncher, RunningProxy, http_listener, json_access_log, read_json_lines, route, static_cluster,
)
from tests.proxy.upstreams import Upstream

AUTH = "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAME = "api_key_auth"


def _listener(port: int, log: Path) -> dict[str, Any]:
    def per_route(**fields: Any) -> dict[str, Any]:
        return {NAME: {"@type": PER_ROUTE, **fields}}

    routes = [
        {**route("/admin", "up"), "typed_per_filter_config": per_route(key_sources=[{"query": "api_key"}],
                                                                       allowed_clients=["another_client"])},
        {**route("/special", "up"), "typed_per_filter_config": per_route(
            credentials=[{"key": "special_key", "client": "special_client"}], key_sources=[{"header": "X-Special-Key"}])},
        {**route("/static", "up"), "typed_per_filter_config": {NAME: {"@type": FILTER_CONFIG, "disabled": True}}},
        {**route("/hidden", "up"), "typed_per_filter_config": per_route(
            key_sources=[{"header": "x-api-key"}, {"query": "key"}, {"cookie": "session"}],
            forwarding={"header": "x-client-id", "hide_credentials": True})},
        route("/", "up"),
    ]
    listener = http_listener("main", port, routes, access_log=json_access_log(log))
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
        {"name": NAME, "typed_config": {"@type": AUTH,
                                        "credentials": [{"key": "one_key", "client": "one_client"},
                                                        {"key": "another_key", "client": "another_client"}],
                                        "key_sources": [{"header": "Authorization"}],
                                        "forwarding": {"header": "x-client-id", "hide_credentials": False}}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    return listener


class Setup:
    def __init__(self, proxy: RunningProxy, port: int, upstream: Upstream, log: Path) -> None:
        self.proxy, self.port, self.upstream, self.log = proxy, port, upstream, log
        self.logged = 0

    def get(self, path: str, **headers: str) -> tuple[int, bytes, str, dict[str, Any] | None]:
        """(status, body, the access log's details, what the upstream saw or None)."""
        before = len(self.upstream.requests)
        reply = httpx.get(f"http://127.0.0.1:{self.port}{path}", headers=headers, timeout=5)
        self.logged += 1
        lines = read_json_lines(self.log, self.logged, timeout=10)
        assert len(lines) == self.logged
        requests = self.upstream.requests
        return reply.status_code, reply.content, lines[-1]["details"], \
            (requests[-1] if len(requests) > before else None)


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp(f"api-key-{request.param}")
    upstream = Upstream()
    launcher = ProxyLauncher(directory)
    try:
        port = free_port()
        proxy = launcher.start([_listener(port, directory / "log")], [static_cluster("up", [upstream.port])],
                               implementation=request.param)
        yield Setup(proxy, port, upstream, directory / "log")
    finally:
        launcher.close()
        upstream.close()


def test_a_known_key_passes_and_its_client_is_forwarded(setup: Setup) -> None:
    for value in ("one_key", "Bearer one_key"):
        status, _, details, seen = setup.get("/x", authorization=value)
        assert (status, details) == (200, "via_upstream")
        assert seen is not None and seen["headers"]["x-client-id"] == "one_client"
        assert seen["headers"]["authorization"] == value  # hide_credentials false: the key goes on


def test_a_client_cannot_name_itself(setup: Setup) -> None:
    _, _, _, seen = setup.get("/x", authorization="one_key", **{"x-client-id": "another_client"})
    assert seen is not None and seen["headers"]["x-client-id"] == "one_client"


@pytest.mark.parametrize("headers,details", [({}, "missing_api_key"), ({"authorization": "wrong"}, "unknown_api_key"),
                                             ({"authorization": "Bearer wrong"}, "unknown_api_key")])
def test_a_missing_or_unknown_key_is_401(setup: Setup, headers: dict[str, str], details: str) -> None:
    status, body, logged, seen = setup.get("/x", **headers)
    assert (status, body, logged, seen) == (401, b"Client authentication failed.", details, None)


def test_a_route_allows_only_its_clients(setup: Setup) -> None:
    status, body, details, seen = setup.get("/admin?api_key=one_key")
    assert (status, body, details, seen) == (403, b"Client is forbidden.", "client_not_allowed", None)
    status, _, _, seen = setup.get("/admin?api_key=another%5Fkey")  # the parameter is decoded
    # a route's config without `forwarding` replaces the filter's: nothing forwarded (Envoy 1.40, observed)
    assert status == 200 and seen is not None and "x-client-id" not in seen["headers"]
    status, _, details, _ = setup.get("/admin", authorization="another_key")  # the route reads the parameter only
    assert (status, details) == (401, "missing_api_key")


def test_a_route_has_its_own_credentials(setup: Setup) -> None:
    status, _, _, seen = setup.get("/special", **{"x-special-key": "special_key"})
    assert status == 200 and seen is not None and "x-client-id" not in seen["headers"]
    status, _, details, _ = setup.get("/special", **{"x-special-key": "one_key"})
    assert (status, details) == (401, "unknown_api_key")


def test_a_route_can_disable_the_filter(setup: Setup) -> None:
    status, _, _, seen = setup.get("/static/file.css")
    assert status == 200 and seen is not None and "x-client-id" not in seen["headers"]


def test_hidden_credentials_never_reach_the_upstream(setup: Setup) -> None:
    status, _, _, seen = setup.get("/hidden?key=another_key&other=1", cookie="session=x; theme=dark",
                                   **{"x-api-key": "wrong"})
    assert status == 401  # the first source that has a key decides
    status, _, _, seen = setup.get("/hidden?key=another_key&other=1", cookie="session=x; theme=dark")
    assert status == 200 and seen is not None
    assert seen["path"] == "/hidden?other=1" and seen["headers"]["cookie"] == "theme=dark"
    assert seen["headers"]["x-client-id"] == "another_client"


def test_the_counters(setup: Setup) -> None:
    before = setup.proxy.stats()
    setup.get("/x", authorization="one_key")
    setup.get("/x")
    setup.get("/admin?api_key=one_key")
    after = setup.proxy.stats()
    for name in ("allowed", "unauthorized", "forbidden"):
        key = f"http.main.api_key_auth.{name}"
        assert after[key] - before.get(key, 0) == 1, name
