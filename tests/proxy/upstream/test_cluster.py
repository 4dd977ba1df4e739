"""The per-worker Cluster runtime built from Envoy config: hosts, health, outlier, DNS, stats, admin."""

from __future__ import annotations

import asyncio
from collections import Counter

import msgspec
import pytest

from pylon.config.envoy import Cluster as ClusterConfig, ClusterLoadAssignment, convert, dec_hook
from pylon.proxy.upstream.cluster import Cluster, build_clusters
from pylon.proxy.upstream.dns import ResolvedEndpoint
from pylon.proxy.upstream.host import FAILED_ACTIVE_HC
from pylon.stats.store import StatsStore
from tests.proxy.upstream.test_health import TinyServer, wait_until


def endpoint(address: str, port: int, weight: int = 1) -> dict:
    return {
        "endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}},
        "load_balancing_weight": weight,
    }


def config(name: str = "backend", endpoints: list[dict] | None = None, **fields) -> ClusterConfig:
    data = {
        "name": name,
        "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints or []}]},
        **fields,
    }
    return msgspec.convert(data, ClusterConfig, dec_hook=dec_hook)


def test_static_cluster_hosts_weights_and_choice():
    stats = StatsStore()
    clusters = build_clusters(
        [config(endpoints=[endpoint("127.0.0.1", 8001, 3), endpoint("127.0.0.2", 8002)])], stats, worker_id=0, secrets={},
        singletons={},
    )
    cluster = clusters["backend"]
    assert cluster.name == "backend" and cluster.connect_timeout == 0.25
    assert [(h.address, h.weight) for h in cluster.hosts] == [(("127.0.0.1", 8001), 3), (("127.0.0.2", 8002), 1)]
    picked = Counter(cluster.choose_host().address[1] for _ in range(400))
    assert picked == {8001: 300, 8002: 100}
    assert stats.gauges["cluster.backend.membership_total"].value == 2
    assert stats.gauges["cluster.backend.membership_healthy"].value == 2
    assert stats.gauges["cluster.backend.membership_degraded"].value == 0


def test_no_endpoints_gives_none():
    stats = StatsStore()
    cluster = Cluster(config(), stats)
    assert cluster.choose_host(None) is None
    assert cluster.choose_host(b"key") is None
    assert stats.counters["cluster.backend.upstream_cx_none_healthy"].value == 0  # the data path counts it


def test_health_change_rebuilds_the_balancing_set():
    stats = StatsStore()
    cluster = Cluster(config(endpoints=[endpoint("127.0.0.1", p) for p in (1, 2, 3)]), stats)
    a, b, c = cluster.hosts
    b.set_flag(FAILED_ACTIVE_HC)
    assert stats.gauges["cluster.backend.membership_healthy"].value == 2
    assert {cluster.choose_host().address[1] for _ in range(30)} == {1, 3}
    b.clear_flag(FAILED_ACTIVE_HC)
    assert {cluster.choose_host().address[1] for _ in range(30)} == {1, 2, 3}


def test_outlier_ejection_through_the_cluster():
    stats = StatsStore()
    cluster = Cluster(
        config(
            endpoints=[endpoint("127.0.0.1", 1), endpoint("127.0.0.1", 2)],
            outlier_detection={"consecutive_5xx": 3, "max_ejection_percent": 50},
        ),
        stats,
    )
    bad = cluster.hosts[0]
    for _ in range(3):
        bad.record_response(503)
    assert {cluster.choose_host().address[1] for _ in range(20)} == {2}
    assert cluster.describe()["hosts"][0]["health_flags"] == "/failed_outlier_check"
    assert stats.gauges["cluster.backend.outlier_detection.ejections_active"].value == 1


