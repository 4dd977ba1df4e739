"""Prometheus exposition: Envoy's metric names and tags, parsed back with prometheus-client's own parser."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pylon.stats.prometheus import extract_tags, prometheus_name, render_prometheus
from pylon.stats.store import StatsStore, merge_snapshots


def parse(snapshot: dict) -> dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, float]]:
    """{(sample name, sorted labels): (family type, value)} of the rendered exposition."""
    samples = {}
    for family in text_string_to_metric_families(render_prometheus(snapshot).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = (family.type, sample.value)
    return samples


@pytest.mark.parametrize(
    ("stat", "name", "labels"),
    [
        ("http.ingress.downstream_rq_total", "envoy_http_downstream_rq_total",
         {"envoy_http_conn_manager_prefix": "ingress"}),
        ("http.ingress.downstream_rq_2xx", "envoy_http_downstream_rq_xx",
         {"envoy_http_conn_manager_prefix": "ingress", "envoy_response_code_class": "2"}),
        ("cluster.backend.upstream_rq_total", "envoy_cluster_upstream_rq_total", {"envoy_cluster_name": "backend"}),
        ("cluster.backend.upstream_rq_503", "envoy_cluster_upstream_rq",
         {"envoy_cluster_name": "backend", "envoy_response_code": "503"}),
        ("cluster.backend.upstream_rq_5xx", "envoy_cluster_upstream_rq_xx",
         {"envoy_cluster_name": "backend", "envoy_response_code_class": "5"}),
        ("listener.127.0.0.1_10000.downstream_cx_total", "envoy_listener_downstream_cx_total",
         {"envoy_listener_address": "127.0.0.1_10000"}),
        ("listener.[__1]_10000.downstream_cx_total", "envoy_listener_downstream_cx_total",
         {"envoy_listener_address": "[__1]_10000"}),
        ("listener.127.0.0.1_10000.worker_1.downstream_cx_active", "envoy_listener_worker_downstream_cx_active",
         {"envoy_listener_address": "127.0.0.1_10000", "envoy_worker_id": "1"}),
        ("listener.admin.downstream_cx_total", "envoy_listener_admin_downstream_cx_total", {}),
        ("listener.0.0.0.0_443.http.ingress.downstream_rq_4xx", "envoy_listener_http_downstream_rq_xx",
         {"envoy_listener_address": "0.0.0.0_443", "envoy_http_conn_manager_prefix": "ingress",
          "envoy_response_code_class": "4"}),
        ("tcp.db.downstream_cx_total", "envoy_tcp_downstream_cx_total", {"envoy_tcp_prefix": "db"}),
        ("cluster.backend.outlier_detection.ejections_active", "envoy_cluster_outlier_detection_ejections_active",
         {"envoy_cluster_name": "backend"}),
        ("cluster.backend.health_check.healthy", "envoy_cluster_health_check_healthy",
         {"envoy_cluster_name": "backend"}),
        ("server.live", "envoy_server_live", {}),
        ("server.worker_0.watchdog_miss", "envoy_server_worker_watchdog_miss", {"envoy_worker_id": "0"}),
        ("cryptomb.rsa_queue_sizes", "envoy_cryptomb_rsa_queue_sizes", {}),
        ("listener.0.0.0.0_443.ssl.ciphers.ECDHE-RSA-AES128-GCM-SHA256", "envoy_listener_ssl_ciphers",
         {"envoy_listener_address": "0.0.0.0_443", "envoy_ssl_cipher": "ECDHE-RSA-AES128-GCM-SHA256"}),
        ("vhost.web.vcluster.api.upstream_rq_200", "envoy_vhost_vcluster_upstream_rq",
         {"envoy_virtual_host": "web", "envoy_virtual_cluster": "api", "envoy_response_code": "200"}),
    ],
)
def test_envoy_names_and_tags(stat: str, name: str, labels: dict[str, str]) -> None:
    assert prometheus_name(stat) == (name, labels)


@pytest.mark.parametrize(
    ("cluster", "stat"),
    [
        ("outbound|80||web.default.svc.cluster.local", "upstream_rq_total"),
        ("a.b", "upstream_rq_2xx"),
        ("svc.ns", "outlier_detection.ejections_active"),
        ("svc.ns", "health_check.attempt"),
        ("svc.ns", "circuit_breakers.default.cx_open"),
        ("svc.ns", "membership_healthy"),
        ("svc.default.version", "upstream_cx_active"),
    ],
)
def test_cluster_names_may_contain_dots(cluster: str, stat: str) -> None:
    name, labels = prometheus_name(f"cluster.{cluster}.{stat}")
    assert labels["envoy_cluster_name"] == cluster
    assert name.startswith("envoy_cluster_") and "svc" not in name


def test_extracted_name_keeps_the_non_tag_parts_in_order() -> None:
    assert extract_tags("cluster.a.b.internal.upstream_rq_503") == (
        "cluster.internal.upstream_rq",
        (("envoy.response_code", "503"), ("envoy.cluster_name", "a.b")),
    )


def test_counters_keep_their_name_and_type() -> None:
    text = render_prometheus({"counters": {"cluster.c.upstream_cx_connect_fail": 4}, "gauges": {},
                              "histograms": {}}).decode()
    assert "# TYPE envoy_cluster_upstream_cx_connect_fail counter\n" in text
    assert 'envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name="c"} 4' in text
    assert "_total" not in text and "HELP" not in text


def test_rendered_snapshot_parses_with_types_labels_and_values() -> None:
    worker_a, worker_b = StatsStore(), StatsStore()
    worker_a.counter("cluster.backend.upstream_rq_total").inc(3)
    worker_b.counter("cluster.backend.upstream_rq_total").inc(4)
    worker_a.counter("cluster.backend.upstream_rq_503").inc(2)
    worker_a.counter("http.ingress.downstream_rq_2xx").inc(5)
    worker_b.gauge("cluster.backend.upstream_cx_active").set(6)
    worker_a.gauge("server.live").set(1)
    samples = parse(merge_snapshots([worker_a.snapshot(), worker_b.snapshot()]))

    assert samples[("envoy_cluster_upstream_rq_total", (("envoy_cluster_name", "backend"),))] == ("counter", 7)
    # The parser names counter samples `<family>_total`, whatever the family name.
    assert samples[("envoy_cluster_upstream_rq_total",
                    (("envoy_cluster_name", "backend"), ("envoy_response_code", "503")))] == ("counter", 2)
    assert samples[("envoy_http_downstream_rq_xx_total",
                    (("envoy_http_conn_manager_prefix", "ingress"), ("envoy_response_code_class", "2")))] == (
        "counter", 5)
    assert samples[("envoy_cluster_upstream_cx_active", (("envoy_cluster_name", "backend"),))] == ("gauge", 6)
    assert samples[("envoy_server_live", ())] == ("gauge", 1)


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    store = StatsStore()
    hist = store.histogram("cluster.backend.upstream_rq_time", bounds=(1, 5, 10))
    for value in (0.5, 3, 3, 7, 50):
        hist.record(value)
    samples = parse(store.snapshot())
    labels = (("envoy_cluster_name", "backend"),)
    buckets = {le: samples[("envoy_cluster_upstream_rq_time_bucket", labels + (("le", le),))]
               for le in ("1", "5", "10", "+Inf")}
    assert buckets == {"1": ("histogram", 1), "5": ("histogram", 3), "10": ("histogram", 4), "+Inf": ("histogram", 5)}
    assert samples[("envoy_cluster_upstream_rq_time_sum", labels)] == ("histogram", 63.5)
    assert samples[("envoy_cluster_upstream_rq_time_count", labels)] == ("histogram", 5)


def test_bucket_bounds_print_as_envoy_does() -> None:
    store = StatsStore()
    store.histogram("server.initialization_time_ms").record(2)
    text = render_prometheus(store.snapshot()).decode()
    assert 'le="0.5"' in text and 'le="1"' in text and 'le="3600000"' in text


def test_families_are_counters_then_gauges_then_histograms() -> None:
    store = StatsStore()
    store.histogram("a.hist").record(1)
    store.gauge("b.gauge").set(1)
    store.counter("c.counter").inc()
    types = [line.split()[-1] for line in render_prometheus(store.snapshot()).decode().splitlines()
             if line.startswith("# TYPE")]
    assert types == ["counter", "gauge", "histogram"]


def test_label_values_are_escaped() -> None:
    text = render_prometheus({"counters": {'cluster.we"ird.upstream_rq_total': 1}, "gauges": {},
                              "histograms": {}}).decode()
    assert 'envoy_cluster_name="we\\"ird"' in text
    assert parse({"counters": {'cluster.we"ird.upstream_rq_total': 1}, "gauges": {}, "histograms": {}})
