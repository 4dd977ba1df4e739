"""envoy.filters.http.fault: delay and abort requests, as Istio's VirtualService `fault` configures them.

What Envoy does, observed with Envoy 1.40: a delay holds the request for
`fixed_delay` before it goes on (response flag DI); an abort answers
`http_status` with the body "fault filter abort" (flag FI, details
fault_filter_abort), after the delay when both hit. Each happens on its
`percentage` of requests, which defaults to 0% — a fault without a
percentage never fires. A route's (or its virtual host's)
`typed_per_filter_config` for the filter replaces the filter's config whole:
an empty one turns faults off for that route. `max_active_faults` caps the
requests under a fault at once (over it: `faults_overflow`, no fault).
Stats: `http.<stat_prefix>.fault.{delays_injected, aborts_injected,
active_faults, faults_overflow, response_rl_injected}`.

Not implemented, refused by name: header-controlled faults, gRPC aborts,
response rate limits, the runtime overrides, downstream-node, upstream-cluster
and header conditions.
"""

from __future__ import annotations

import random
from typing import Annotated, Any, Callable

import msgspec

from pylon.config import registry
from pylon.config.envoy import Duration, EnvoyStruct, FractionalPercent, NotSupportedYet, UInt32, _exactly_one
from pylon.config.errors import FieldError
from pylon.proxy import local_reply as lr
from pylon.proxy.filters.http import register_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


class FaultDelay(EnvoyStruct, kw_only=True):
    """extensions.filters.common.fault.v3.FaultDelay."""

    fixed_delay: Duration | None = None
    header_delay: NotSupportedYet | None = None
    percentage: FractionalPercent = msgspec.field(default_factory=FractionalPercent)

    def __post_init__(self) -> None:
        if self.fixed_delay is None:
            raise FieldError("fixed_delay", "a delay needs fixed_delay (header_delay is not supported yet)")


class FaultAbort(EnvoyStruct, kw_only=True):
    """extensions.filters.http.fault.v3.FaultAbort."""

    http_status: Annotated[int, msgspec.Meta(ge=200, lt=600)] | None = None
    grpc_status: NotSupportedYet | None = None
    header_abort: NotSupportedYet | None = None
    percentage: FractionalPercent = msgspec.field(default_factory=FractionalPercent)

    def __post_init__(self) -> None:
        _exactly_one(self, "http_status", "grpc_status", "header_abort")


class HTTPFault(EnvoyStruct, kw_only=True):
    """extensions.filters.http.fault.v3.HTTPFault; also its own per-route config."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    max_active_faults: UInt32 | None = None  # None: no cap
    upstream_cluster: NotSupportedYet | None = None
    headers: NotSupportedYet | None = None
    downstream_nodes: NotSupportedYet | None = None
    response_rate_limit: NotSupportedYet | None = None
    delay_percent_runtime: NotSupportedYet | None = None
    abort_percent_runtime: NotSupportedYet | None = None
    delay_duration_runtime: NotSupportedYet | None = None
    abort_http_status_runtime: NotSupportedYet | None = None
    max_active_faults_runtime: NotSupportedYet | None = None
    response_rate_limit_percent_runtime: NotSupportedYet | None = None
    abort_grpc_status_runtime: NotSupportedYet | None = None
    disable_downstream_cluster_stats: bool = False  # only names stats pylon does not keep per downstream cluster
    filter_metadata: NotSupportedYet | None = None


class FaultFilter:
    """One HCM's fault filter in one worker."""

    def __init__(self, name: str, config: HTTPFault, stat_prefix: str, stats: Any, loop: Any,
                 chance: Callable[[], float] = random.random) -> None:
        self.name = name
        self.config = config
        self.loop = loop
        self.chance = chance
        prefix = f"http.{stat_prefix}.fault."
        self.delays_injected = stats.counter(prefix + "delays_injected")
        self.aborts_injected = stats.counter(prefix + "aborts_injected")
        self.faults_overflow = stats.counter(prefix + "faults_overflow")
        stats.counter(prefix + "response_rl_injected")  # shown at 0, as Envoy: response rate limits are refused
        self.active = stats.gauge(prefix + "active_faults")

    def decode_headers(self, stream: Any) -> bool:
        config = self.config
        if stream.route is not None:
            config = stream.route.filter_config(self.name) or config
        delay, abort = config.delay, config.abort
        delay_hits = delay is not None and self._hits(delay.percentage)
        abort_hits = abort is not None and self._hits(abort.percentage)
        if not (delay_hits or abort_hits):
            return True
        if config.max_active_faults is not None and self.active.value >= config.max_active_faults:
            self.faults_overflow.inc()
            return True
        self.active.inc()
        stream.on_finish(self.active.dec)
        if delay_hits:
            assert delay is not None and delay.fixed_delay is not None
            self.delays_injected.inc()
            stream.flags = "DI"
            stream.hold(float(delay.fixed_delay), lambda: self._after_delay(stream, abort if abort_hits else None))
            return False
        return self._abort(stream, abort) if abort_hits else True

    def _after_delay(self, stream: Any, abort: FaultAbort | None) -> None:
        if abort is None or self._abort(stream, abort):
            stream.continue_decoding()

    def _abort(self, stream: Any, abort: FaultAbort | None) -> bool:
        assert abort is not None and abort.http_status is not None
        self.aborts_injected.inc()
        flag = "DI,FI" if stream.flags == "DI" else "FI"  # delayed first: Envoy logs both
        stream.local(lr.LocalReply(abort.http_status, flag, b"fault filter abort", "fault_filter_abort"))
        return False

    def _hits(self, percentage: FractionalPercent) -> bool:
        fraction = percentage.fraction
        return fraction >= 1.0 or (fraction > 0.0 and self.chance() < fraction)


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, HTTPFault)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, TYPE_URL, HTTPFault)  # a route's config is the same message
register_filter(HTTPFault, FaultFilter)
