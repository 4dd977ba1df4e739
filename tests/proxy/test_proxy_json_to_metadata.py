"""Integration: envoy.filters.http.json_to_metadata through pylon and Envoy 1.40 alike.

The filter's own rules are those of Envoy's docs' json-to-metadata-filter.yaml: a body's `version` (else, or on
an error, `default: true`) into `envoy.lb`, which picks a host of the subset cluster. A route's
typed_per_filter_config replaces them with rules of every kind: nested selectors, each value type, fixed values,
a preserved key, and response rules on the upstream's JSON answer (the upstream echoes the request body). The
access log (JSON) shows what each proxy set, the stats what they counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.proxy.conftest import http_listener, json_access_log, read_json_lines, wait_until
from tests.proxy.metadata_gateway import MetadataGateway, metadata_gateway

J2M_TYPE = "type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata"
SET_METADATA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAME = "envoy.filters.http.json_to_metadata"

DEFAULT = {"metadata_namespace": "envoy.lb", "key": "default", "value": "true", "preserve_existing_metadata_value": True}
OWN = {"@type": J2M_TYPE, "request_rules": {"rules": [{
    "selectors": [{"key": "version"}],
    "on_present": {"metadata_namespace": "envoy.lb", "key": "version"},
    "on_missing": DEFAULT, "on_error": DEFAULT}]}}


def _rule(keys: list[str], **present: Any) -> dict[str, Any]:
    return {"selectors": [{"key": key} for key in keys],
            "on_present": {"metadata_namespace": "t", "key": ".".join(keys), **present},
            "on_missing": {"metadata_namespace": "t", "key": ".".join(keys), "value": "missing"}}


PER_ROUTE = {"@type": J2M_TYPE, "request_rules": {"allow_content_types": ["application/json", "text/x-json"],
                                                  "rules": [
    _rule(["a", "b", "c"]),
    _rule(["num"], type="NUMBER"), _rule(["numtext"], type="NUMBER"), _rule(["badnum"], type="NUMBER"),
    _rule(["flag"], type="STRING"), _rule(["real"], type="STRING"), _rule(["int"], type="STRING"),
    _rule(["empty"], type="STRING"), _rule(["obj"]), _rule(["null"]), _rule(["fixed"], value={"any": ["json"]}),
    _rule(["nowhere"], value="fixed"), _rule(["a", "nowhere", "c"], value="fixed"),
    {"selectors": [{"key": "kept"}], "on_present": {"metadata_namespace": "t", "key": "kept",
                                                    "preserve_existing_metadata_value": True}},
]}, "response_rules": {"rules": [
    {"selectors": [{"key": "num"}], "on_present": {"key": "echoed"}},
    {"selectors": [{"key": "absent"}], "on_missing": {"key": "absent", "value": 0}},
]}}

LOG = {"lb": "%DYNAMIC_METADATA(envoy.lb)%", "t": "%DYNAMIC_METADATA(t)%", "resp": f"%DYNAMIC_METADATA({NAME})%"}


def _listener(port: int, log: Path) -> dict[str, Any]:
    routes = [{"match": {"prefix": "/echo"}, "route": {"cluster": "up"}, "typed_per_filter_config": {NAME: PER_ROUTE}},
              {"match": {"prefix": "/"}, "route": {"cluster": "versioned"}}]
    return http_listener("main", port, routes, access_log=json_access_log(log, **LOG), http_filters=[
        {"name": "set", "typed_config": {"@type": SET_METADATA_TYPE, "metadata": [
            {"metadata_namespace": "t", "value": {"kept": "from set_metadata"}}]}},
        {"name": NAME, "typed_config": OWN},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
    ])


@pytest.fixture
def gateway(implementation: str, tmp_path: Path) -> Iterator[MetadataGateway]:
    with metadata_gateway(implementation, tmp_path, _listener) as gateway:
        yield gateway


def _counters(proxy: Any) -> dict[str, int]:
    return {k: v for k, v in proxy.stats().items() if k.startswith("json_to_metadata.") and v}


def test_a_body_field_picks_the_subset(gateway: MetadataGateway) -> None:
    proxy, port, default, versioned, log = gateway.proxy, gateway.port, gateway.default, gateway.versioned, gateway.log
    url = f"http://127.0.0.1:{port}/app"
    sends = [
        ({"content-type": "application/json"}, b'{"version": "1.0", "other": 1}'),
        ({"content-type": "application/json"}, b'{"other": 1}'),
        ({"content-type": "application/json"}, b"not json"),
        ({"content-type": "text/plain"}, b'{"version": "1.0"}'),
        ({}, None),
        ({"content-type": "application/json"}, b'"a string"'),
        ({"content-type": "application/json"}, b'{"version": {"nested": 1}}'),
    ]
    for headers, body in sends:
        response = httpx.request("POST" if body is not None else "GET", url, headers=headers, content=body,
                                 timeout=10)
        assert response.status_code == 200
    assert (len(default.requests), len(versioned.requests)) == (6, 1)
    lines = read_json_lines(log, len(sends), timeout=10)
    assert [line["lb"] for line in lines] == [{"version": "1.0"}] + [{"default": "true"}] * 6
    expected = {"json_to_metadata.rq.success": 4, "json_to_metadata.rq.invalid_json_body": 1,
                "json_to_metadata.rq.mismatched_content_type": 2}
    assert wait_until(lambda: _counters(proxy) == expected, timeout=10), _counters(proxy)


def test_every_kind_of_rule_per_route(gateway: MetadataGateway) -> None:
    proxy, port, log = gateway.proxy, gateway.port, gateway.log
    body = {"a": {"b": {"c": "deep"}}, "num": 7, "numtext": " 2.5 ", "badnum": "x", "flag": True, "real": 1.5,
            "int": 12, "empty": "", "obj": {"x": 1}, "null": None, "fixed": "ignored", "kept": "from body"}
    response = httpx.post(f"http://127.0.0.1:{port}/echo", content=json.dumps(body).encode(),
                          headers={"content-type": "text/x-json"}, timeout=10)
    assert response.json() == body
    [line] = read_json_lines(log, 1, timeout=10)
    assert line["t"] == {"a.b.c": "deep", "num": 7, "numtext": 2.5, "badnum": "missing", "flag": "1",
                         "real": "1.500000", "int": "12", "obj": "missing", "null": "missing",
                         "fixed": {"any": ["json"]}, "nowhere": "fixed", "a.nowhere.c": "missing",
                         "kept": "from set_metadata"}
    assert line["lb"] is None
    # The response is echoed as text/x-json, which the response rules do not allow: on_error (none) counted.
    assert line["resp"] is None
    expected = {"json_to_metadata.rq.success": 1, "json_to_metadata.resp.mismatched_content_type": 1}
    assert wait_until(lambda: _counters(proxy) == expected, timeout=10), _counters(proxy)


def test_response_rules(gateway: MetadataGateway) -> None:
    proxy, port, log = gateway.proxy, gateway.port, gateway.log
    response = httpx.post(f"http://127.0.0.1:{port}/echo", content=b'{"num": "n-1"}',
                          headers={"content-type": "application/json"}, timeout=10)
    assert response.status_code == 200
    [line] = read_json_lines(log, 1, timeout=10)
    assert line["resp"] == {"echoed": "n-1"}  # a rule without on_present never takes on_missing for a JSON object
    expected = {"json_to_metadata.rq.success": 1, "json_to_metadata.resp.success": 1}
    assert wait_until(lambda: _counters(proxy) == expected, timeout=10), _counters(proxy)
