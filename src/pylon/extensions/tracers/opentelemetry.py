"""`envoy.tracers.opentelemetry`: W3C trace context and OTLP export, as Envoy 1.40's OpenTelemetry tracer.

Spans: a request continues an incoming `traceparent` (same trace, the caller's
span as parent, its sampled flag and tracestate; a malformed one means no span,
traceparent.py) or starts a trace with a random 128-bit id, sampled by the
connection manager's decision. Every span gets its own random id (no shared
spans, unlike Zipkin), named by the route's decorator or else "ingress" / "egress"
by the listener's direction; the router's start_child_span makes a CLIENT child. The
upstream gets `traceparent`/`tracestate` of the outermost span it is under.
Tags become string attributes (otlp.py).

Export: batched per worker (span_export.py: 5 spans or every 5 s; at most
`max_cache_size` waiting, default 1024, the rest dropped and counted) to
- `http_service`: OTLP/HTTP, a protobuf POST to the URI's path on its cluster
  through pylon's pool, with request_headers_to_add (literal values); or
- `grpc_service`: OTLP/gRPC TraceService/Export on the cluster's hosts
  (proxy/upstream/grpc_channel.py).
Envoy's counters under tracing.opentelemetry.: spans_sent (spans handed to the
exporter), timer_flushed, spans_dropped.

Refused by name: `sampler` and `resource_detectors` (their extensions are not
implemented), and `exporter` (1.40's custom exporter extension).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final, Iterator

import msgspec

from pylon import __version__
from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, UInt32
from pylon.config.errors import FieldError
from pylon.config.services import GrpcClientService, HttpService
from pylon.extensions.tracers import otlp, traceparent
from pylon.proxy.headers import HeaderList, HeaderOps, compile_header_level
from pylon.proxy.local_address import envoy_local_address
from pylon.proxy.span_export import SpanBatcher, batcher_for, post_report
from pylon.proxy.tracing import Span, random_hex64, register_driver

if TYPE_CHECKING:
    from pylon.proxy.hcm import HcmRuntime
    from pylon.proxy.worker import Worker

TYPE_URL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
EXPORT_METHOD: Final = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
USER_AGENT: Final = f"OTel-OTLP-Exporter-Pylon/{__version__}"
STAT_PREFIX: Final = "tracing.opentelemetry."
DEFAULT_MAX_CACHE_SIZE: Final = 1024
log = logging.getLogger(__name__)


def _extension_name(extension: Any) -> str:
    if isinstance(extension, dict):
        typed = extension.get("typed_config")
        return str(extension.get("name") or (typed.get("@type") if isinstance(typed, dict) else "") or "")
    return ""


class OpenTelemetryConfig(EnvoyStruct, kw_only=True):
    """config.trace.v3.OpenTelemetryConfig (Envoy 1.40's fields)."""

    grpc_service: GrpcClientService | None = None
    http_service: HttpService | None = None
    exporter: Any = None
    service_name: str = ""
    resource_detectors: list[Any] = []
    sampler: Any = None
    max_cache_size: UInt32 | None = None
    set_telemetry_sdk_resource_attributes: bool = True
    set_service_name_resource_attribute: bool = True
    set_instrumentation_scope: bool = True

    def __post_init__(self) -> None:
        given = [name for name in ("grpc_service", "http_service", "exporter") if getattr(self, name) is not None]
        if len(given) > 1:
            raise FieldError(given[1], f"only one of grpc_service, http_service, exporter may be set (got "
                                       f"{', '.join(given)})")
        if self.exporter is not None:
            raise FieldError("exporter", "custom span exporter extensions are not supported; use grpc_service or "
                                         "http_service")
        if self.sampler is not None:
            raise FieldError("sampler", f"samplers are not supported yet ({_extension_name(self.sampler)!r}); "
                                        "without one, sampling follows the connection manager's tracing "
                                        "percentages and the incoming traceparent, as in Envoy")
        for k, detector in enumerate(self.resource_detectors):
            raise FieldError(f"resource_detectors[{k}]", "resource detectors are not supported yet "
                                                         f"({_extension_name(detector)!r})")
        if self.http_service is not None:
            for k, option in enumerate(self.http_service.request_headers_to_add):
                value = option.header.value
                if "%" in value.replace("%%", ""):
                    raise FieldError(f"http_service.request_headers_to_add[{k}].header.value",
                                     "substitution formatters are not supported in the OTLP exporter's headers")
                try:
                    compile_header_level([option], ())
                except ValueError as exc:
                    raise FieldError(f"http_service.request_headers_to_add[{k}]", str(exc)) from None

    def cluster_references(self) -> Iterator[tuple[str, str, str]]:
        """(field path, cluster, "grpc" or "http") of the collector cluster, for the loader's checks."""
        if self.grpc_service is not None and self.grpc_service.envoy_grpc is not None:
            yield "grpc_service.envoy_grpc.cluster_name", self.grpc_service.envoy_grpc.cluster_name, "grpc"
        if self.http_service is not None:
            yield "http_service.http_uri.cluster", self.http_service.http_uri.cluster, "http"


def resource_attributes(config: OpenTelemetryConfig) -> dict[str, str]:
    """The resource of every report: Envoy's telemetry.sdk.* (naming pylon) and service.name."""
    attributes = {}
    if config.set_telemetry_sdk_resource_attributes:
        attributes.update({"telemetry.sdk.name": "pylon", "telemetry.sdk.language": "python",
                           "telemetry.sdk.version": __version__})
    if config.set_service_name_resource_attribute:
        attributes["service.name"] = config.service_name or "unknown_service:pylon"
    return attributes


class HttpExporter:
    """OTLP/HTTP: one protobuf POST per batch through the worker's pool for the URI's cluster."""

    def __init__(self, worker: "Worker", service: HttpService) -> None:
        self.worker = worker
        uri = service.http_uri
        self.cluster = uri.cluster
        self.path = uri.path.encode()
        self.host = uri.host.encode()
        self.timeout = float(uri.timeout) or None
        headers = HeaderList([(b"content-type", b"application/x-protobuf"), (b"user-agent", USER_AGENT.encode()),
                              (b"x-envoy-internal", b"true"),
                              (b"x-forwarded-for", envoy_local_address().encode())])
        if self.timeout is not None:
            headers.add(b"x-envoy-expected-rq-timeout-ms", str(int(self.timeout * 1000)).encode())
        HeaderOps([compile_header_level(service.request_headers_to_add, ())]).apply(headers)
        self.headers = headers.items

    def send(self, body: bytes) -> None:
        if not post_report(self.worker, self.cluster, self.path, self.host, self.headers, body, _answered,
                           self.timeout):
            log.debug("OTLP/HTTP export skipped: cluster %s has no host", self.cluster)


def _answered(status: int) -> None:
    if status != 200:
        log.debug("OTLP/HTTP export answered %s", status or "nothing")


class GrpcExporter:
    """OTLP/gRPC: one Export call per batch on the cluster's hosts (`method`: the traces' TraceService/Export, or
    the stats sink's MetricsService/Export)."""

    def __init__(self, worker: "Worker", service: GrpcClientService, method: str = EXPORT_METHOD) -> None:
        from pylon.proxy.upstream.grpc_channel import GrpcClusterClient  # grpcio only for configs that export so

        self.client = GrpcClusterClient(worker, service, USER_AGENT)
        self.method = method

    def send(self, body: bytes) -> None:
        self.client.call_soon(self.method, body, _exported)


def _exported(response: bytes | None, error: BaseException | None) -> None:
    if error is not None:
        log.debug("OTLP/gRPC export failed: %s", error)


class _Reporter:
    """Encodes a batch under the config's resource and scope and hands it to the exporter (if any)."""

    def __init__(self, worker: "Worker", config: OpenTelemetryConfig) -> None:
        self.exporter: HttpExporter | GrpcExporter | None = None
        if config.http_service is not None:
            self.exporter = HttpExporter(worker, config.http_service)
        elif config.grpc_service is not None:
            self.exporter = GrpcExporter(worker, config.grpc_service)
        self.resource = resource_attributes(config)
        self.scope = ("pylon", __version__) if config.set_instrumentation_scope else None
        self.spans_sent = worker.stats.counter(STAT_PREFIX + "spans_sent")

    def export(self, spans: list[Span]) -> None:
        if self.exporter is None:
            return  # Envoy: no exporter configured, the spans go nowhere
        self.spans_sent.value += len(spans)
        self.exporter.send(otlp.encode(spans, self.resource, self.scope))


def _random_trace_id() -> str:
    return random_hex64() + random_hex64()


class OpenTelemetryDriver:
    """The OpenTelemetry tracer of one HCM in one worker (its batcher shared with HCMs of the same config)."""

    names_by_direction = True

    def __init__(self, config: OpenTelemetryConfig, hcm: "HcmRuntime") -> None:
        worker = hcm.worker
        key = "tracer.opentelemetry:" + msgspec.json.encode(config, enc_hook=repr).decode()
        max_pending = config.max_cache_size if config.max_cache_size is not None else DEFAULT_MAX_CACHE_SIZE
        self.batcher = batcher_for(worker, key, lambda: SpanBatcher(
            worker, _Reporter(worker, config).export, STAT_PREFIX, max_pending=max_pending))

    def start_span(self, headers: list[tuple[bytes, bytes]], traced: bool, name: str, kind: str,
                   start_us: int) -> tuple[Span | None, Any]:
        context = traceparent.extract(headers)
        if context is None:
            return Span(_random_trace_id(), random_hex64(), "", traced, name, kind, start_us), None
        if not isinstance(context, traceparent.TraceContext):
            return None, None  # a malformed traceparent: Envoy makes no span and leaves the headers alone
        return Span(context.trace_id, random_hex64(), context.span_id, context.sampled, name, kind, start_us,
                    trace_state=context.trace_state), None

    def child_span(self, parent: Span, name: str, start_us: int) -> Span:
        return Span(parent.trace_id, random_hex64(), parent.span_id, parent.sampled, name, "CLIENT", start_us,
                    trace_state=parent.trace_state)

    def inject(self, forward: list[tuple[bytes, bytes]], span: Span, style: Any) -> list[tuple[bytes, bytes]]:
        return traceparent.inject(forward, span.trace_id, span.span_id, span.sampled, span.trace_state)

    def report(self, spans: list[Span]) -> None:
        self.batcher.add(spans)


registry.register_typed(registry.TRACER, TYPE_URL, OpenTelemetryConfig)
register_driver(OpenTelemetryConfig, OpenTelemetryDriver)
