"""`envoy.tracers.datadog`: Datadog propagation and the agent's /v0.4/traces API, as Envoy 1.40 (dd-trace-cpp).

Observed from Envoy 1.40 against a test agent:
- Incoming context: the Datadog headers first (x-datadog-trace-id, -parent-id,
  -sampling-priority, x-datadog-tags' `_dd.p.*`), else a W3C traceparent (its
  low 64 bits are the trace id, the high ones `_dd.p.tid`; the `dd` member of
  tracestate gives the priority `s:` and `t.dm`); the span is a child of the
  caller's span. A new trace has a 128-bit id whose high half is the start time
  (seconds << 32, `_dd.p.tid`) and whose root span id is the low half.
- Sampling priority: an incoming one is kept; otherwise the connection manager's
  decision makes it 1 (with `_dd.p.dm=-0` and `_dd.agent_psr`) or -1. Every span
  is reported, whatever its priority (the agent decides).
- Upstream: x-datadog-trace-id / parent-id (decimal), -sampling-priority,
  x-datadog-tags (`_dd.p.tid`, `_dd.p.dm`, when known), and W3C traceparent
  (sampled when the priority is above 0) with `tracestate: dd=s:<p>;p:<span>`.
- Spans: name `envoy.proxy`, resource the operation (decorator, else ingress /
  egress), type web, error 1 for an error tag (not kept in meta), meta the tags (plus language,
  version, runtime-id; the local root also the `_dd.p.*` tags), metrics
  process_id (and `_sampling_priority_v1` on the local root).
- Reports: every 2 s, a msgpack array of traces (arrays of spans) POSTed to
  /v0.4/traces on collector_cluster (Host collector_hostname, else the cluster's
  name), 2 s timeout; counters tracing.datadog.reports_sent (a 200),
  reports_dropped (another status), reports_failed (no answer),
  reports_skipped_no_cluster.
Refused: `remote_config` (the agent's remote sampling rules).
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from typing import TYPE_CHECKING, Any, Final, Iterator

import msgspec

from pylon import __version__
from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, NonEmptyStr
from pylon.config.errors import FieldError
from pylon.extensions.tracers import traceparent
from pylon.proxy.span_export import SpanBatcher, batcher_for, post_report
from pylon.proxy.tracing import Span, random_hex64, register_driver

if TYPE_CHECKING:
    from pylon.proxy.hcm import HcmRuntime
    from pylon.proxy.worker import Worker

TYPE_URL = "type.googleapis.com/envoy.config.trace.v3.DatadogConfig"
TRACES_PATH: Final = b"/v0.4/traces"
FLUSH_INTERVAL: Final = 2.0
REQUEST_TIMEOUT: Final = 2.0
_TRACE_ID, _PARENT_ID, _PRIORITY, _TAGS = (b"x-datadog-trace-id", b"x-datadog-parent-id",
                                           b"x-datadog-sampling-priority", b"x-datadog-tags")
_DROPPED = frozenset((_TRACE_ID, _PARENT_ID, _PRIORITY, _TAGS, b"x-datadog-origin", traceparent.TRACEPARENT,
                      traceparent.TRACESTATE))
_NO_TID: Final = "0" * 16


class DatadogConfig(EnvoyStruct, kw_only=True):
    """config.trace.v3.DatadogConfig."""

    collector_cluster: NonEmptyStr
    service_name: NonEmptyStr
    collector_hostname: str = ""
    remote_config: Any = None

    def __post_init__(self) -> None:
        if self.remote_config is not None:
            raise FieldError("remote_config", "the agent's remote configuration (sampling rules) is not supported")

    def cluster_references(self) -> Iterator[tuple[str, str, str]]:
        """(field path, cluster, transport) of the agent's cluster, for the loader's checks."""
        yield "collector_cluster", self.collector_cluster, "http"


class DdContext:
    """A span's Datadog state: the sampling priority, the trace's `_dd.p.*` tags, the W3C parent it came from."""

    __slots__ = ("priority", "tid", "dm", "local_decision", "w3c_parent", "other_state", "root")

    def __init__(self, priority: int, tid: str, dm: str, local_decision: bool, w3c_parent: str | None = None,
                 other_state: str = "", root: bool = True) -> None:
        self.root = root  # the local root span (the request's), which carries the trace's decision when reported
        self.priority = priority
        self.tid = tid  # the trace id's high 64 bits in hex ("" when zero or unknown)
        self.dm = dm  # the decision maker (_dd.p.dm), "" when unknown
        self.local_decision = local_decision  # this proxy set the priority (not the caller)
        self.w3c_parent = w3c_parent  # the `p:` of an incoming tracestate's dd member (W3C extraction only)
        self.other_state = other_state  # other vendors' tracestate members, passed on


def _uint64(value: bytes | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    number = int(value)
    return number if 0 < number < 2**64 else None


def _dd_tags(value: bytes | None) -> dict[str, str]:
    tags = {}
    for item in (value or b"").decode("latin-1").split(","):
        key, sep, val = item.strip().partition("=")
        if sep and key.startswith("_dd.p."):
            tags[key] = val
    return tags


def _dd_member(state: str) -> tuple[dict[str, str], str]:
    """The `dd` member of a tracestate as {s, p, t.dm, ...}, and the other members."""
    fields: dict[str, str] = {}
    others = []
    for member in (m.strip() for m in state.split(",")):
        if member.startswith("dd="):
            for part in member[3:].split(";"):
                key, sep, val = part.partition(":")
                if sep:
                    fields[key] = val
        elif member:
            others.append(member)
    return fields, ",".join(others)


def extract(headers: list[tuple[bytes, bytes]]) -> tuple[str, str, int | None, DdContext] | None:
    """(trace id low hex, parent span id hex, priority or None, context) of the incoming trace, or None."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in _DROPPED:
            found.setdefault(name, value.strip())
    trace_id, parent_id = _uint64(found.get(_TRACE_ID)), _uint64(found.get(_PARENT_ID))
    if trace_id is not None and parent_id is not None:
        priority_text = found.get(_PRIORITY, b"")
        priority = int(priority_text) if priority_text.lstrip(b"-").isdigit() else None
        tags = _dd_tags(found.get(_TAGS))
        return (f"{trace_id:016x}", f"{parent_id:016x}", priority,
                DdContext(0, tags.get("_dd.p.tid", ""), tags.get("_dd.p.dm", ""), False))
    context = traceparent.extract([(name, value) for name, value in found.items()])
    if not isinstance(context, traceparent.TraceContext):
        return None
    dd, others = _dd_member(context.trace_state)
    priority = int(dd["s"]) if dd.get("s", "").lstrip("-").isdigit() else None
    if priority is None or (priority > 0) != context.sampled:
        priority = 1 if context.sampled else 0
    tid = context.trace_id[:16]
    return (context.trace_id[16:], context.span_id, priority,
            DdContext(0, "" if tid == _NO_TID else tid, dd.get("t.dm", ""), False, dd.get("p", _NO_TID), others))


