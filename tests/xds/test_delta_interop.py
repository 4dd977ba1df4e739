"""Integration: incremental (delta) ADS from a scripted management server, through pylon and Envoy alike.

The sequence of the state-of-the-world test, over `DELTA_GRPC`: each response carries only what changed
(a cluster added, a route configuration swapped), a removal comes in `removed_resources`, an invalid cluster
is NACKed while the last good config serves, and a new stream tells the server the versions held
(`initial_resource_versions`) so that nothing unchanged is sent again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, static_cluster, wait_until
from tests.proxy.upstreams import Upstream
from tests.xds.delta_management import ScriptedDeltaAds
from tests.xds.management import CDS, RDS
from tests.xds.test_ads_interop import EFFECT_S, Setup, ads_bootstrap, rds_listener, routes


@pytest.fixture(params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    ups = {"a": Upstream(), "b": Upstream()}
    ads = ScriptedDeltaAds(free_port())
    launcher = ProxyLauncher(tmp_path)
    try:
        ads.start()
        ads.set(CDS, "1", [static_cluster("a", [ups["a"].port])])
        ads.set(RDS, "1", routes(("/b", "b"), ("/", "a")))
        extra, xds = ads_bootstrap(ads.port)
        extra["dynamic_resources"]["ads_config"]["api_type"] = "DELTA_GRPC"
        proxy = launcher.start([rds_listener(free_port())], [xds], implementation=request.param,
                               bootstrap_extra=extra)
        yield Setup(proxy, ads, ups, request.param)  # type: ignore[arg-type]
    finally:
        launcher.close()
        ads.stop()
        for up in ups.values():
            up.close()


def test_delta_sequence_serves_as_envoy(setup: Setup) -> None:
    ads: ScriptedDeltaAds = setup.ads  # type: ignore[assignment]
    assert setup.answer("/x") == (200, "a") and setup.answer("/b") == (503, "")
    first_cds = ads.requests_for(CDS)[0]
    assert list(first_cds.resource_names_subscribe) in ([], ["*"])  # wildcard
    assert list(ads.requests_for(RDS)[0].resource_names_subscribe) == ["main_routes"]

    # Only what changed is sent: cluster b added (a unchanged), then the routes swapped.
    ads.set(CDS, "2", [setup.cluster("a"), setup.cluster("b")])
    assert wait_until(lambda: setup.answer("/b") == (200, "b"), timeout=EFFECT_S)
    ads.set(RDS, "2", routes(("/", "b")))
    assert wait_until(lambda: setup.answer("/x") == (200, "b"), timeout=EFFECT_S)

    # An invalid cluster: NACKed with error_detail; the last good config serves.
    (nonce,) = ads.set(CDS, "3", [setup.cluster("a", connect_timeout="-1s"), setup.cluster("b")])
    nack = wait_until(lambda: next((r for r in ads.requests_for(CDS) if r.response_nonce == nonce), None),
                      timeout=EFFECT_S)
    assert nack is not None and nack.error_detail.message
    assert setup.answer("/x") == (200, "b")

    # A removal (b in removed_resources; a fixed at version 4): the route to b answers 503.
    ads.set(CDS, "4", [setup.cluster("a")])
    assert wait_until(lambda: setup.answer("/x") == (503, ""), timeout=EFFECT_S)
    assert setup.answer("/b") == (503, "")

    # The server gone and back: the proxy reconnects saying what it holds; only a change is sent.
    ads.stop()
    ads.start()
    assert wait_until(lambda: ads.stream_count == 1, timeout=EFFECT_S)
    reconnect = wait_until(lambda: [r for r in ads.requests_for(CDS) if r.initial_resource_versions], timeout=EFFECT_S)
    assert dict(reconnect[-1].initial_resource_versions) == {"a": "4"}
    ads.set(RDS, "5", routes(("/", "a")))
    assert wait_until(lambda: setup.answer("/x") == (200, "a"), timeout=EFFECT_S)
    stats = setup.proxy.stats()
    assert stats["control_plane.connected_state"] == 1
    assert stats["cluster_manager.cds.update_rejected"] == 1
