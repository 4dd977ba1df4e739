"""Integration: envoy.filters.http.fault (Istio's VirtualService `fault`) through pylon and Envoy alike.

One listener, the fault filter before the router, routes that override its config per route. Every
expectation here was first observed on Envoy 1.40: a delay holds the request (flag DI), an abort answers
"fault filter abort" (flag FI, details fault_filter_abort), a fault without a percentage never fires, a
route's config replaces the filter's whole, max_active_faults caps faults running at once.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    ProxyLauncher, RunningProxy, http_listener, json_access_log, read_json_lines, route, static_cluster,
)
from tests.proxy.upstreams import Upstream

FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
DELAY_S = 0.3
ALWAYS = {"numerator": 100}


def fault(**config: Any) -> dict[str, Any]:
    return {"@type": FAULT_TYPE, **config}


def with_fault(path: str, config: dict[str, Any]) -> dict[str, Any]:
    """A route to cluster a whose fault config is `config` (replacing the filter's)."""
    entry = route(path, "a")
    entry["typed_per_filter_config"] = {"envoy.filters.http.fault": config}
    return entry


class Faulty:
    def __init__(self, proxy: RunningProxy, port: int, log: Path) -> None:
        self.proxy, self.port, self.log = proxy, port, log

    def get(self, path: str) -> tuple[int, str, float]:
        started = time.monotonic()
        reply = httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)
        return reply.status_code, reply.text, time.monotonic() - started

    def fault_stats(self) -> dict[str, int]:
        return {k.rsplit(".", 1)[1]: v for k, v in self.proxy.stats().items() if k.startswith("http.main.fault.")}


def start(launcher: ProxyLauncher, implementation: str, up: Upstream, tmp_path: Path,
          filter_config: dict[str, Any], routes: list[dict[str, Any]]) -> Faulty:
    port, log = free_port(), tmp_path / f"{implementation}-access.log"
    listener = http_listener("main", port, [*routes, route("/", "a")], access_log=json_access_log(log))
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
        {"name": "envoy.filters.http.fault", "typed_config": filter_config},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
    proxy = launcher.start([listener], [static_cluster("a", [up.port])], implementation=implementation)
    return Faulty(proxy, port, log)


@pytest.fixture
def up() -> Any:
    upstream = Upstream()
    yield upstream
    upstream.close()


def test_delay_abort_and_per_route_configs(implementation: str, up: Upstream, tmp_path: Path) -> None:
    launcher = ProxyLauncher(tmp_path)
    try:
        gateway = start(launcher, implementation, up, tmp_path,
                        fault(delay={"fixed_delay": f"{DELAY_S}s", "percentage": ALWAYS}),
                        [with_fault("/abort", fault(abort={"http_status": 418, "percentage": ALWAYS})),
                         with_fault("/both", fault(delay={"fixed_delay": f"{DELAY_S}s", "percentage": ALWAYS},
                                                   abort={"http_status": 503, "percentage": ALWAYS})),
                         with_fault("/off", fault()),
                         with_fault("/no-percentage", fault(abort={"http_status": 500}))])
        status, body, took = gateway.get("/delayed")  # the filter's own config: delay every request
        assert (status, body) == (200, "ok\n") and took >= DELAY_S
        status, body, took = gateway.get("/abort")
        assert (status, body) == (418, "fault filter abort") and took < DELAY_S
        status, body, took = gateway.get("/both")  # the delay first, then the abort
        assert (status, body) == (503, "fault filter abort") and took >= DELAY_S
        status, body, took = gateway.get("/off")
        assert (status, body) == (200, "ok\n") and took < DELAY_S
        assert gateway.get("/no-percentage")[0] == 200  # a fault without a percentage never fires
        lines = read_json_lines(gateway.log, 5)
        assert [(line["code"], line["flags"], line["details"]) for line in lines] == [
            (200, "DI", "via_upstream"), (418, "FI", "fault_filter_abort"), (503, "DI,FI", "fault_filter_abort"),
            (200, "-", "via_upstream"), (200, "-", "via_upstream")]
        assert gateway.fault_stats() == {"delays_injected": 2, "aborts_injected": 2, "active_faults": 0,
                                         "faults_overflow": 0, "response_rl_injected": 0}
    finally:
        launcher.close()


def test_max_active_faults_lets_the_rest_through(implementation: str, up: Upstream, tmp_path: Path) -> None:
    launcher = ProxyLauncher(tmp_path)
    try:
        gateway = start(launcher, implementation, up, tmp_path,
                        fault(delay={"fixed_delay": "1s", "percentage": ALWAYS}, max_active_faults=1), [])
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(gateway.get, "/")
            time.sleep(0.3)  # the first is being delayed
            second = gateway.get("/")
            assert second[0] == 200 and second[2] < 0.5  # over the cap: no fault
            assert first.result()[2] >= 1.0
        stats = gateway.fault_stats()
        assert (stats["delays_injected"], stats["faults_overflow"], stats["active_faults"]) == (1, 1, 0)
    finally:
        launcher.close()