def inject(forward: list[tuple[bytes, bytes]], span: Span) -> list[tuple[bytes, bytes]]:
    """`forward` without the incoming context, with `span`'s in the Datadog and W3C headers."""
    ctx: DdContext = span.extra
    out = [pair for pair in forward if pair[0] not in _DROPPED]
    out.append((_TRACE_ID, str(int(span.trace_id, 16)).encode()))
    out.append((_PARENT_ID, str(int(span.span_id, 16)).encode()))
    out.append((_PRIORITY, str(ctx.priority).encode()))
    tags = ",".join(item for item in (f"_dd.p.tid={ctx.tid}" if ctx.tid else "",
                                      f"_dd.p.dm={ctx.dm}" if ctx.dm else "") if item)
    if tags:
        out.append((_TAGS, tags.encode()))
    state = f"dd=s:{ctx.priority};p:{span.span_id}" + (f";t.dm:{ctx.dm}" if ctx.dm else "")
    if ctx.other_state:
        state += "," + ctx.other_state
    return traceparent.inject(out, (ctx.tid or _NO_TID) + span.trace_id, span.span_id, ctx.priority > 0, state)


class _Reporter:
    """Encodes a batch as the agent's msgpack traces and posts it; Envoy's counters."""

    def __init__(self, worker: "Worker", config: DatadogConfig) -> None:
        self.worker = worker
        self.cluster = config.collector_cluster
        self.host = (config.collector_hostname or config.collector_cluster).encode()
        self.service = config.service_name
        self.meta = {"language": "python", "version": f"pylon {__version__}", "runtime-id": str(uuid.uuid4())}
        self.process_id = float(os.getpid())
        self.headers = [(b"content-type", b"application/msgpack"), (b"datadog-meta-lang", b"python"),
                        (b"datadog-meta-lang-version", platform.python_version().encode()),
                        (b"datadog-meta-tracer-version", __version__.encode())]
        stats = worker.stats
        self.stats = {name: stats.counter("tracing.datadog." + name) for name in (
            "reports_sent", "reports_dropped", "reports_failed", "reports_skipped_no_cluster")}

    def _span(self, span: Span) -> dict[str, Any]:
        ctx: DdContext = span.extra
        meta = {**span.tags, **self.meta}
        error = meta.pop("error", None) == "true"  # the span's error field, not a tag, as dd-trace-cpp sends it
        metrics = {"process_id": self.process_id}
        if ctx.root:
            metrics["_sampling_priority_v1"] = float(ctx.priority)
            if ctx.local_decision and ctx.priority > 0:
                metrics["_dd.agent_psr"] = 1.0
            if ctx.dm:
                meta["_dd.p.dm"] = ctx.dm
            if ctx.tid:
                meta["_dd.p.tid"] = ctx.tid
            if ctx.w3c_parent is not None:
                meta["_dd.parent_id"] = ctx.w3c_parent
        return {"service": self.service, "name": "envoy.proxy", "resource": span.name,
                "trace_id": int(span.trace_id, 16), "span_id": int(span.span_id, 16),
                "parent_id": int(span.parent_id, 16) if span.parent_id else 0, "start": span.start_us * 1000,
                "duration": span.duration_us * 1000, "error": int(error),
                "meta": meta, "metrics": metrics, "type": "web"}

    def export(self, spans: list[Span]) -> None:
        traces: dict[str, list[dict[str, Any]]] = {}
        for span in spans:
            traces.setdefault(span.trace_id, []).append(self._span(span))
        body = msgspec.msgpack.encode(list(traces.values()))
        headers = [*self.headers, (b"x-datadog-trace-count", str(len(traces)).encode())]
        if not post_report(self.worker, self.cluster, TRACES_PATH, self.host, headers, body, self._answered,
                           REQUEST_TIMEOUT):
            self.stats["reports_skipped_no_cluster"].value += 1

    def _answered(self, status: int) -> None:
        if status == 0:
            self.stats["reports_failed"].value += 1
        elif status == 200:
            self.stats["reports_sent"].value += 1
        else:
            self.stats["reports_dropped"].value += 1


