"""The admin endpoint over real HTTP on loopback, with a canned backend standing in for the supervisor."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from pylon import __version__
from pylon.proxy.admin import MAX_REQUEST_BYTES, AdminHandler, histogram_quantiles, render_stats_text, start_admin_server
from pylon.stats.store import StatsStore


class CannedBackend:
    """Implements AdminBackend with fixed data, recording quit calls."""

    def __init__(self) -> None:
        store = StatsStore()
        store.counter("cluster.backend.upstream_rq_total").inc(7)
        store.counter("cluster.backend.upstream_rq_503").inc(2)
        store.counter("http.ingress.downstream_rq_total").inc(9)
        store.counter("http.ingress.downstream_rq_timeout")  # never incremented
        store.gauge("server.live").set(1)
        store.gauge("cluster.backend.membership_healthy")  # zero
        hist = store.histogram("cluster.backend.upstream_rq_time", bounds=(1, 5, 10))
        for value in (0.5, 3, 3, 7):
            hist.record(value)
        store.histogram("http.ingress.downstream_rq_time")  # no samples
        self.snapshot = store.snapshot()
        self.ready = True
        self.state = "LIVE"
        self.quit_called = asyncio.Event()
        self.health_check_failed = False

    async def stats_snapshot(self) -> dict:
        return self.snapshot

    async def clusters_text(self) -> str:
        return "backend::127.0.0.1:8080::health_flags::healthy\n"

    def config_dump(self) -> dict:
        return {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"}]}

    def server_info(self) -> dict:
        return {"state": self.state, "uptime_current_epoch": 12.7, "uptime_all_epochs": "30s",
                "command_line_options": {"concurrency": 2}, "workers": [{"id": 0}]}

    def is_ready(self) -> bool:
        return self.ready

    async def quit(self) -> None:
        self.quit_called.set()

    async def fail_health_check(self, failed: bool) -> None:
        self.health_check_failed = failed


Scenario = Callable[[httpx.AsyncClient, CannedBackend, int], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Scenario], None]:
    """Runs a scenario against a fresh server, on the stdlib loop and on uvloop (what the supervisor uses)."""
    runner = uvloop.run if request.param == "uvloop" else asyncio.run
    return lambda scenario: runner(_serve(scenario))


async def _serve(scenario: Scenario) -> None:
    backend = CannedBackend()
    server = await start_admin_server("127.0.0.1", 0, backend)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            await scenario(client, backend, port)
    finally:
        server.close()
        await server.wait_closed()


def test_ready_follows_the_backend(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: httpx.AsyncClient, backend: CannedBackend, port: int) -> None:
        response = await client.get("/ready")
        assert (response.status_code, response.text) == (200, "LIVE\n")
        backend.ready, backend.state = False, "DRAINING"
        response = await client.get("/ready")
        assert (response.status_code, response.text) == (503, "DRAINING\n")

    run(scenario)


def test_server_info(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: httpx.AsyncClient, backend: CannedBackend, port: int) -> None:
        response = await client.get("/server_info")
        assert response.headers["content-type"] == "application/json"
        info = response.json()
        assert info["version"] == f"pylon/{__version__}"
        assert info["state"] == "LIVE"
        assert info["uptime_current_epoch"] == "12s" and info["uptime_all_epochs"] == "30s"
        assert info["command_line_options"]["concurrency"] == 2
        assert info["hot_restart_version"] == "disabled" and info["workers"] == [{"id": 0}]

    run(scenario)


def test_stats_text_sorted_with_histograms_last(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: httpx.AsyncClient, backend: CannedBackend, port: int) -> None:
        lines = (await client.get("/stats")).text.splitlines()
        assert lines[:6] == [
            "cluster.backend.membership_healthy: 0",
            "cluster.backend.upstream_rq_503: 2",
            "cluster.backend.upstream_rq_total: 7",
            "http.ingress.downstream_rq_timeout: 0",
            "http.ingress.downstream_rq_total: 9",
            "server.live: 1",
        ]
        assert lines[6].startswith("cluster.backend.upstream_rq_time: P0(nan,0) P25(nan,")
        assert lines[6].endswith(" P100(nan,10)")
        assert lines[7] == "http.ingress.downstream_rq_time: No recorded values"

    run(scenario)


def test_stats_filter_usedonly_and_type(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: httpx.AsyncClient, backend: CannedBackend, port: int) -> None:
        text = (await client.get("/stats", params={"filter": r"upstream_rq_\d"})).text
        assert text == "cluster.backend.upstream_rq_503: 2\n"
        used = (await client.get("/stats?usedonly")).text
        assert "downstream_rq_timeout" not in used and "membership_healthy" not in used
        assert "downstream_rq_time: No recorded" not in used and "upstream_rq_total: 7" in used
        gauges = (await client.get("/stats", params={"type": "Gauges", "filter": "live"})).text
        assert gauges == "server.live: 1\n"
        bad = await client.get("/stats", params={"filter": "("})
        assert bad.status_code == 400 and "Invalid re2 regex" in bad.text

    run(scenario)


def test_stats_json(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: httpx.AsyncClient, backend: CannedBackend, port: int) -> None:
        body = (await client.get("/stats?format=json&filter=backend")).json()
        stats = body["stats"]
        assert stats[:3] == [
            {"name": "cluster.backend.membership_healthy", "value": 0},
            {"name": "cluster.backend.upstream_rq_503", "value": 2},
            {"name": "cluster.backend.upstream_rq_total", "value": 7},
        ]
        histograms = stats[-1]["histograms"]
        assert histograms["supported_quantiles"] == [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]
        (computed,) = histograms["computed_quantiles"]
        assert computed["name"] == "cluster.backend.upstream_rq_time"
        assert computed["values"][-1] == {"cumulative": 10, "interval": None}

    run(scenario)


def test_stats_prometheus(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: httpx.AsyncClient, backend: CannedBackend, port: int) -> None:
        for path in ("/stats/prometheus", "/stats?format=prometheus"):
            response = await client.get(path)
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            names = {family.name for family in text_string_to_metric_families(response.text)}
            assert {"envoy_cluster_upstream_rq", "envoy_server_live", "envoy_cluster_upstream_rq_time"} <= names
        filtered = (await client.get("/stats/prometheus?filter=server")).text
        assert [line for line in filtered.splitlines() if not line.startswith("#")] == ["envoy_server_live 1.0"]

    run(scenario)


def test_config_dump_and_clusters(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: httpx.AsyncClient, backend: CannedBackend, port: int) -> None:
        dump = await client.get("/config_dump")
        assert dump.json() == backend.config_dump()
        clusters = await client.get("/clusters")
        assert clusters.text == "backend::127.0.0.1:8080::health_flags::healthy\n"
        assert (await client.get("/clusters?format=json")).status_code == 400

    run(scenario)


def test_quitquitquit_needs_post_then_quits(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: httpx.AsyncClient, backend: CannedBackend, port: int) -> None:
        refused = await client.get("/quitquitquit")
        assert (refused.status_code, refused.text) == (405, "Method GET not allowed, POST required.")
        assert not backend.quit_called.is_set()
        response = await client.post("/quitquitquit")
        assert (response.status_code, response.text) == (200, "OK\n")
        await asyncio.wait_for(backend.quit_called.wait(), 5)

    run(scenario)


def test_healthcheck_fail_and_ok_need_post(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: httpx.AsyncClient, backend: CannedBackend, port: int) -> None:
        assert (await client.get("/healthcheck/fail")).status_code == 405
        response = await client.post("/healthcheck/fail")
        assert (response.status_code, response.text, backend.health_check_failed) == (200, "OK\n", True)
        response = await client.post("/healthcheck/ok")
        assert (response.status_code, response.text, backend.health_check_failed) == (200, "OK\n", False)

    run(scenario)


def test_index_and_unknown_paths(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: httpx.AsyncClient, backend: CannedBackend, port: int) -> None:
        index = await client.get("/")
        assert index.status_code == 200 and "  /stats/prometheus: " in index.text
        missing = await client.get("/nope")
        assert missing.status_code == 404
        assert missing.text.startswith("invalid path. admin commands are:\n")

    run(scenario)


def test_keep_alive_and_pipelining_on_one_connection(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: httpx.AsyncClient, backend: CannedBackend, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\n")
        first = await _read_response(reader)
        second = await _read_response(reader)
        assert first[0].startswith(b"HTTP/1.1 200") and first[1] == b"LIVE\n"
        assert second[0].startswith(b"HTTP/1.1 404")
        writer.write(b"GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        third = await _read_response(reader)
        assert b"connection: close" in third[0].lower()
        assert await reader.read() == b""  # the server closed after answering
        writer.close()

    run(scenario)


def test_malformed_request_gets_400_and_close(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: httpx.AsyncClient, backend: CannedBackend, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GARBAGE\r\n\r\n")
        data = await reader.read()
        assert data.startswith(b"HTTP/1.1 400")
        writer.close()

    run(scenario)


def test_head_and_oversized_requests(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: httpx.AsyncClient, backend: CannedBackend, port: int) -> None:
        head = await client.head("/ready")
        assert head.status_code == 200 and head.headers["content-length"] == "5" and head.content == b""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        size = MAX_REQUEST_BYTES + 1
        writer.write(b"POST /ready HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
        assert (await reader.read()).startswith(b"HTTP/1.1 413")
        writer.close()

    run(scenario)


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return head, await reader.readexactly(length)


def test_quantiles_interpolate_within_buckets() -> None:
    hist = {"bounds": [10, 20], "counts": [0, 4, 0], "sum": 60.0, "count": 4}
    values = histogram_quantiles(hist)
    assert values[0] == 10 and values[2] == 15 and values[-1] == 20  # P0, P50, P100
    overflow = {"bounds": [1], "counts": [0, 3], "sum": 9.0, "count": 3}
    assert histogram_quantiles(overflow)[-1] == 1
    assert all(math.isnan(v) for v in histogram_quantiles({"bounds": [1], "counts": [0, 0], "sum": 0, "count": 0}))


def test_text_rendering_without_a_server() -> None:
    stats = {"counters": {"b": 2}, "gauges": {"a": 1}, "histograms": {}}
    assert render_stats_text(stats) == "a: 1\nb: 2\n"


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_handler_refuses_mutation_without_post(method: str) -> None:
    async def main() -> Any:
        return await AdminHandler(CannedBackend()).handle(method, "/quitquitquit")

    response = asyncio.run(main())
    assert response.status == 405 and response.after is None
    assert response.body == f"Method {method} not allowed, POST required.".encode()