def test_set_endpoints_keeps_host_objects_that_persist():
    cluster = Cluster(config(endpoints=[endpoint("127.0.0.1", 1), endpoint("127.0.0.1", 2)]), StatsStore())
    kept = cluster.hosts[1]
    kept.active_requests = 4
    changes = cluster.stats.membership_change.value
    cluster.set_endpoints([
        ResolvedEndpoint(("127.0.0.1", 2), 5, ""), ResolvedEndpoint(("127.0.0.1", 3), 1, ""),
    ])
    assert [h.address[1] for h in cluster.hosts] == [2, 3]
    assert cluster.hosts[0] is kept and kept.weight == 5 and kept.active_requests == 4
    assert cluster.stats.membership_change.value == changes + 1
    cluster.set_endpoints([ResolvedEndpoint(("127.0.0.1", 2), 5, ""), ResolvedEndpoint(("127.0.0.1", 3), 1, "")])
    assert cluster.stats.membership_change.value == changes + 1  # same set: no change


def test_circuit_breakers_come_from_config():
    cluster = Cluster(config(circuit_breakers={"thresholds": [{"max_pending_requests": 1}]}), StatsStore())
    pending = cluster.circuit_breakers.pending_requests
    assert pending.try_acquire() and not pending.try_acquire()
    assert cluster.stats.upstream_rq_pending_overflow.value == 1


def test_count_response_bumps_class_and_code_counters():
    stats = StatsStore()
    cluster = Cluster(config(), stats)
    cluster.stats.count_response(200)
    cluster.stats.count_response(204)
    cluster.stats.count_response(503)
    assert stats.counters["cluster.backend.upstream_rq_2xx"].value == 2
    assert stats.counters["cluster.backend.upstream_rq_200"].value == 1
    assert stats.counters["cluster.backend.upstream_rq_5xx"].value == 1
    assert stats.counters["cluster.backend.upstream_rq_503"].value == 1


def test_describe_lists_hosts_like_envoy_admin():
    cluster = Cluster(config(endpoints=[endpoint("::1", 9000, 2)]), StatsStore())
    host = cluster.hosts[0]
    host.active_connections = 1
    host.active_requests = 1
    host.record_response(200)
    described = cluster.describe()
    assert described["hosts"] == [{
        "address": "[::1]:9000", "hostname": "", "weight": 2, "health_flags": "healthy", "cx_active": 1,
        "cx_connect_fail": 0, "rq_active": 1, "rq_total": 1, "rq_success": 1, "rq_error": 0, "rq_timeout": 0,
        "region": "", "zone": "", "sub_zone": "", "priority": 0,
    }]
    assert described["circuit_breakers"] == {
        "max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024, "max_retries": 3,
    }


def test_config_errors():
    with pytest.raises(ValueError, match="duplicate cluster name"):
        build_clusters([config(), config()], StatsStore(), 0, {}, {})


def test_strict_dns_on_localhost_keeps_hosts_across_refreshes():
    async def main() -> None:
        stats = StatsStore()
        cluster = Cluster(
            config(type="STRICT_DNS", dns_lookup_family="V4_ONLY", dns_refresh_rate="0.02s",
                   endpoints=[endpoint("localhost", 8080, 2)]),
            stats,
        )
        assert cluster.hosts == [] and cluster.choose_host() is None
        cluster.start(asyncio.get_running_loop())
        try:
            await asyncio.wait_for(cluster.ready(), 3)
            host = cluster.choose_host()
            assert host is not None and host.address == ("127.0.0.1", 8080)
            assert host.hostname == "localhost" and host.weight == 2
            await asyncio.sleep(0.1)  # several refreshes
            assert cluster.hosts == [host]
        finally:
            await cluster.stop()

    asyncio.run(main())


def test_logical_dns_uses_first_address_only():
    async def main() -> None:
        cluster = Cluster(
            config(type="LOGICAL_DNS", dns_lookup_family="ALL", endpoints=[endpoint("localhost", 81)]), StatsStore(),
        )
        cluster.start(asyncio.get_running_loop())
        try:
            await asyncio.wait_for(cluster.ready(), 3)
            assert len(cluster.hosts) == 1
            assert cluster.hosts[0].address[0] in ("127.0.0.1", "::1")
        finally:
            await cluster.stop()

    asyncio.run(main())


