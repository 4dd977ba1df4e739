"""Test OTLP collectors: an OTLP/HTTP receiver (POST /v1/traces, protobuf) and an OTLP/gRPC receiver on grpcio, and
the same two for metrics (the OpenTelemetry stats sink's reports).

Both decode `ExportTraceServiceRequest`s with opentelemetry-proto and keep every span with its resource and
scope, plus the request metadata (headers), so tests can compare what pylon and Envoy export.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

KINDS = {Span.SPAN_KIND_SERVER: "SERVER", Span.SPAN_KIND_CLIENT: "CLIENT", Span.SPAN_KIND_INTERNAL: "INTERNAL",
         Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED"}


def by_number(message: Any, number: int) -> Any:
    """The field `number` of `message`, whatever its name. xds-protos ships an older copy of OTLP's trace.proto at
    the same module path as opentelemetry-proto (ResourceSpans field 2 named `instrumentation_library_spans`, its
    field 1 `instrumentation_library`, where the current file says `scope_spans` and `scope`: same numbers, same
    wire format), and whichever package pip installed last owns the file; so the tests read those by number."""
    return getattr(message, message.DESCRIPTOR.fields_by_number[number].name)


def scope_spans(resource_spans: Any) -> Any:
    """ResourceSpans.scope_spans (field 2)."""
    return by_number(resource_spans, 2)


def has_scope(spans_of_scope: Any) -> bool:
    """Whether ScopeSpans.scope (field 1) is set."""
    return spans_of_scope.HasField(spans_of_scope.DESCRIPTOR.fields_by_number[1].name)


def attributes(pairs: list[KeyValue]) -> dict[str, Any]:
    """OTLP attributes as a dict (string, int, bool and double values)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        out[pair.key] = getattr(pair.value, pair.value.WhichOneof("value") or "string_value")
    return out


def span_dict(span: Span, resource: dict[str, Any], scope: dict[str, str]) -> dict[str, Any]:
    """One span as plain data: hex ids, kind name, attributes, its resource and scope."""
    return {"trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(), "parent_id": span.parent_span_id.hex(),
            "name": span.name, "kind": KINDS[span.kind], "attributes": attributes(span.attributes),
            "trace_state": span.trace_state, "status": span.status.code, "start": span.start_time_unix_nano,
            "end": span.end_time_unix_nano, "resource": resource, "scope": scope}


class _Store:
    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests: list[dict[str, str]] = []  # headers / metadata of each export
        self.lock = threading.Lock()

    def add(self, body: bytes, headers: dict[str, str]) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        with self.lock:
            self.requests.append(headers)
            for rs in request.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in scope_spans(rs):
                    scope = {"name": by_number(ss, 1).name, "version": by_number(ss, 1).version}
                    self.spans.extend(span_dict(span, resource, scope) for span in ss.spans)

    def wait(self, count: int, timeout: float = 12.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.spans) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        with self.lock:
            return list(self.spans)


class HttpCollector(_Store):
    """OTLP/HTTP: records the protobuf bodies POSTed to it, answers 200 with an empty ExportTraceServiceResponse."""

    def __init__(self) -> None:
        super().__init__()
        store = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                headers[":path"] = self.path
                store.add(body, headers)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GrpcCollector(_Store):
    """OTLP/gRPC: opentelemetry.proto.collector.trace.v1.TraceService/Export on grpcio (HTTP/2 cleartext)."""

    def __init__(self) -> None:
        super().__init__()
        store = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
                headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
                store.add(request.SerializeToString(), headers)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(0)


class _MetricsStore:
    """What a metrics collector keeps: each export's headers (":path" among them over HTTP) and body, undecoded
    (tests decode them: tests/extensions/stat_sinks/test_otlp_metrics.py `decode`)."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        super().__init__()  # the HTTP receiver's own (its lock and server), when it is one
        self.lock = threading.Lock()

    def add(self, body: bytes, headers: dict[str, str]) -> None:
        with self.lock:
            self.reports.append({"headers": headers, "body": body})


class HttpMetricsCollector(_MetricsStore, HttpCollector):
    """OTLP/HTTP for metrics (POST /v1/metrics): the HTTP receiver above, keeping reports."""


class GrpcMetricsCollector(_MetricsStore):
    """OTLP/gRPC for metrics: opentelemetry.proto.collector.metrics.v1.MetricsService/Export on grpcio."""

    def __init__(self) -> None:
        super().__init__()
        store = self

        class Service(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
                headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
                store.add(request.SerializeToString(), headers)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(0)
