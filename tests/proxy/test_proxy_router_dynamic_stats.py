"""Integration: the router's `dynamic_stats`, through pylon and Envoy alike.

With it (Envoy's default) the router charges each upstream response to its cluster by code and class
(`upstream_rq_200`, `upstream_rq_2xx`, ...); with `dynamic_stats: false` it charges none of them, while
`upstream_rq_total` still counts every request. The same three requests (200, 404, 503 from the upstream) go
through both proxies and the cluster's counters must agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.proxy.conftest import gateway_in_front_of_upstream, http_listener, route, wait_until

ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
BY_RESPONSE = ("upstream_rq_200", "upstream_rq_2xx", "upstream_rq_404", "upstream_rq_4xx", "upstream_rq_503",
               "upstream_rq_5xx")


@pytest.mark.parametrize("dynamic_stats", [True, False, None], ids=["true", "false", "unset"])
def test_dynamic_stats_charge_responses_by_code_or_not(implementation: str, tmp_path: Path,
                                                       dynamic_stats: bool | None) -> None:
    router: dict[str, Any] = {"@type": ROUTER_TYPE}
    if dynamic_stats is not None:
        router["dynamic_stats"] = dynamic_stats

    def listener(port: int) -> dict[str, Any]:
        config = http_listener("main", port, [route("/", "up")])
        config["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
            {"name": "envoy.filters.http.router", "typed_config": router}]
        return config

    with gateway_in_front_of_upstream(implementation, tmp_path, listener) as gateway:
        statuses = [httpx.get(f"http://127.0.0.1:{gateway.port}{path}", timeout=10).status_code
                    for path in ("/", "/status/404", "/status/503")]
        assert statuses == [200, 404, 503]
        stats = wait_until(lambda: (s := gateway.proxy.stats()).get("cluster.up.upstream_rq_total") == 3 and s,
                           timeout=15)

    assert stats, "the cluster never counted the three requests"
    charged = 0 if dynamic_stats is False else 1
    assert {name: stats.get(f"cluster.up.{name}", 0) for name in BY_RESPONSE} == dict.fromkeys(BY_RESPONSE, charged)
