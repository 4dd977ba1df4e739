"""Integration: the OpenTelemetry stats sink through pylon and Envoy 1.40 alike, to a collector the test runs.

Both proxies flush every 0.5 s to an OTLP collector (a cluster; over HTTP, and over gRPC to MetricsService/Export);
after three requests, the reports must carry
the requests as Envoy's do: a monotonic sum of `http.downstream_rq_total` tagged with the connection manager's
prefix (the increases adding up to 3 as deltas, or reaching 3 cumulatively), the request-time histogram, a gauge,
and, over HTTP, the collector request's path and headers (a protobuf POST with request_headers_to_add).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.extensions.stat_sinks.test_otlp_metrics import attributes, decode
from tests.proxy.conftest import RunningProxy, http_listener, static_cluster, wait_until
from tests.proxy.otlp_collectors import GrpcMetricsCollector, HttpMetricsCollector

ROUTES = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]


@pytest.fixture(params=["http", "grpc"])
def collector(request: pytest.FixtureRequest) -> Iterator[HttpMetricsCollector | GrpcMetricsCollector]:
    server = HttpMetricsCollector() if request.param == "http" else GrpcMetricsCollector()
    yield server
    server.close()


def rq_total(report: dict[str, Any]) -> int:
    """The report's `http.downstream_rq_total` of the `main` connection manager (0 when it is not there)."""
    _, metrics = decode(report["body"])
    points = [point for metric in metrics.get("http.downstream_rq_total", []) for point in metric.sum.data_points
              if attributes(point) == {"envoy.http_conn_manager_prefix": "main"}]
    return sum(point.as_int for point in points)


@pytest.mark.parametrize("deltas", [True, False])
def test_reports_as_envoy(implementation: str, run_proxy: Callable[..., RunningProxy],
                          collector: HttpMetricsCollector | GrpcMetricsCollector, deltas: bool) -> None:
    port = free_port()
    grpc = isinstance(collector, GrpcMetricsCollector)
    service: dict[str, Any] = {"grpc_service": {"envoy_grpc": {"cluster_name": "collector"}}} if grpc else {
        "http_service": {"http_uri": {"uri": "http://collector:4318/v1/metrics", "cluster": "collector",
                                      "timeout": "1s"},
                         "request_headers_to_add": [{"header": {"key": "authorization", "value": "Bearer t"}}]}}
    sink = {"name": "envoy.stat_sinks.open_telemetry", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig", **service,
        "report_counters_as_deltas": deltas, "report_histograms_as_deltas": deltas}}
    h2 = {"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}} if grpc else {}
    run_proxy([http_listener("main", port, ROUTES)], [static_cluster("collector", [collector.port], **h2)],
              implementation=implementation,
              bootstrap_extra={"stats_flush_interval": "0.5s", "stats_sinks": [sink]})
    for _ in range(3):
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    counted = (lambda: sum(rq_total(r) for r in collector.reports)) if deltas else \
        (lambda: max([rq_total(r) for r in collector.reports] or [0]))
    assert wait_until(lambda: counted() >= 3, timeout=15), collector.reports
    time.sleep(1.2)  # two more flushes: a delta report of nothing new leaves the counter out
    assert counted() == 3
    report = collector.reports[-1]
    if not grpc:
        assert report["headers"][":path"] == "/v1/metrics"
        assert report["headers"]["content-type"] == "application/x-protobuf"
        assert report["headers"]["authorization"] == "Bearer t"
        assert report["headers"]["host"] == "collector:4318"
    resource, metrics = decode(report["body"])
    assert set(resource) >= {"telemetry.sdk.name", "telemetry.sdk.language", "telemetry.sdk.version"}
    active = [p for m in metrics["http.downstream_rq_active"] for p in m.gauge.data_points
              if attributes(p) == {"envoy.http_conn_manager_prefix": "main"}]
    assert [p.as_int for p in active] == [0] and active[0].start_time_unix_nano == 0
    if deltas:
        assert "http.downstream_rq_time" not in metrics or all(
            attributes(p) != {"envoy.http_conn_manager_prefix": "main"}
            for m in metrics["http.downstream_rq_time"] for p in m.histogram.data_points)
    else:
        (rq_time,) = [p for m in metrics["http.downstream_rq_time"] for p in m.histogram.data_points
                      if attributes(p) == {"envoy.http_conn_manager_prefix": "main"}]
        assert rq_time.count == 3 and len(rq_time.bucket_counts) == len(rq_time.explicit_bounds) + 1
        (total,) = [m for m in metrics["http.downstream_rq_total"]
                    if attributes(m.sum.data_points[0]) == {"envoy.http_conn_manager_prefix": "main"}]
        assert total.sum.data_points[0].start_time_unix_nano < total.sum.data_points[0].time_unix_nano
