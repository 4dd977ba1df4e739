"""Integration: a listener's per_connection_buffer_limit_bytes caps what a retry can replay, as in Envoy.

A request whose body is over the limit is not kept for a retry: the upstream's first 503 reaches the
client. Under the limit (or with Envoy's 1 MiB default) the retry goes out and succeeds.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, route, static_cluster
from tests.proxy.upstreams import Upstream


def test_retry_buffer_is_the_listener_limit(implementation: str, tmp_path: Path) -> None:
    up, launcher = Upstream(), ProxyLauncher(tmp_path)
    try:
        retrying = route("/", "a")
        retrying["route"]["retry_policy"] = {"retry_on": "5xx", "num_retries": 1}
        small, default = free_port(), free_port()
        capped = http_listener("small", small, [retrying])
        capped["per_connection_buffer_limit_bytes"] = 1024
        launcher.start([capped, http_listener("default", default, [retrying])], [static_cluster("a", [up.port])],
                       implementation=implementation)
        outcomes = []
        for port in (small, default):
            for size in (512, 4096):
                key = uuid.uuid4().hex  # the upstream answers 503 to the first request for this key, then 200
                reply = httpx.post(f"http://127.0.0.1:{port}/flaky/{key}/1/503", content=b"x" * size, timeout=5)
                outcomes.append((port == small, size, reply.status_code,
                                 sum(key in request["path"] for request in up.requests)))
        assert outcomes == [(True, 512, 200, 2), (True, 4096, 503, 1), (False, 512, 200, 2), (False, 4096, 200, 2)]
    finally:
        launcher.close()
        up.close()