def test_health_checked_cluster_against_real_server():
    async def main() -> None:
        server = TinyServer()
        await server.start()
        stats = StatsStore()
        cluster = Cluster(
            config(
                endpoints=[endpoint("127.0.0.1", server.port)],
                health_checks=[{
                    "timeout": "1s", "interval": "0.02s", "no_traffic_interval": "0.02s",
                    "unhealthy_threshold": 1, "healthy_threshold": 1,
                    "http_health_check": {"path": "/healthz"},
                }],
            ),
            stats,
        )
        host = cluster.hosts[0]
        assert host.health_flags_str() == "/failed_active_hc/pending_active_hc"
        cluster.start(asyncio.get_running_loop())
        try:
            await wait_until(lambda: host.healthy)
            assert stats.gauges["cluster.backend.membership_healthy"].value == 1
            assert b"Host: backend\r\n" in server.requests[0]  # Host header defaults to the cluster name
            server.status = 503
            await wait_until(lambda: not host.healthy)
            assert cluster.describe()["hosts"][0]["health_flags"] == "/failed_active_hc"
            assert stats.gauges["cluster.backend.membership_healthy"].value == 0
        finally:
            await cluster.stop()
            await server.stop()

    asyncio.run(main())


def test_outlier_sweep_runs_on_the_interval():
    async def main() -> None:
        cluster = Cluster(
            config(
                endpoints=[endpoint("127.0.0.1", 1), endpoint("127.0.0.1", 2)],
                outlier_detection={
                    "consecutive_5xx": 1, "max_ejection_percent": 50, "interval": "0.02s", "base_ejection_time": "0.05s",
                },
            ),
            StatsStore(),
        )
        cluster.start(asyncio.get_running_loop())
        try:
            host = cluster.hosts[0]
            host.record_connect_failure()
            assert not host.healthy
            await wait_until(lambda: host.healthy, timeout=2)
        finally:
            await cluster.stop()

    asyncio.run(main())


def with_status(address: str, port: int, status: str) -> dict:
    return {**endpoint(address, port), "health_status": status}


@pytest.mark.parametrize(("status", "flags"), [
    ("UNHEALTHY", "/failed_eds_health"), ("TIMEOUT", "/failed_eds_health"), ("DRAINING", "/eds_status_draining"),
])  # fmt: skip
def test_eds_health_status_keeps_hosts_out_of_balancing(status: str, flags: str):
    stats = StatsStore()
    cluster = Cluster(config(endpoints=[with_status("127.0.0.1", 8001, status), with_status("127.0.0.2", 8002, "HEALTHY"),
                                        with_status("127.0.0.3", 8003, "UNKNOWN")]), stats)
    assert {cluster.choose_host(None).address[1] for _ in range(20)} == {8002, 8003}
    assert [h["health_flags"] for h in cluster.describe()["hosts"]] == [flags, "healthy", "healthy"]
    assert stats.gauges["cluster.backend.membership_healthy"].value == 2


def test_health_status_changes_in_place_and_keeps_other_flags():
    stats = StatsStore()
    cluster = Cluster(config(type="EDS", load_assignment=None,
                             eds_cluster_config={"eds_config": {"ads": {}}}), stats)

    def assign(*statuses: str) -> None:
        cluster.set_assignment(msgspec.convert({"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
            with_status("127.0.0.1", 8000 + i, s) for i, s in enumerate(statuses)]}]}, ClusterLoadAssignment))

    assign("HEALTHY", "UNHEALTHY")
    first = cluster.hosts[0]
    assert {cluster.choose_host(None).address[1] for _ in range(10)} == {8000}
    assign("DRAINING", "HEALTHY")
    assert cluster.hosts[0] is first and {cluster.choose_host(None).address[1] for _ in range(10)} == {8001}
    cluster.hosts[1].set_flag(FAILED_ACTIVE_HC)
    assign("HEALTHY", "HEALTHY")  # the EDS flag goes, the active health check's stays
    assert {cluster.choose_host(None).address[1] for _ in range(10)} == {8000}
    assert cluster.hosts[1].health_flags_str() == "/failed_active_hc"
    assert stats.gauges["cluster.backend.membership_healthy"].value == 1