class DatadogDriver:
    """The Datadog tracer of one HCM in one worker (its batcher shared with HCMs of the same config)."""

    names_by_direction = True

    def __init__(self, config: DatadogConfig, hcm: "HcmRuntime") -> None:
        worker = hcm.worker
        key = "tracer.datadog:" + msgspec.json.encode(config).decode()
        self.batcher = batcher_for(worker, key, lambda: SpanBatcher(
            worker, _Reporter(worker, config).export, "tracing.datadog.", min_flush_spans=2**31,
            flush_interval=FLUSH_INTERVAL, count_timer=False))

    def start_span(self, headers: list[tuple[bytes, bytes]], traced: bool, name: str, kind: str,
                   start_us: int) -> tuple[Span | None, Any]:
        found = extract(headers)
        if found is None:
            low = random_hex64()
            ctx = DdContext(1 if traced else -1, f"{int(time.time()):08x}00000000", "-0" if traced else "", True)
            return Span(low, low, "", True, name, kind, start_us, extra=ctx), None
        trace_id, parent_id, priority, ctx = found
        if priority is None:
            ctx.priority, ctx.local_decision = (1, True) if traced else (-1, True)
            ctx.dm = "-0" if traced else ""
        else:
            ctx.priority = priority
        return Span(trace_id, random_hex64(), parent_id, True, name, kind, start_us, extra=ctx), None

    def child_span(self, parent: Span, name: str, start_us: int) -> Span:
        ctx: DdContext = parent.extra
        child = DdContext(ctx.priority, ctx.tid, ctx.dm, ctx.local_decision, None, ctx.other_state, root=False)
        return Span(parent.trace_id, random_hex64(), parent.span_id, True, name, "CLIENT", start_us, extra=child)

    def inject(self, forward: list[tuple[bytes, bytes]], span: Span, style: Any) -> list[tuple[bytes, bytes]]:
        return inject(forward, span)

    def report(self, spans: list[Span]) -> None:
        self.batcher.add(spans)


registry.register_typed(registry.TRACER, TYPE_URL, DatadogConfig)
register_driver(DatadogConfig, DatadogDriver)
