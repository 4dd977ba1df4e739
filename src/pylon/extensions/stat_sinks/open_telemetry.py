"""`envoy.stat_sinks.open_telemetry`: the proxy's stats to an OpenTelemetry collector at each stats flush.

At every `stats_flush_interval` the supervisor merges the workers' stats (proxy/server.py) and this sink encodes
them as one OTLP metrics request (otlp_metrics.py says what goes in). The collector is a cluster, and clusters
live in the workers, so a worker sends it: over `http_service` (a protobuf POST to the URI's path with
`request_headers_to_add`, as the OpenTelemetry tracer's exporter) or `grpc_service`
(`opentelemetry.proto.collector.metrics.v1.MetricsService/Export`). A failed export is dropped (logged), as
Envoy's.

Refused by name: `custom_metric_conversions` (a matcher renaming, labelling or dropping stats) and
`resource_detectors` (their extensions are not implemented).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from pylon import __version__
from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, NotSupportedYet
from pylon.config.errors import FieldError
from pylon.config.services import GrpcClientService, HttpService
from pylon.extensions.stat_sinks.otlp_metrics import MetricsOptions, OtlpMetricsEncoder
from pylon.extensions.tracers.opentelemetry import GrpcExporter, HttpExporter
from pylon.proxy.stats_sinks import register_stats_sink

TYPE_URL = "type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig"
EXPORT_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


class SinkConfig(EnvoyStruct, kw_only=True):
    """extensions.stat_sinks.open_telemetry.v3.SinkConfig (Envoy 1.40's fields)."""

    grpc_service: GrpcClientService | None = None
    http_service: HttpService | None = None
    resource_detectors: list[NotSupportedYet] = []
    report_counters_as_deltas: bool = False
    report_histograms_as_deltas: bool = False
    emit_tags_as_attributes: bool = True
    use_tag_extracted_name: bool = True
    prefix: str = ""
    custom_metric_conversions: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if (self.grpc_service is None) == (self.http_service is None):
            raise FieldError("grpc_service", "exactly one of grpc_service and http_service is required")

    def options(self) -> MetricsOptions:
        return MetricsOptions(self.report_counters_as_deltas, self.report_histograms_as_deltas,
                              self.emit_tags_as_attributes, self.use_tag_extracted_name,
                              self.prefix + "." if self.prefix else "")


#: the resource of every report: Envoy's telemetry.sdk.* attributes, naming pylon (as its tracer does)
RESOURCE = {"telemetry.sdk.name": "pylon", "telemetry.sdk.language": "python", "telemetry.sdk.version": __version__}


class OpenTelemetrySink:
    """The supervisor's side: encode each flush, have a worker send it (`send`)."""

    def __init__(self, config: SinkConfig, send: Callable[[bytes], None], now: Callable[[], int] = time.time_ns
                 ) -> None:  # fmt: skip
        self.encoder = OtlpMetricsEncoder(config.options(), RESOURCE, now())
        self.send = send
        self.now = now

    def flush(self, snapshot: dict[str, Any]) -> None:
        body = self.encoder.encode(snapshot, self.now())
        if body is not None:
            self.send(body)

    def close(self) -> None:
        """Nothing to release: the workers' pools carry the reports."""


def _exporter(config: SinkConfig, worker: Any) -> HttpExporter | GrpcExporter:
    if config.http_service is not None:
        return HttpExporter(worker, config.http_service)
    assert config.grpc_service is not None  # one of the two, checked when read
    return GrpcExporter(worker, config.grpc_service, EXPORT_METHOD)


registry.register_typed(registry.STATS_SINK, TYPE_URL, SinkConfig)
register_stats_sink(SinkConfig, OpenTelemetrySink, _exporter)
