"""The OTLP metrics encoder: what a flush's request carries, decoded with opentelemetry-proto's own messages."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from pylon.extensions.stat_sinks.otlp_metrics import CUMULATIVE, DELTA, MetricsOptions, OtlpMetricsEncoder
from pylon.stats.store import DEFAULT_BUCKETS
from tests.proxy.otlp_collectors import by_number

RESOURCE = {"telemetry.sdk.name": "pylon"}
START = 1_000_000_000


def snapshot(rq_total: int, samples: list[int]) -> dict[str, Any]:
    counts = [0] * (len(DEFAULT_BUCKETS) + 1)
    for bucket in samples:
        counts[bucket] += 1
    return {"counters": {"http.main.downstream_rq_total": rq_total, "cluster.up.upstream_cx_total": 0},
            "gauges": {"http.main.downstream_cx_active": 0, "server.live": 1},
            "histograms": {"http.main.downstream_rq_time": {"bounds": list(DEFAULT_BUCKETS), "counts": counts,
                                                            "sum": 2.5 * len(samples), "count": len(samples)}}}


def decode(body: bytes | None) -> tuple[dict[str, str], dict[str, Any]]:
    """(resource attributes, metrics by name) of a request; a name seen twice keeps a list."""
    assert body is not None
    request = ExportMetricsServiceRequest.FromString(body)
    (resource_metrics,) = request.resource_metrics
    resource = {kv.key: kv.value.string_value for kv in resource_metrics.resource.attributes}
    (scope_metrics,) = by_number(resource_metrics, 2)  # ResourceMetrics.scope_metrics, whatever its name here
    metrics: dict[str, Any] = {}
    for metric in scope_metrics.metrics:
        metrics.setdefault(metric.name, []).append(metric)
    return resource, metrics


def attributes(point: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in point.attributes}


def test_cumulative_counters_gauges_and_histograms_with_tags() -> None:
    encoder = OtlpMetricsEncoder(MetricsOptions(), RESOURCE, START)
    resource, metrics = decode(encoder.encode(snapshot(3, [1, 1, 5]), START + 10))
    assert resource == RESOURCE
    (total,) = metrics["http.downstream_rq_total"]
    point = total.sum.data_points[0]
    assert (total.sum.is_monotonic, total.sum.aggregation_temporality) == (True, CUMULATIVE)
    assert (point.as_int, point.start_time_unix_nano, point.time_unix_nano) == (3, START, START + 10)
    assert attributes(point) == {"envoy.http_conn_manager_prefix": "main"}
    assert "cluster.upstream_cx_total" not in metrics  # never above zero
    (active,) = metrics["http.downstream_cx_active"]
    gauge = active.gauge.data_points[0]
    assert (gauge.as_int, gauge.start_time_unix_nano, gauge.time_unix_nano) == (0, 0, START + 10)
    (rq_time,) = metrics["http.downstream_rq_time"]
    histogram = rq_time.histogram.data_points[0]
    assert rq_time.histogram.aggregation_temporality == CUMULATIVE
    assert (histogram.count, histogram.sum) == (3, 7.5)
    assert list(histogram.explicit_bounds) == list(DEFAULT_BUCKETS)
    assert list(histogram.bucket_counts)[:6] == [0, 2, 0, 0, 0, 1] and len(histogram.bucket_counts) == 20


def test_deltas_since_the_last_flush_and_what_did_not_move_is_left_out() -> None:
    encoder = OtlpMetricsEncoder(MetricsOptions(counters_as_deltas=True, histograms_as_deltas=True), RESOURCE, START)
    decode(encoder.encode(snapshot(3, [1, 1]), START + 10))
    _, metrics = decode(encoder.encode(snapshot(5, [1, 1, 2]), START + 20))
    point = metrics["http.downstream_rq_total"][0].sum.data_points[0]
    assert metrics["http.downstream_rq_total"][0].sum.aggregation_temporality == DELTA
    assert (point.as_int, point.start_time_unix_nano, point.time_unix_nano) == (2, START + 10, START + 20)
    histogram = metrics["http.downstream_rq_time"][0].histogram.data_points[0]
    assert (histogram.count, histogram.sum, list(histogram.bucket_counts)[:3]) == (1, 2.5, [0, 0, 1])
    _, metrics = decode(encoder.encode(snapshot(5, [1, 1, 2]), START + 30))
    assert "http.downstream_rq_total" not in metrics and "http.downstream_rq_time" not in metrics
    assert "server.live" in metrics  # gauges always


def test_full_names_prefix_and_no_tags() -> None:
    encoder = OtlpMetricsEncoder(MetricsOptions(tags_as_attributes=False, tag_extracted_names=False,
                                                prefix="edge."), RESOURCE, START)
    _, metrics = decode(encoder.encode(snapshot(1, []), START + 1))
    (total,) = metrics["edge.http.main.downstream_rq_total"]
    assert attributes(total.sum.data_points[0]) == {}
    encoder = OtlpMetricsEncoder(MetricsOptions(tags_as_attributes=False), RESOURCE, START)
    _, metrics = decode(encoder.encode(snapshot(1, []), START + 1))
    assert attributes(metrics["http.downstream_rq_total"][0].sum.data_points[0]) == {}


def test_nothing_to_send_is_none() -> None:
    encoder = OtlpMetricsEncoder(MetricsOptions(), RESOURCE, START)
    assert encoder.encode({"counters": {}, "gauges": {}, "histograms": {}}, START + 1) is None
