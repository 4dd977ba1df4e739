"""A test SkyWalking OAP collector: skywalking.v3.TraceSegmentReportService/collect on grpcio.

Keeps every SegmentObject as it arrives on the (long-lived, client-streaming) call, decoded with
apache-skywalking's generated classes into plain data, and each stream's metadata, so tests can compare
what pylon and Envoy report.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from typing import Any

import grpc
from skywalking.protocol.common.Command_pb2 import Commands
from skywalking.protocol.language_agent import Tracing_pb2, Tracing_pb2_grpc


def segment_dict(segment: Tracing_pb2.SegmentObject) -> dict[str, Any]:
    """A segment as plain data (enums by name, tags as a list of pairs)."""
    spans = []
    for span in segment.spans:
        spans.append({
            "span_id": span.spanId, "parent": span.parentSpanId, "start": span.startTime, "end": span.endTime,
            "operation": span.operationName, "peer": span.peer, "type": Tracing_pb2.SpanType.Name(span.spanType),
            "layer": Tracing_pb2.SpanLayer.Name(span.spanLayer), "component": span.componentId,
            "error": span.isError, "skip": span.skipAnalysis, "tags": [(t.key, t.value) for t in span.tags],
            "refs": [{"trace_id": r.traceId, "segment_id": r.parentTraceSegmentId, "span_id": r.parentSpanId,
                      "service": r.parentService, "instance": r.parentServiceInstance,
                      "endpoint": r.parentEndpoint, "target": r.networkAddressUsedAtPeer,
                      "type": Tracing_pb2.RefType.Name(r.refType)} for r in span.refs]})
    return {"trace_id": segment.traceId, "segment_id": segment.traceSegmentId, "service": segment.service,
            "instance": segment.serviceInstance, "spans": spans}


class SkyWalkingCollector:
    """Records segments and the metadata of each collect stream."""

    def __init__(self) -> None:
        self.segments: list[dict[str, Any]] = []
        self.streams: list[dict[str, str]] = []
        self.lock = threading.Lock()
        store = self

        class Service(Tracing_pb2_grpc.TraceSegmentReportServiceServicer):
            def collect(self, request_iterator: Any, context: grpc.ServicerContext) -> Commands:
                with store.lock:
                    store.streams.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
                for segment in request_iterator:
                    with store.lock:
                        store.segments.append(segment_dict(segment))
                return Commands()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        Tracing_pb2_grpc.add_TraceSegmentReportServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def wait(self, count: int, timeout: float = 12.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.segments) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        with self.lock:
            return list(self.segments)

    def close(self) -> None:
        self.server.stop(0)
