"""Integration: a cluster's response codes and times split by where the request came from, through pylon and Envoy
1.40 alike.

Besides `cluster.<name>.upstream_rq_<code>`, `_<N>xx`, `_completed` and `upstream_rq_time`, Envoy charges each
response again under `external.` (a client's request) or `internal.` (its own: a mirror's copy, an auth or tracing
call, which carry `x-envoy-internal: true`). Dashboards split traffic by them. Like Envoy, these names exist only
once something was counted under them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.upstreams import Upstream

#: the counters under external. / internal. after the requests of the test, by cluster; no other exists
EXPECTED = {
    "cluster.up.external.upstream_rq_200": 4, "cluster.up.external.upstream_rq_2xx": 4,
    "cluster.up.external.upstream_rq_completed": 4,
    "cluster.up.internal.upstream_rq_200": 1, "cluster.up.internal.upstream_rq_2xx": 1,
    "cluster.up.internal.upstream_rq_completed": 1,
    "cluster.dead.external.upstream_rq_503": 1, "cluster.dead.external.upstream_rq_5xx": 1,
    "cluster.dead.external.upstream_rq_completed": 1,
    "cluster.shadow.internal.upstream_rq_200": 1, "cluster.shadow.internal.upstream_rq_2xx": 1,
    "cluster.shadow.internal.upstream_rq_completed": 1,
}
ORIGIN = re.compile(r"^cluster\.\w+\.(?:external|internal)\.")


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    up, shadow = Upstream(), Upstream()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"origin-stats-{request.param}"))
    try:
        routes = [route("/mirror", "up", request_mirror_policies=[{"cluster": "shadow"}]), route("/dead", "dead"),
                  route("/self-mirror", "up", request_mirror_policies=[{"cluster": "up"}]), route("/", "up")]
        clusters = [static_cluster("up", [up.port]), static_cluster("shadow", [shadow.port]),
                    static_cluster("dead", [free_port()])]
        yield launcher.start([http_listener("main", free_port(), routes)], clusters, implementation=request.param)
    finally:
        launcher.close()
        up.close()
        shadow.close()


def test_responses_are_charged_again_by_origin(proxy: RunningProxy) -> None:
    assert [httpx.get(proxy.url("main", path), timeout=5).status_code
            for path in ("/a", "/b", "/dead", "/mirror", "/self-mirror")] == [200, 200, 503, 200, 200]

    def by_origin() -> dict[str, int]:
        return {name: value for name, value in proxy.stats().items() if ORIGIN.match(name)}

    assert wait_until(lambda: by_origin() == EXPECTED), by_origin()
    histograms = {line.partition(":")[0] for line in proxy.admin("/stats").text.splitlines()
                  if line.partition(":")[0].endswith("upstream_rq_time")}
    times = {"cluster.up.external.upstream_rq_time", "cluster.up.internal.upstream_rq_time",
             "cluster.shadow.internal.upstream_rq_time"}
    assert times <= histograms
    assert not any(ORIGIN.match(name) for name in histograms - times)
    # each origin's samples apart (Prometheus counts; Envoy merges its histograms every 5 s)
    expected_samples = {("up", "external"): 4, ("up", "internal"): 1, ("shadow", "internal"): 1}
    assert wait_until(lambda: time_samples(proxy) == expected_samples, timeout=10), time_samples(proxy)


def time_samples(proxy: RunningProxy) -> dict[tuple[str, str], int]:
    """(cluster, origin) -> the sample count of its `<origin>.upstream_rq_time`."""
    out = {}
    for family in text_string_to_metric_families(proxy.admin("/stats/prometheus").text):
        for sample in family.samples:
            origin = sample.name.removeprefix("envoy_cluster_").removesuffix("_upstream_rq_time_count")
            if origin in ("external", "internal") and sample.value:
                out[sample.labels["envoy_cluster_name"], origin] = int(sample.value)
    return out
