"""Integration: envoy.filters.http.buffer through pylon and Envoy 1.40 side by side.

One listener with the filter at max_request_bytes 10; `/off` disables it per route, `/big` has its own limit of
100. Each expectation was first observed on Envoy 1.40: a chunked body goes upstream with a content-length; over
the limit the answer is 413 "Payload Too Large" (details request_payload_too_large, connection closed) and the
upstream never sees the request; a route that disables the filter streams the body chunked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    ProxyLauncher, RunningProxy, http_listener, json_access_log, read_json_lines, route, static_cluster, wait_until,
)
from tests.proxy.upstreams import Upstream

BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAME = "envoy.filters.http.buffer"


def listener(port: int, log: Path) -> dict[str, Any]:
    routes = [
        {**route("/off", "up", prefix_rewrite="/echo"),
         "typed_per_filter_config": {NAME: {"@type": PER_ROUTE, "disabled": True}}},
        {**route("/big", "up", prefix_rewrite="/echo"),
         "typed_per_filter_config": {NAME: {"@type": PER_ROUTE, "buffer": {"max_request_bytes": 100}}}},
        route("/", "up"),
    ]
    result = http_listener("main", port, routes, access_log=json_access_log(log))
    hcm = result["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [{"name": NAME, "typed_config": {"@type": BUFFER, "max_request_bytes": 10}},
                           {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    return result


class Setup:
    def __init__(self, proxy: RunningProxy, port: int, upstream: Upstream, log: Path) -> None:
        self.proxy, self.port, self.upstream, self.log = proxy, port, upstream, log

    def post(self, path: str, size: int, chunked: bool) -> tuple[int, bytes, str | None, dict[str, str] | None]:
        """(status, body, the connection header, the framing headers the upstream saw or None)."""
        def pieces() -> Iterator[bytes]:
            yield b"x" * size

        before = len(self.upstream.requests)
        reply = httpx.post(f"http://127.0.0.1:{self.port}{path}", content=pieces() if chunked else b"x" * size,
                           timeout=5)
        requests = self.upstream.requests
        seen = None
        if len(requests) > before:
            headers = requests[-1]["headers"]
            seen = {name: headers[name] for name in ("content-length", "transfer-encoding") if name in headers}
        return reply.status_code, reply.content, reply.headers.get("connection"), seen


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp(f"buffer-{request.param}")
    upstream = Upstream()
    launcher = ProxyLauncher(directory)
    try:
        port = free_port()
        proxy = launcher.start([listener(port, directory / "log")], [static_cluster("up", [upstream.port])],
                               implementation=request.param)
        yield Setup(proxy, port, upstream, directory / "log")
    finally:
        launcher.close()
        upstream.close()


def test_a_chunked_body_goes_upstream_whole_with_a_content_length(setup: Setup) -> None:
    assert setup.post("/echo", 5, chunked=True) == (200, b"xxxxx", None, {"content-length": "5"})
    assert setup.post("/echo", 5, chunked=False) == (200, b"xxxxx", None, {"content-length": "5"})
    assert setup.post("/echo", 0, chunked=False) == (200, b"", None, {"content-length": "0"})


def test_over_the_limit_is_413_and_the_upstream_never_asked(setup: Setup) -> None:
    before = setup.proxy.stats()["http.main.downstream_rq_too_large"]
    assert setup.post("/echo", 11, chunked=True) == (413, b"Payload Too Large", "close", None)
    assert setup.post("/echo", 11, chunked=False) == (413, b"Payload Too Large", "close", None)
    assert setup.proxy.stats()["http.main.downstream_rq_too_large"] == before + 2
    wanted = ("413", "-", "request_payload_too_large")
    assert wait_until(lambda: wanted in {(str(line["code"]), line["flags"], line["details"])
                                         for line in read_json_lines(setup.log, 0)}, timeout=10)


def test_a_route_disables_it_or_sets_its_own_limit(setup: Setup) -> None:
    assert setup.post("/off", 50, chunked=True) == (200, b"x" * 50, None, {"transfer-encoding": "chunked"})
    assert setup.post("/big", 50, chunked=True) == (200, b"x" * 50, None, {"content-length": "50"})
    assert setup.post("/big", 150, chunked=False) == (413, b"Payload Too Large", "close", None)


def test_a_request_without_a_body_passes_untouched(setup: Setup) -> None:
    before = len(setup.upstream.requests)
    assert httpx.get(f"http://127.0.0.1:{setup.port}/plain", timeout=5).status_code == 200
    seen = setup.upstream.requests[before]["headers"]
    assert "content-length" not in seen and "transfer-encoding" not in seen
