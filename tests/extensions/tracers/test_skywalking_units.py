"""Unit tests: sw8 parsing and writing, SegmentObject encoding (byte for byte against apache-skywalking's
generated classes), the SkyWalking reporter's cache, flush and counters, the config's refusals and redaction."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from skywalking.protocol.language_agent import Tracing_pb2

from pylon.config.envoy import convert
from pylon.extensions.tracers import segment, skywalking, sw8
from pylon.extensions.tracers.skywalking import SkyWalkingConfig
from pylon.proxy.redact import redact
from pylon.proxy.upstream.grpc_channel import NoHost
from pylon.stats.store import StatsStore


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


CONTEXT = sw8.SpanContext("trace-1", "segment-1", 3, "svc", "inst", "/ep", "10.0.0.1:80")
VALUE = f"1-{_b64('trace-1')}-{_b64('segment-1')}-3-{_b64('svc')}-{_b64('inst')}-{_b64('/ep')}-{_b64('10.0.0.1:80')}"


def test_sw8_round_trip_and_the_flag_envoy_writes() -> None:
    assert sw8.encode(CONTEXT) == VALUE.encode()
    assert sw8.parse(VALUE.encode()) == CONTEXT
    assert sw8.parse(b"0" + VALUE.encode()[1:]) == CONTEXT  # an unsampled flag is read (Envoy traces it anyway)


def test_sw8_fields_without_padding_or_not_base64() -> None:
    unpadded = VALUE.replace("=", "").encode()
    assert sw8.parse(unpadded) == CONTEXT
    # cpp2sky decodes a field that is not base64 to "" rather than refusing the header.
    odd = sw8.parse(b"1-!!!-" + VALUE.encode().split(b"-", 2)[2])
    assert odd is not None and odd.trace_id == "" and odd.segment_id == "segment-1"


@pytest.mark.parametrize("value", [b"garbage", VALUE.rsplit("-", 1)[0].encode(), (VALUE + "-x").encode(),
                                   b"2" + VALUE.encode()[1:], VALUE.replace("-3-", "-x-").encode(),
                                   VALUE.replace("-3-", "-2147483648-").encode(), b""])
def test_sw8_refused_as_envoy_refuses(value: bytes) -> None:
    assert sw8.parse(value) is None


def test_sw8_span_id_is_an_int32_and_a_minus_is_a_separator() -> None:
    parsed = sw8.parse(VALUE.replace("-3-", "-2147483647-").encode())
    assert parsed is not None and parsed.span_id == 2**31 - 1
    assert sw8.parse(VALUE.replace("-3-", "--3-").encode()) is None  # nine fields, as cpp2sky splits it


def _reference_segment(entry: segment.SegmentSpan, exit_span: segment.SegmentSpan) -> bytes:
    message = Tracing_pb2.SegmentObject(traceId="trace-1", traceSegmentId="seg-2", service="svc",
                                        serviceInstance="inst")
    for item in (entry, exit_span):
        span = message.spans.add(spanId=item.span_id, parentSpanId=item.parent_span_id, startTime=item.start_ms,
                                 endTime=item.end_ms, operationName=item.operation, peer=item.peer,
                                 spanType=item.span_type, spanLayer=Tracing_pb2.SpanLayer.Http, componentId=9000,
                                 isError=item.is_error)
        for key, value in item.tags:
            span.tags.add(key=key, value=value)
        if item.ref is not None:
            ref = item.ref
            span.refs.add(refType=Tracing_pb2.RefType.CrossProcess, traceId=ref.trace_id,
                          parentTraceSegmentId=ref.segment_id, parentSpanId=ref.span_id, parentService=ref.service,
                          parentServiceInstance=ref.instance, parentEndpoint=ref.endpoint,
                          networkAddressUsedAtPeer=ref.target)
    return message.SerializeToString()


def test_segment_bytes_equal_protobufs() -> None:
    long_value = "v" * 300  # a length past one varint byte
    entry = segment.SegmentSpan(0, -1, 1796507696944, 1796507696946, "/x?q=1", segment.SPAN_ENTRY,
                                [("url", "http://a/x?q=1"), ("status_code", "503"), ("error", "true"), ("k", "")],
                                peer="127.0.0.1", is_error=True, ref=CONTEXT)
    exit_span = segment.SegmentSpan(1, 0, 1796507696944, 1796507696945, "/x?q=1", segment.SPAN_EXIT,
                                    [("upstream_address", "127.0.0.1:8080"), ("long", long_value)],
                                    peer="127.0.0.1:8080")
    ours = segment.encode("trace-1", "seg-2", "svc", "inst", [entry, exit_span])
    assert ours == _reference_segment(entry, exit_span)
    decoded = Tracing_pb2.SegmentObject.FromString(ours)
    assert decoded.spans[0].parentSpanId == -1 and decoded.spans[0].refs[0].parentSpanId == 3


class _Call:
    """A stand-in for grpc.aio's StreamUnaryCall: takes the outbox, ends when told."""

    def __init__(self, requests: Any) -> None:
        self.requests = requests
        self.callbacks: list[Any] = []

    def add_done_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def done(self) -> bool:
        return True

    def code(self) -> str:
        return "UNAVAILABLE"

    def end(self) -> None:
        for callback in self.callbacks:
            callback(self)


