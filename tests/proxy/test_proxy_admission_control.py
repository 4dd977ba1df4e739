"""Integration: envoy.filters.http.admission_control, pylon beside Envoy 1.40.

Four listeners to one upstream: `main` (successes are 2xx and 3xx; up to 100% rejection), `off` (enabled false),
`busy` (an rps_threshold no test reaches) and `healthy` (the default criteria). Rejection is a draw, so the
assertions are the ones a draw cannot break: a first request (nothing recorded yet) always passes, a window of
successes never rejects, and of 50 requests after a first failure at least 25 are rejected (after k recorded
failures one passes with chance 1/(k+1): about 10 pass; more than 25 is out of reach).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster
from tests.proxy.upstreams import Upstream

ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
AC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.admission_control.v3.AdmissionControl"
NAME = "envoy.filters.http.admission_control"


def config(enabled: bool = True, rps_threshold: int = 0, criteria: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"@type": AC_TYPE, "enabled": {"default_value": enabled, "runtime_key": "ac.enabled"},
            "sampling_window": "60s", "sr_threshold": {"default_value": {"value": 95.0}, "runtime_key": "ac.sr"},
            "aggression": {"default_value": 1.0, "runtime_key": "ac.aggression"},
            "rps_threshold": {"default_value": rps_threshold, "runtime_key": "ac.rps"},
            "max_rejection_probability": {"default_value": {"value": 100.0}, "runtime_key": "ac.max"},
            "success_criteria": criteria if criteria is not None else {
                "http_criteria": {"http_success_status": [{"start": 200, "end": 400}]}}}


CONFIGS = {"main": config(), "off": config(enabled=False), "busy": config(rps_threshold=1000),
           "healthy": config(criteria={})}


def listener(name: str, port: int) -> dict[str, Any]:
    result = http_listener(name, port, [route("/", "up")])
    result["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
        {"name": NAME, "typed_config": CONFIGS[name]},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
    return result


class Setup:
    def __init__(self, proxy: RunningProxy, ports: dict[str, int], upstream: Upstream) -> None:
        self.proxy, self.ports, self.upstream = proxy, ports, upstream

    def send(self, listener: str, path: str, count: int) -> list[tuple[int, bool]]:
        """(status, whether the upstream saw the request) of each of `count` requests."""
        out = []
        for _ in range(count):
            before = len(self.upstream.requests)
            reply = httpx.get(f"http://127.0.0.1:{self.ports[listener]}{path}", timeout=5)
            out.append((reply.status_code, len(self.upstream.requests) > before))
        return out

    def stats(self, listener: str) -> dict[str, int]:
        start = f"http.{listener}.admission_control."
        return {k[len(start):]: v for k, v in self.proxy.stats().items() if k.startswith(start)}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    upstream = Upstream()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"admission-{request.param}"))
    try:
        ports = {name: free_port() for name in CONFIGS}
        proxy = launcher.start([listener(name, port) for name, port in ports.items()],
                               [static_cluster("up", [upstream.port])], implementation=request.param)
        yield Setup(proxy, ports, upstream)
    finally:
        launcher.close()
        upstream.close()


REJECTED = (503, False)


def test_failures_make_rejections_likely(setup: Setup) -> None:
    assert setup.send("main", "/status/503", 1) == [(503, True)]  # nothing recorded yet: never rejected
    replies = setup.send("main", "/status/503", 50)
    rejected = replies.count(REJECTED)
    # after k recorded failures a request passes with chance 1/(k+1): about 10 of the 50 pass
    assert rejected >= 25 and set(replies) <= {REJECTED, (503, True)}
    assert setup.stats("main") == {"rq_rejected": rejected, "rq_success": 0, "rq_failure": 51 - rejected}


def test_successes_never_reject(setup: Setup) -> None:
    assert setup.send("healthy", "/", 30) == [(200, True)] * 30
    assert setup.send("healthy", "/status/404", 10) == [(404, True)] * 10  # below 500: successes by default
    assert setup.stats("healthy") == {"rq_rejected": 0, "rq_success": 40, "rq_failure": 0}


def test_disabled_or_below_the_rps_threshold_never_rejects(setup: Setup) -> None:
    for name in ("off", "busy"):
        assert setup.send(name, "/status/503", 30) == [(503, True)] * 30
    assert setup.stats("off") == {"rq_rejected": 0, "rq_success": 0, "rq_failure": 0}
    assert setup.stats("busy") == {"rq_rejected": 0, "rq_success": 0, "rq_failure": 30}
