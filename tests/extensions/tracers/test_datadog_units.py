"""Unit tests: Datadog context extraction (Datadog headers first, then W3C), injection, and the config's refusal."""

from __future__ import annotations

import pytest

from pylon.config.envoy import convert
from pylon.extensions.tracers.datadog import DatadogConfig, DdContext, extract, inject
from pylon.proxy.tracing import Span


def test_datadog_headers_win_over_w3c() -> None:
    trace_id, parent, priority, ctx = extract([
        (b"traceparent", b"00-463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-01"),
        (b"x-datadog-trace-id", b"1234567890"), (b"x-datadog-parent-id", b"987654321"),
        (b"x-datadog-sampling-priority", b"2"), (b"x-datadog-tags", b"_dd.p.tid=6b147c1f00000000,_dd.p.dm=-4,x=y")])
    assert (int(trace_id, 16), int(parent, 16), priority, ctx.tid, ctx.dm) == (1234567890, 987654321, 2,
                                                                              "6b147c1f00000000", "-4")


def test_w3c_context_and_its_dd_member() -> None:
    trace_id, parent, priority, ctx = extract([
        (b"traceparent", b"00-463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-01"),
        (b"tracestate", b"dd=s:2;p:0123456789abcdef;t.dm:-3,other=v")])
    assert (trace_id, parent, priority, ctx.tid, ctx.dm, ctx.w3c_parent, ctx.other_state) == (
        "48485a3953bb6124", "a2fb4a1d1a96d312", 2, "463ac35c9f6413ad", "-3", "0123456789abcdef", "other=v")
    # A dd priority that contradicts the sampled flag gives way to the flag.
    assert extract([(b"traceparent", b"00-463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-00"),
                    (b"tracestate", b"dd=s:2")])[2] == 0


@pytest.mark.parametrize("headers", [
    [], [(b"x-datadog-trace-id", b"abc"), (b"x-datadog-parent-id", b"1")], [(b"x-datadog-trace-id", b"0"),
                                                                             (b"x-datadog-parent-id", b"1")],
    [(b"traceparent", b"garbage")]])
def test_no_context(headers: list[tuple[bytes, bytes]]) -> None:
    assert extract(headers) is None


def test_inject_writes_both_styles() -> None:
    span = Span("000000000000006f", "00000000000000de", "", True, "op", "CLIENT", 0,
                extra=DdContext(-1, "", "", True, other_state="a=b"))
    out = dict(inject([(b"x-datadog-tags", b"old"), (b"tracestate", b"old"), (b"k", b"v")], span))
    assert out == {b"k": b"v", b"x-datadog-trace-id": b"111", b"x-datadog-parent-id": b"222",
                   b"x-datadog-sampling-priority": b"-1", b"traceparent": b"00-" + b"0" * 30 + b"6f-00000000000000de-00",
                   b"tracestate": b"dd=s:-1;p:00000000000000de,a=b"}


def test_remote_config_is_refused() -> None:
    with pytest.raises(Exception, match="remote_config"):
        convert({"collector_cluster": "a", "service_name": "s", "remote_config": {}}, DatadogConfig)