class _Client:
    def __init__(self) -> None:
        self.hosts = False
        self.calls: list[_Call] = []
        self.cluster_name = "sw"

    def open_stream(self, method: str, requests: Any, metadata: tuple[tuple[str, str], ...] = ()) -> _Call:
        assert method == "/skywalking.v3.TraceSegmentReportService/collect"
        assert metadata == (("authentication", "token"),)
        if not self.hosts:
            raise NoHost(self.cluster_name)
        call = _Call(requests)
        self.calls.append(call)
        return call


class _Worker:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stats = StatsStore()


def test_reporter_caches_drops_oldest_flushes_and_retries() -> None:
    loop = asyncio.new_event_loop()
    try:
        worker = _Worker(loop)
        config = convert({"grpc_service": {"envoy_grpc": {"cluster_name": "sw"}}}, SkyWalkingConfig)
        reporter = skywalking._Reporter(worker, config, 2, "token")  # type: ignore[arg-type]
        client = reporter.client = _Client()  # type: ignore[assignment]
        loop.run_until_complete(asyncio.sleep(0))  # the first attempt: no host, a retry is scheduled
        assert reporter.queue is None
        for body in (b"s1", b"s2", b"s3"):
            reporter.report(body)
        counters = {name: worker.stats.counter("tracing.skywalking." + name) for name in (
            "segments_sent", "segments_dropped", "cache_flushed", "segments_flushed")}
        assert list(reporter.cache) == [b"s2", b"s3"] and counters["segments_dropped"].value == 1
        client.hosts = True
        reporter._establish()  # what the retry timer does
        queue = reporter.queue
        assert queue is not None and [queue.get_nowait(), queue.get_nowait()] == [b"s2", b"s3"]
        assert {name: c.value for name, c in counters.items()} == {
            "segments_sent": 2, "segments_dropped": 1, "cache_flushed": 1, "segments_flushed": 2}
        reporter.report(b"s4")
        assert queue.get_nowait() == b"s4" and counters["segments_sent"].value == 3
        client.calls[0].end()  # the collector closed the stream: cache again until the retry opens one
        assert reporter.queue is None
        reporter.report(b"s5")
        assert list(reporter.cache) == [b"s5"] and counters["segments_sent"].value == 3
    finally:
        loop.close()


def test_outbox_yields_until_none() -> None:
    async def drain() -> list[bytes]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        for item in (b"a", b"b", None):
            queue.put_nowait(item)
        return [body async for body in skywalking._outbox(queue)]
    assert asyncio.run(drain()) == [b"a", b"b"]


@pytest.mark.parametrize("fields, where", [
    ({}, "grpc_service"),
    ({"grpc_service": {"google_grpc": {"target_uri": "x", "stat_prefix": "y"}}}, "google_grpc"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "sw"}}, "client_config": {"max_cache_size": -1}},
     "max_cache_size"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "sw"}}, "client_config": {"other": 1}}, "other"),
])
def test_config_refusals_name_the_field(fields: dict[str, object], where: str) -> None:
    with pytest.raises(Exception) as info:
        convert(fields, SkyWalkingConfig)
    assert where in str(info.value) or where in repr(info.value.__cause__)


def test_backend_token_is_redacted_in_config_dumps() -> None:
    dumped = redact({"typed_config": {"client_config": {"backend_token": "s3cret", "service_name": "front"}}})
    assert dumped["typed_config"]["client_config"] == {"backend_token": "[redacted]", "service_name": "front"}
    camel = redact({"clientConfig": {"backendToken": "s3cret"}})
    assert camel == {"clientConfig": {"backendToken": "[redacted]"}}