def test_strict_dns_hosts_take_the_health_status():
    cluster = Cluster(config(type="STRICT_DNS", dns_lookup_family="V4_ONLY", endpoints=[
        with_status("localhost", 8001, "UNHEALTHY"), with_status("localhost", 8002, "HEALTHY")]), StatsStore())

    async def resolve() -> None:
        await cluster._dns.resolve_once(asyncio.get_running_loop())

    asyncio.run(resolve())
    assert [h.health_flags_str() for h in cluster.hosts] == ["/failed_eds_health", "healthy"]
    assert {cluster.choose_host(None).address[1] for _ in range(10)} == {8002}


def test_an_original_dst_cluster_makes_a_host_per_destination_and_drops_unused_ones() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cluster = Cluster(convert({"name": "passthrough", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                                   "cleanup_interval": "0.05s"}, ClusterConfig), StatsStore())
        removed: list[Cluster] = []
        cluster.on_hosts_removed = removed.append
        cluster.start(loop)
        try:
            first = cluster.original_dst_host(("10.0.0.7", 8080))
            assert cluster.original_dst_host(("10.0.0.7", 8080)) is first
            assert cluster.original_dst_host(None) is None and cluster.choose_host(None) is None
            busy = cluster.original_dst_host(("10.0.0.8", 80))
            busy.active_connections = 1
            await asyncio.sleep(0.13)  # two cleanups: the first sees both used, the second drops the idle one
            assert [h.address for h in cluster.hosts] == [("10.0.0.8", 80)] and removed == [cluster]
        finally:
            await cluster.stop()

    asyncio.run(main())


def test_eds_priorities_and_locality_weights_follow_each_assignment():
    """An EDS cluster's placement comes with each ClusterLoadAssignment: priorities, localities and their weights
    (the balancing itself is test_priority.py's)."""
    cluster = Cluster(config(type="EDS", load_assignment=None, eds_cluster_config={"eds_config": {"ads": {}}},
                             common_lb_config={"locality_weighted_lb_config": {}}), StatsStore())

    def assign(*localities: tuple[int, int, list[tuple[int, str]]]) -> None:
        cluster.set_assignment(msgspec.convert({"cluster_name": "backend", "endpoints": [
            {"priority": priority, "load_balancing_weight": weight, "locality": {"zone": f"z{priority}{weight}"},
             "lb_endpoints": [with_status("127.0.0.1", port, status) for port, status in hosts]}
            for priority, weight, hosts in localities]}, ClusterLoadAssignment))

    def picks() -> Counter:
        return Counter(cluster.choose_host(None).address[1] for _ in range(400))

    assign((0, 1, [(8001, "HEALTHY")]), (0, 3, [(8002, "HEALTHY")]), (1, 1, [(8003, "HEALTHY")]))
    assert picks() == {8001: 100, 8002: 300}
    assert cluster.hosts[2].placement.priority == 1 and cluster.hosts[1].placement.locality == ("", "z03", "")
    assign((0, 1, [(8001, "UNHEALTHY")]), (0, 3, [(8002, "UNHEALTHY")]), (1, 1, [(8003, "HEALTHY")]))
    assert picks() == {8003: 400}
    assign((0, 1, [(8001, "HEALTHY")]), (1, 1, [(8003, "HEALTHY")]))  # a host moves: its placement follows
    assert picks() == {8001: 400}
