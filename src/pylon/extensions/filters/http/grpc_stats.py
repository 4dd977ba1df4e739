"""envoy.filters.http.grpc_stats: per-method gRPC call counts on the upstream cluster, as Envoy 1.40 names them.

A gRPC request (content-type application/grpc or application/grpc+...; gRPC-Web is the grpc_web filter's to
count) whose path is `/<service>/<method>` (the query aside; anything else is not counted at all) is charged to its cluster once the call's grpc-status is known (the response's trailers, or its
head for a trailers-only answer, the proxy's own gRPC local replies included):
`cluster.<c>.grpc.<service>.<method>.{total, success | failure, <grpc-status>}` (a status outside 0..16 is
`other`), plus `request_message_count` and `response_message_count` (messages seen in each body, counted as
their first byte passes, split bodies included; a response's only when it is gRPC too) and, with `enable_upstream_stats`, the `upstream_rq_time`
histogram for calls the upstream answered. Which calls get their own names: all with `stats_for_all_methods`
(default false in Envoy 1.40), those in `individual_method_stats_allowlist`, else none: the others count under
`cluster.<c>.grpc.{total, ...}`. `replace_dots_in_grpc_service_name` writes the service's dots as `_`.
A response without a grpc-status (an HTTP/1.1 upstream without enable_trailers) charges only the message counts,
as Envoy. Counters are made when first charged, so /stats lists what Envoy's lists. The bodies pass unchanged,
their framing too (checked side by side with Envoy in tests/proxy/test_proxy_grpc_stats.py).

Refused by name: `emit_filter_state` (pylon's access log has no %FILTER_STATE% to read it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, NonEmptyStr
from pylon.config.errors import FieldError
from pylon.extensions.filters.common.grpc_call_stats import charge_status, service_and_method
from pylon.extensions.filters.common.grpc_frames import FrameCounter
from pylon.proxy.filters.http import register_filter
from pylon.proxy.router import is_grpc_request

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"


class GrpcService(EnvoyStruct, kw_only=True):
    """config.core.v3.GrpcMethodList.Service."""

    name: NonEmptyStr
    method_names: list[NonEmptyStr]

    def __post_init__(self) -> None:
        if not self.method_names:
            raise FieldError("method_names", "must name at least one method")


class GrpcMethodList(EnvoyStruct, kw_only=True):
    """config.core.v3.GrpcMethodList."""

    services: list[GrpcService] = []


class FilterConfig(EnvoyStruct, kw_only=True):
    """extensions.filters.http.grpc_stats.v3.FilterConfig."""

    emit_filter_state: bool = False
    individual_method_stats_allowlist: GrpcMethodList | None = None
    stats_for_all_methods: bool | None = None
    enable_upstream_stats: bool = False
    replace_dots_in_grpc_service_name: bool = False

    def __post_init__(self) -> None:
        if self.individual_method_stats_allowlist is not None and self.stats_for_all_methods is not None:
            raise ValueError("at most one of individual_method_stats_allowlist, stats_for_all_methods may be set")
        if self.emit_filter_state:
            raise FieldError("emit_filter_state", "not supported: pylon's access log has no %FILTER_STATE% to "
                                                  "read the message counts from")


class _Call:
    """One counted call: where its stats go and what has been seen of it."""

    __slots__ = ("names", "request", "response", "status", "upstream", "grpc_response")

    def __init__(self, names: str) -> None:
        self.names = names  # "grpc.<service>.<method>" or "grpc"
        self.request = FrameCounter()
        self.response = FrameCounter()
        self.status: bytes | None = None
        self.upstream = False  # the upstream answered (not a local reply): upstream_rq_time applies
        self.grpc_response = False  # the response is gRPC too: its messages are counted


class _Names(NamedTuple):
    all_methods: bool
    allowed: frozenset[tuple[str, str]]
    dots: bool


class GrpcStatsFilter:
    """One HCM's grpc_stats filter in one worker."""

    def __init__(self, name: str, config: FilterConfig, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.stats = stats
        allowlist = config.individual_method_stats_allowlist
        allowed = frozenset((service.name, method) for service in (allowlist.services if allowlist else ())
                            for method in service.method_names)
        self.names = _Names(bool(config.stats_for_all_methods), allowed, config.replace_dots_in_grpc_service_name)
        self.upstream_stats = config.enable_upstream_stats
        self.calls: dict[Any, _Call] = {}

    def _stat_names(self, resolved: tuple[str, str]) -> str:
        if self.names.all_methods or resolved in self.names.allowed:
            service, method = resolved
            if self.names.dots:
                service = service.replace(".", "_")
            return f"grpc.{service}.{method}"
        return "grpc"

    # ---------------------------------------------------------------- the request side
    def decode_headers(self, stream: Any) -> bool:
        if not is_grpc_request(stream.headers):
            return True
        resolved = service_and_method(stream.path)
        if resolved is None:
            return True
        self.calls[stream] = _Call(self._stat_names(resolved))
        stream.on_finish(lambda: self._charge(stream))
        return True

    def wants_request_data(self, stream: Any) -> bool:
        return stream in self.calls

    keeps_length = True  # the pieces pass unchanged: the request's and response's framing stays

    def decode_data(self, stream: Any, data: bytes, end_stream: bool) -> bytes:
        self.calls[stream].request.feed(data)
        return data

    # ---------------------------------------------------------------- the response side
    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        call = self.calls.get(stream)
        if call is not None:
            call.status = headers.get(b"grpc-status")
            call.upstream = not stream.local_reply
            call.grpc_response = is_grpc_request(headers.items)

    def wants_response_data(self, stream: Any) -> bool:
        call = self.calls.get(stream)
        return call is not None and call.grpc_response

    def encode_data(self, stream: Any, data: bytes, end_stream: bool) -> bytes:
        self.calls[stream].response.feed(data)
        return data

    def encode_trailers(self, stream: Any, trailers: list[tuple[bytes, bytes]]) -> None:
        call = self.calls.get(stream)
        if call is not None:
            call.status = next((value for name, value in trailers if name == b"grpc-status"), call.status)

    def _charge(self, stream: Any) -> None:
        call = self.calls.pop(stream)
        cluster = stream.cluster
        if cluster is None:
            return  # no route, or no cluster: Envoy has nowhere to count it either
        prefix = f"cluster.{cluster.name}.{call.names}."
        counter = self.stats.counter
        if call.request.count:
            counter(prefix + "request_message_count").inc(call.request.count)
        if call.response.count:
            counter(prefix + "response_message_count").inc(call.response.count)
        if call.status is None:
            return
        charge_status(counter, prefix, call.status)
        if self.upstream_stats and call.upstream:
            elapsed = stream.conn.loop_time() - stream.attempt_start
            self.stats.histogram(prefix + "upstream_rq_time").record(elapsed * 1000)


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, FilterConfig)
register_filter(FilterConfig, GrpcStatsFilter)
