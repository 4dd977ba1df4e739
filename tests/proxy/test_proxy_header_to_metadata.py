"""Integration: envoy.filters.http.header_to_metadata through pylon and Envoy 1.40 alike.

The filter's own rules are those of Envoy's docs' header-to-metadata-filter.yaml: `x-version` (else
`default: true`) into `envoy.lb`, which picks a host of the subset cluster. A route's typed_per_filter_config
replaces them with rules of every kind: a regex rewrite of :path, a cookie (present and missing), NUMBER,
BASE64 strings and protobuf Values, a removed header, a repeated header, a fixed value, response rules. The
access log (JSON) shows what each proxy set; the upstream shows what it received; the stats the counters.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from google.protobuf import struct_pb2

from tests.conftest import free_port
from tests.proxy.conftest import (ProxyLauncher, http_listener, json_access_log, read_json_lines, static_cluster,
                                  wait_until, write_bootstrap)
from tests.proxy.metadata_gateway import MetadataGateway, metadata_gateway, validate

H2M_TYPE = "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAME = "envoy.filters.http.header_to_metadata"

OWN = {"@type": H2M_TYPE, "stat_prefix": "own", "request_rules": [{
    "header": "x-version",
    "on_header_present": {"metadata_namespace": "envoy.lb", "key": "version", "type": "STRING"},
    "on_header_missing": {"metadata_namespace": "envoy.lb", "key": "default", "value": "true", "type": "STRING"},
    "remove": False}]}


def _pair(key: str, **fields: Any) -> dict[str, Any]:
    return {"metadata_namespace": "t", "key": key, **fields}


PER_ROUTE = {"@type": H2M_TYPE, "stat_prefix": "route", "request_rules": [
    {"header": ":path", "on_header_present": _pair("cluster", regex_value_rewrite={
        "pattern": {"regex": "^/rules/(cluster[\\d\\w-]+)/?.*$"}, "substitution": "\\1"})},
    {"cookie": "session", "on_header_present": _pair("session"), "on_header_missing": _pair("session", value="none")},
    {"header": "x-num", "on_header_present": _pair("num", type="NUMBER")},
    {"header": "x-b64", "on_header_present": _pair("b64", encode="BASE64")},
    {"header": "x-pb", "on_header_present": _pair("pb", type="PROTOBUF_VALUE", encode="BASE64")},
    {"header": "x-secret", "on_header_present": _pair("secret"), "remove": True},
    {"header": "x-multi", "on_header_present": _pair("multi")},
    {"header": "x-fixed", "on_header_present": {"key": "fixed", "value": "set"}},
    {"header": "x-absent", "on_header_missing": _pair("absent", value="7", type="NUMBER")},
], "response_rules": [
    {"header": "x-resp", "on_header_present": {"metadata_namespace": "resp", "key": "r"}, "remove": True},
    {"header": ":status", "on_header_present": {"metadata_namespace": "resp", "key": "status", "type": "NUMBER"}},
]}

LOG = {"lb": "%DYNAMIC_METADATA(envoy.lb)%", "t": "%DYNAMIC_METADATA(t)%", "fixed": f"%DYNAMIC_METADATA({NAME})%",
       "resp": "%DYNAMIC_METADATA(resp)%", "num": "%DYNAMIC_METADATA(t:num)%"}


def _listener(port: int, log: Path) -> dict[str, Any]:
    routes = [{"match": {"prefix": "/rules"}, "route": {"cluster": "up", "prefix_rewrite": "/respond"},
               "typed_per_filter_config": {NAME: PER_ROUTE}},
              {"match": {"prefix": "/"}, "route": {"cluster": "versioned"}}]
    return http_listener("main", port, routes, access_log=json_access_log(log, **LOG), http_filters=[
        {"name": NAME, "typed_config": OWN},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
    ])


@pytest.fixture
def gateway(implementation: str, tmp_path: Path) -> Iterator[MetadataGateway]:
    with metadata_gateway(implementation, tmp_path, _listener) as gateway:
        yield gateway


def test_envoy_lb_metadata_from_a_header_picks_the_subset(gateway: MetadataGateway) -> None:
    port, default, versioned, log = gateway.port, gateway.default, gateway.versioned, gateway.log
    for version in ("1.0", None, "1.0"):
        headers = {"x-version": version} if version else {}
        assert httpx.get(f"http://127.0.0.1:{port}/app", headers=headers, timeout=10).status_code == 200
    assert (len(default.requests), len(versioned.requests)) == (1, 2)
    lines = read_json_lines(log, 3, timeout=10)
    assert [line["lb"] for line in lines] == [{"version": "1.0"}, {"default": "true"}, {"version": "1.0"}]


PB = struct_pb2.Value(struct_value={"a": [1, "two"], "b": True})


def test_every_kind_of_rule_per_route(gateway: MetadataGateway) -> None:
    proxy, port, up, log = gateway.proxy, gateway.port, gateway.up, gateway.log
    headers = [("x-num", "1.5"), ("x-b64", base64.b64encode(b"hello").decode().rstrip("=")),
               ("x-pb", base64.b64encode(PB.SerializeToString()).decode()), ("x-secret", "s3"),
               ("x-multi", "a"), ("x-multi", "b"), ("x-fixed", "ignored"), ("cookie", 'other=1; session="abc"')]
    url = f"http://127.0.0.1:{port}/rules/cluster-7/x?x-resp=from-up"  # the upstream answers /respond?...
    assert httpx.get(url, headers=headers, timeout=10).headers.get("x-resp") is None  # removed from the response
    assert httpx.get(f"http://127.0.0.1:{port}/rules/none", headers=[("x-num", "abc"), ("x-b64", "!!")],
                     timeout=10).status_code == 200
    first, second = read_json_lines(log, 2, timeout=10)
    assert first["t"] == {"cluster": "cluster-7", "session": "abc", "num": 1.5, "b64": "hello",
                          "pb": {"a": [1, "two"], "b": True}, "secret": "s3", "multi": "a,b", "absent": 7}
    assert first["fixed"] == {"fixed": "set"}
    assert first["resp"] == {"r": "from-up", "status": 200}
    assert first["lb"] is None
    assert second["t"] == {"cluster": "/rules/none", "session": "none", "absent": 7}  # no match: the path as it came
    seen = up.requests[0]["header_list"]
    assert "x-secret" not in dict(seen) and [v for k, v in seen if k == "x-multi"] == ["a", "b"]
    expected = {"base64_decode_failed": 1, "request_header_not_found": 3, "request_metadata_added": 12,
                "request_rules_processed": 18, "response_metadata_added": 3, "response_rules_processed": 4}

    def counted() -> dict[str, int]:
        return {k.removeprefix("http_filter_name.route."): v for k, v in proxy.stats().items()
                if k.startswith("http_filter_name.") and v}
    assert wait_until(lambda: counted() == expected, timeout=10), counted()


@pytest.mark.parametrize(("rule", "message"), [
    ({"header": "x-a", "cookie": "c", "on_header_present": {"key": "k"}},
     "Cannot specify both header and cookie in the same rule"),
    ({"on_header_present": {"key": "k"}}, "One of Cookie or Header option needs to be specified"),
    ({"header": "x-a"}, "has neither `on_header_present` nor `on_header_missing` set"),
    ({"header": "x-a", "on_header_present": {"key": "k", "value": "v", "regex_value_rewrite": {
        "pattern": {"regex": "a"}, "substitution": "b"}}}, "Cannot specify both value and regex_value_rewrite"),
    ({"cookie": "c", "on_header_present": {"key": "k"}, "remove": True}, "Cannot specify remove for cookie"),
    ({"header": "x-a", "on_header_missing": {"key": "k"}}, "Cannot specify on_header_missing rule with an empty value"),
])
def test_rule_mistakes_are_refused(implementation: str, launcher: ProxyLauncher, tmp_path: Path,
                                   rule: dict[str, Any], message: str) -> None:
    listener = http_listener("main", free_port(), [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
                             http_filters=[{"name": NAME, "typed_config": {"@type": H2M_TYPE, "request_rules": [rule]}},
                                           {"name": "envoy.filters.http.router",
                                            "typed_config": {"@type": ROUTER_TYPE}}])
    code, out = validate(implementation, launcher, write_bootstrap(tmp_path / "bad.yaml", [listener], [], free_port()))
    assert code != 0 and message in out, out


def test_a_per_route_config_needs_rules(implementation: str, launcher: ProxyLauncher, tmp_path: Path) -> None:
    listener = _listener(free_port(), tmp_path / "log.json")
    routes = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    routes[0]["typed_per_filter_config"] = {NAME: {"@type": H2M_TYPE}}
    config = write_bootstrap(tmp_path / "bad.yaml", [listener], [static_cluster("up", [1])], free_port())
    code, out = validate(implementation, launcher, config)
    assert code != 0 and "Per filter configs must at least specify either request or response rules" in out
