"""Integration: envoy.filters.http.cors (Istio's VirtualService `corsPolicy`) through pylon and Envoy alike.

Two listeners in one proxy, each with the CORS filter before the router. `main` has policies at all three
levels - the route configuration (origin https://rc.example, expose x-rc), the `site` virtual host (its own
origins, methods, headers, max age, credentials, expose headers) and single routes overriding some fields -
plus a direct response and a redirect, which the filter leaves alone. `legacy` has only the deprecated
`cors` fields of a virtual host and a route action, which Envoy 1.40 still honours. The same requests go
through both proxies and every CORS response header, whether the upstream saw the request, the access log's
details and the `cors` stats must agree with what Envoy 1.40 does (each expectation was first observed there).
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

CORS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
POLICY_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CORS = "envoy.filters.http.cors"
A, B, RC = "https://a.example", "https://b.example", "https://rc.example"
NEVER = {"default_value": {"numerator": 0}}
ALWAYS = {"default_value": {"numerator": 100}}


def policy(**fields: Any) -> dict[str, Any]:
    return {CORS: {"@type": POLICY_TYPE, **fields}}


def with_policy(prefix: str, **fields: Any) -> dict[str, Any]:
    return {**route(prefix, "up"), "typed_per_filter_config": policy(**fields)}


def listener(name: str, port: int, log: Path, route_config: dict[str, Any]) -> dict[str, Any]:
    config = http_listener(name, port, [], access_log=json_access_log(log))
    hcm = config["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"] = route_config
    hcm["http_filters"] = [{"name": CORS, "typed_config": {"@type": CORS_TYPE}},
                           {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
    return config


def main_routes() -> dict[str, Any]:
    return {"name": "main", "typed_per_filter_config": policy(allow_origin_string_match=[{"exact": RC}],
                                                              expose_headers="x-rc"),
            "virtual_hosts": [
                {"name": "site", "domains": ["site"],
                 "typed_per_filter_config": policy(
                     allow_origin_string_match=[{"exact": A}, {"safe_regex": {"regex": r"https://[a-z]+\.allowed"}}],
                     allow_methods="GET, POST", allow_headers="x-a", max_age="600", allow_credentials=True,
                     expose_headers="x-up"),
                 "routes": [
                     {"match": {"prefix": "/direct"}, "direct_response": {"status": 203, "body": {"inline_string": "d"}}},
                     {"match": {"prefix": "/redirect"}, "redirect": {"path_redirect": "/elsewhere"}},
                     with_policy("/nofwd", forward_not_matching_preflights=False),
                     with_policy("/override", allow_origin_string_match=[{"exact": B}], allow_methods="*",
                                 allow_headers="*", allow_credentials=False, allow_private_network_access=True),
                     with_policy("/off", filter_enabled=NEVER),
                     with_policy("/shadow", filter_enabled=NEVER, shadow_enabled=ALWAYS),
                     route("/", "up")]},
                {"name": "plain", "domains": ["plain"], "routes": [route("/", "up")]}]}


def legacy_routes() -> dict[str, Any]:
    return {"name": "legacy", "virtual_hosts": [{
        "name": "legacy", "domains": ["*"],
        "cors": {"allow_origin_string_match": [{"exact": A}], "allow_methods": "PUT", "max_age": "5"},
        "routes": [{"match": {"prefix": "/route"}, "route": {"cluster": "up", "cors": {"allow_methods": "DELETE"}}},
                   route("/", "up")]}]}


class Cors:
    """One proxy with both listeners, and how a test talks to it."""

    def __init__(self, proxy: RunningProxy, ports: dict[str, int], upstream: Upstream, logs: dict[str, Path]) -> None:
        self.proxy, self.ports, self.upstream, self.logs = proxy, ports, upstream, logs

    def ask(self, method: str, path: str, host: str = "site", listener: str = "main", origin: str | None = A,
            preflight: str | None = None, **headers: str) -> tuple[int, dict[str, str], bool]:
        """(status, the access-control-* response headers, whether the upstream saw the request)."""
        sent = {name.replace("_", "-"): value for name, value in headers.items()}
        if origin is not None:
            sent["origin"] = origin
        if preflight is not None:
            sent["access-control-request-method"] = preflight
        before = len(self.upstream.requests)
        reply = httpx.request(method, f"http://127.0.0.1:{self.ports[listener]}{path}", headers={"host": host, **sent},
                              timeout=5)
        cors = {name: value for name, value in reply.headers.items() if name.startswith("access-control-")}
        return reply.status_code, cors, len(self.upstream.requests) > before

    def cors_stats(self, listener: str = "main") -> dict[str, int]:
        prefix = f"http.{listener}.cors."
        return {k[len(prefix):]: v for k, v in self.proxy.stats().items() if k.startswith(prefix)}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def cors(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cors]:
    implementation = request.param
    directory = tmp_path_factory.mktemp(f"cors-{implementation}")
    upstream = Upstream()
    launcher = ProxyLauncher(directory)
    try:
        ports = {"main": free_port(), "legacy": free_port()}
        logs = {name: directory / f"{name}.log" for name in ports}
        proxy = launcher.start([listener("main", ports["main"], logs["main"], main_routes()),
                                listener("legacy", ports["legacy"], logs["legacy"], legacy_routes())],
                               [static_cluster("up", [upstream.port])], implementation=implementation)
        yield Cors(proxy, ports, upstream, logs)
    finally:
        launcher.close()
        upstream.close()


SITE_PREFLIGHT = {"access-control-allow-origin": A, "access-control-allow-credentials": "true",
                  "access-control-allow-methods": "GET, POST", "access-control-allow-headers": "x-a",
                  "access-control-max-age": "600", "access-control-expose-headers": "x-up"}


def test_allowed_preflight_is_answered_by_the_proxy(cors: Cors) -> None:
    # expose-headers too: the answer passes the filter's own response side, as Envoy's does
    assert cors.ask("OPTIONS", "/x", preflight="PUT") == (200, SITE_PREFLIGHT, False)
    regex_origin = cors.ask("OPTIONS", "/x", origin="https://zz.allowed", preflight="PUT")
    assert regex_origin == (200, {**SITE_PREFLIGHT, "access-control-allow-origin": "https://zz.allowed"}, False)


def test_preflight_from_another_origin(cors: Cors) -> None:
    assert cors.ask("OPTIONS", "/x", origin=B, preflight="PUT") == (200, {}, True)  # forwarded (the default)
    assert cors.ask("OPTIONS", "/x", origin="https://a.example.evil", preflight="PUT") == (200, {}, True)
    # forward_not_matching_preflights false: answered, without an allowed origin (nor expose headers)
    answered = {k: v for k, v in SITE_PREFLIGHT.items() if k not in ("access-control-allow-origin",
                                                                     "access-control-expose-headers")}
    assert cors.ask("OPTIONS", "/nofwd", origin=B, preflight="PUT") == (200, answered, False)


def test_actual_requests_get_the_headers_when_the_origin_is_allowed(cors: Cors) -> None:
    actual = {"access-control-allow-origin": A, "access-control-allow-credentials": "true",
              "access-control-expose-headers": "x-up"}
    assert cors.ask("GET", "/x") == (200, actual, True)
    assert cors.ask("OPTIONS", "/x") == (200, actual, True)  # OPTIONS without a requested method: not a preflight
    # the upstream's own header is replaced
    assert cors.ask("GET", "/respond?access-control-allow-origin=upstream") == (200, actual, True)
    assert cors.ask("GET", "/status/503") == (503, actual, True)
    assert cors.ask("GET", "/x", origin=B) == (200, {}, True)
    assert cors.ask("GET", "/x", origin=None) == (200, {}, True)


def test_a_route_overrides_its_virtual_host_field_by_field(cors: Cors) -> None:
    status, headers, upstream = cors.ask("OPTIONS", "/override", origin=B, preflight="PATCH",
                                         access_control_request_headers="x-b, x-c",
                                         access_control_request_private_network="true")
    assert (status, upstream) == (200, False)
    assert headers == {"access-control-allow-origin": B, "access-control-allow-methods": "PATCH",
                       "access-control-allow-headers": "x-b, x-c", "access-control-max-age": "600",
                       "access-control-allow-private-network": "true", "access-control-expose-headers": "x-up"}
    assert cors.ask("OPTIONS", "/override", origin=A, preflight="PUT") == (200, {}, True)  # A is not B


def test_route_configuration_level_applies_where_nothing_more_specific_does(cors: Cors) -> None:
    assert cors.ask("GET", "/", host="plain", origin=RC) == (200, {"access-control-allow-origin": RC,
                                                                   "access-control-expose-headers": "x-rc"}, True)
    assert cors.ask("OPTIONS", "/", host="plain", origin=RC, preflight="GET") == (
        200, {"access-control-allow-origin": RC, "access-control-expose-headers": "x-rc"}, False)
    assert cors.ask("GET", "/", host="plain") == (200, {}, True)


def test_disabled_shadow_and_bypassed_routes(cors: Cors) -> None:
    assert cors.ask("OPTIONS", "/off", preflight="PUT") == (200, {}, True)
    assert cors.ask("OPTIONS", "/shadow", preflight="PUT") == (200, {}, True)
    assert cors.ask("OPTIONS", "/direct", preflight="PUT") == (203, {}, False)
    assert cors.ask("GET", "/direct") == (203, {}, False)
    assert cors.ask("GET", "/redirect") == (301, {}, False)


def test_deprecated_route_and_virtual_host_cors(cors: Cors) -> None:
    assert cors.ask("OPTIONS", "/", listener="legacy", preflight="GET") == (
        200, {"access-control-allow-origin": A, "access-control-allow-methods": "PUT",
              "access-control-max-age": "5"}, False)
    assert cors.ask("OPTIONS", "/route", listener="legacy", preflight="GET") == (
        200, {"access-control-allow-origin": A, "access-control-allow-methods": "DELETE",
              "access-control-max-age": "5"}, False)
    assert cors.ask("GET", "/", listener="legacy", origin=B) == (200, {}, True)


def test_stats_and_access_log(cors: Cors) -> None:
    before = cors.cors_stats()
    cors.ask("OPTIONS", "/x", preflight="PUT")  # valid
    cors.ask("GET", "/x", origin=B)  # invalid
    cors.ask("GET", "/x", origin=None)  # not counted
    cors.ask("GET", "/direct")  # not counted: no route entry
    cors.ask("OPTIONS", "/shadow", preflight="PUT")  # shadow: counted
    cors.ask("OPTIONS", "/off", preflight="PUT")  # disabled: not counted
    after = cors.cors_stats()
    assert set(after) == {"origin_valid", "origin_invalid"}
    assert (after["origin_valid"] - before["origin_valid"], after["origin_invalid"] - before["origin_invalid"]) == (2, 1)
    lines = read_json_lines(cors.logs["main"], 1)
    preflights = [line for line in lines if line["details"] == "cors_response"]
    assert preflights and all((line["code"], line["flags"], line["upstream"]) == (200, "-", None)
                              for line in preflights)
