"""Integration: HCM `local_reply_config` and access log `filter`, through pylon and Envoy 1.40 alike.

One listener: a route to a live upstream, one to a cluster with no endpoints (503 UH), a direct response, and no
route for anything else (404 NR). Its local replies go through two mappers and a text body format; its requests
go to three access logs with filters. What the client gets and what each log holds must be what Envoy gives.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, wait_until
from tests.proxy.upstreams import Upstream

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def file_log(path: Path, log_filter: dict[str, Any]) -> dict[str, Any]:
    return {"name": "envoy.access_loggers.file", "filter": log_filter, "typed_config": {
        "@type": FILE_LOG, "path": str(path),
        "log_format": {"json_format": {"path": "%REQ(:PATH)%", "code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%"}}}}


def status_at_least(code: int) -> dict[str, Any]:
    return {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": code,
                                                                        "runtime_key": "access_log.errors"}}}}


LOCAL_REPLY_CONFIG = {
    "mappers": [
        {"filter": {"response_flag_filter": {"flags": ["UH"]}},
         "status_code": 502, "body": {"inline_string": "backend down"},
         "headers_to_add": [{"header": {"key": "x-mapped", "value": "uh-%REQ(x-who)%"}}]},
        {"filter": {"and_filter": {"filters": [
            {"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 404, "runtime_key": "k"}}}},
            {"header_filter": {"header": {"name": "x-json", "present_match": True}}}]}},
         "body_format_override": {"json_format": {"error": "%LOCAL_REPLY_BODY%", "code": "%RESPONSE_CODE%",
                                                   "path": "%REQ(:PATH)%"}}},
    ],
    "body_format": {"text_format": "[%RESPONSE_CODE% %RESPONSE_FLAGS%] %LOCAL_REPLY_BODY%\n"},
}


@pytest.fixture(params=["pylon", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RunningProxy, Path]]:
    up = Upstream()
    launcher = ProxyLauncher(tmp_path)
    logs = tmp_path / request.param
    logs.mkdir()
    try:
        routes = [route("/up", "up"), route("/gone", "dead"),
                  {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "direct"}}}]
        listener = http_listener(
            "main", free_port(), routes, local_reply_config=LOCAL_REPLY_CONFIG,
            access_log=[file_log(logs / "errors.log", status_at_least(400)),
                        file_log(logs / "tagged.log", {"and_filter": {"filters": [
                            {"header_filter": {"header": {"name": "x-log", "exact_match": "yes"}}},
                            {"not_health_check_filter": {}}]}}),
                        file_log(logs / "flagged.log", {"or_filter": {"filters": [
                            {"response_flag_filter": {"flags": ["NR"]}},
                            {"duration_filter": {"comparison": {"op": "GE", "value": {"default_value": 60000,
                                                                                        "runtime_key": "d"}}}}]}})])
        clusters = [{"name": "up", "connect_timeout": "1s", "type": "STATIC", "load_assignment": {
                        "cluster_name": "up", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                            "socket_address": {"address": "127.0.0.1", "port_value": up.port}}}}]}]}},
                    {"name": "dead", "connect_timeout": "1s", "type": "STATIC",
                     "load_assignment": {"cluster_name": "dead", "endpoints": []}}]
        yield launcher.start([listener], clusters, implementation=request.param), logs
    finally:
        launcher.close()
        up.close()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_local_replies_rewritten_and_logs_filtered_as_envoy(proxy: tuple[RunningProxy, Path]) -> None:
    running, logs = proxy
    with httpx.Client(timeout=5) as client:
        ok = client.get(running.url("main", "/up/a"), headers={"x-log": "yes"})
        assert ok.status_code == 200 and ok.text == "ok\n"

        down = client.get(running.url("main", "/gone"), headers={"x-who": "me", "x-log": "no"})
        assert (down.status_code, down.text) == (502, "[502 UH] backend down\n")
        assert down.headers["x-mapped"] == "uh-me" and down.headers["content-type"] == "text/plain"

        missing = client.get(running.url("main", "/nowhere"))
        assert (missing.status_code, missing.text) == (404, "[404 NR] \n")  # no body: printed empty, not "-"

        as_json = client.get(running.url("main", "/nowhere/j"), headers={"x-json": "1", "x-log": "yes"})
        assert as_json.status_code == 404 and as_json.headers["content-type"] == "application/json"
        assert json.loads(as_json.text) == {"error": "", "code": 404, "path": "/nowhere/j"}
        assert as_json.text.endswith("\n")

        direct = client.get(running.url("main", "/direct"))
        assert (direct.status_code, direct.text) == (200, "[200 -] direct\n")

    expected_errors = [{"path": "/gone", "code": 502, "flags": "UH"}, {"path": "/nowhere", "code": 404, "flags": "NR"},
                       {"path": "/nowhere/j", "code": 404, "flags": "NR"}]
    assert wait_until(lambda: lines(logs / "errors.log") == expected_errors, timeout=10), lines(logs / "errors.log")
    assert wait_until(lambda: [e["path"] for e in lines(logs / "tagged.log")] == ["/up/a", "/nowhere/j"], timeout=10)
    assert wait_until(lambda: [e["path"] for e in lines(logs / "flagged.log")] == ["/nowhere", "/nowhere/j"],
                      timeout=10)


def test_a_grpc_requests_local_reply_is_rewritten_then_made_grpc(proxy: tuple[RunningProxy, Path]) -> None:
    """The mapper and the body format run first; the reply a gRPC client gets carries their status and body as
    grpc-status and grpc-message (Envoy's order)."""
    running, _ = proxy
    grpc = {"content-type": "application/grpc", "te": "trailers", "x-who": "g"}
    with httpx.Client(timeout=5) as client:
        down = client.post(running.url("main", "/gone"), content=b"\x00\x00\x00\x00\x00", headers=grpc)
        missing = client.post(running.url("main", "/nowhere"), content=b"\x00\x00\x00\x00\x00", headers=grpc)
    assert down.status_code == 200 and down.headers["content-type"] == "application/grpc"
    assert (down.headers["grpc-status"], down.headers["grpc-message"]) == ("14", "[502 UH] backend down%0A")
    assert down.headers["x-mapped"] == "uh-g"
    assert (missing.headers["grpc-status"], missing.headers["grpc-message"]) == ("12", "[404 NR] %0A")
