"""`envoy.tracers.opentelemetry`: known by name so that its configs are refused with the reason.

Envoy exports OpenTelemetry spans over OTLP/gRPC (`grpc_service`), which needs an
HTTP/2 client that pylon does not have, or OTLP/HTTP (`http_service`), which pylon
does not implement yet. The W3C traceparent propagation would come with it.
"""

from __future__ import annotations

from typing import Any

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.config.errors import FieldError

TYPE_URL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"


class OpenTelemetryConfig(EnvoyStruct, kw_only=True):
    """config.trace.v3.OpenTelemetryConfig: every config is refused, naming what it would need."""

    grpc_service: Any = None
    http_service: Any = None
    service_name: str = ""
    resource_detectors: list[Any] = []
    sampler: Any = None
    max_cache_size: Any = None

    def __post_init__(self) -> None:
        if self.grpc_service is not None:
            raise FieldError("grpc_service", "OTLP/gRPC export needs an HTTP/2 client, which pylon does not have "
                                             "(use the Zipkin provider, envoy.tracers.zipkin)")
        raise FieldError("http_service", "OTLP/HTTP export is not supported yet (use the Zipkin provider, "
                                         "envoy.tracers.zipkin)")


registry.register_typed(registry.TRACER, TYPE_URL, OpenTelemetryConfig)
