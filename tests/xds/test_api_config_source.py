"""Integration: CDS, EDS and RDS each from its own gRPC stream (`api_config_source`, no ADS), pylon and Envoy alike.

Envoy opens one stream per resource type to the per-type discovery services (`StreamClusters`,
`StreamEndpoints`, `StreamRoutes`); the names of EDS and RDS follow CDS and the listeners as over ADS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, wait_until
from tests.proxy.upstreams import Upstream
from tests.xds.management import CDS, EDS, RDS, ScriptedAds
from tests.xds.test_ads_interop import EFFECT_S, ads_bootstrap, rds_listener, routes
from tests.xds.test_eds_interop import SERVICE, assignment

NODE = {"id": "sidecar~127.0.0.1~app.default~default.svc.cluster.local", "cluster": "app"}


def api_source() -> dict[str, Any]:
    return {"api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                                  "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "initial_fetch_timeout": "5s", "resource_api_version": "V3"}


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_each_type_on_its_own_stream(implementation: str, tmp_path: Path) -> None:
    ups = {"a": Upstream(), "b": Upstream()}
    server = ScriptedAds(free_port())
    launcher = ProxyLauncher(tmp_path)
    try:
        server.start()
        cluster = {"name": "e", "type": "EDS", "connect_timeout": "1s",
                   "eds_cluster_config": {"eds_config": api_source(), "service_name": SERVICE}}
        server.set(CDS, "1", [cluster])
        server.set(EDS, "1", [assignment(ups["a"].port)])
        server.set(RDS, "1", routes(("/", "e")))
        _, xds = ads_bootstrap(server.port)
        listener = rds_listener(free_port())
        listener["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["config_source"] = api_source()
        proxy = launcher.start([listener], [xds], implementation=implementation,
                               bootstrap_extra={"node": NODE, "dynamic_resources": {"cds_config": api_source()}})

        def served_by() -> str:
            reply = httpx.get(proxy.url("main", "/x"), timeout=5)
            return {str(up.port): name for name, up in ups.items()}.get(reply.headers.get("x-served-by", ""), "")

        assert served_by() == "a"
        server.set(EDS, "2", [assignment(ups["b"].port)])
        assert wait_until(lambda: served_by() == "b", timeout=EFFECT_S)
        assert server.stream_count == 3  # one stream per type, no ADS
        assert [list(r.resource_names) for r in server.requests_for(EDS)][0] == [SERVICE]
        stats = proxy.stats()
        assert stats["cluster.e.update_success"] == 2 and stats["cluster_manager.cds.update_success"] == 1
    finally:
        launcher.close()
        server.stop()
        for up in ups.values():
            up.close()
