"""The OpenTelemetry stats sink's config: what it accepts, and each refusal naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from pylon.extensions.stat_sinks.open_telemetry import OpenTelemetrySink

HTTP_SERVICE = {"http_uri": {"uri": "http://c:4318/v1/metrics", "cluster": "c", "timeout": "1s"}}


def bootstrap(**sink: Any) -> dict[str, Any]:
    return {"stats_sinks": [{"name": "envoy.stat_sinks.open_telemetry", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig", **sink}}]}


def test_a_flush_is_encoded_and_handed_on() -> None:
    config = parse_bootstrap(bootstrap(http_service=HTTP_SERVICE, prefix="edge"), "b.yaml").stats_sinks[0]
    sent: list[bytes] = []
    times = iter([100, 200])
    sink = OpenTelemetrySink(config.typed_config, sent.append, lambda: next(times))
    sink.flush({"counters": {"http.main.downstream_rq_total": 2}, "gauges": {}, "histograms": {}})
    assert len(sent) == 1 and b"edge.http.downstream_rq_total" in sent[0]


@pytest.mark.parametrize(("sink", "path", "message"), [
    ({}, "grpc_service", "exactly one of grpc_service and http_service"),
    ({"http_service": HTTP_SERVICE, "grpc_service": {"envoy_grpc": {"cluster_name": "c"}}}, "grpc_service",
     "exactly one"),
    ({"http_service": HTTP_SERVICE, "custom_metric_conversions": {}}, "custom_metric_conversions", "not supported"),
    ({"http_service": HTTP_SERVICE, "resource_detectors": [{"name": "x"}]}, "resource_detectors", "not supported"),
])  # fmt: skip
def test_refusals_name_the_field(sink: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(bootstrap(**sink), "b.yaml")
    assert f"stats_sinks[0].typed_config.{path}" in str(info.value) and message in str(info.value), str(info.value)
