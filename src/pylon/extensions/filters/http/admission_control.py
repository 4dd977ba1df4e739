"""envoy.filters.http.admission_control: requests turned away while the upstream's success rate is low, as Envoy.

Read from Envoy's admission_control.cc and thread_local_controller.cc, checked beside Envoy 1.40
(tests/proxy/test_proxy_admission_control.py): each worker keeps the outcomes of the responses of the last
`sampling_window` (default 30 s) in one-second buckets. A response is a success by `success_criteria` (HTTP
status ranges [start, end), default below 500; gRPC codes in grpc-status, from the head or the trailers, default
Envoy's eleven). With `enabled`, and once the window's average requests per second reach `rps_threshold`, a
request is rejected (503 with no body, details `denied_by_admission_control`) with probability
`((requests - successes / sr_threshold) / (requests + 1)) ^ (1 / aggression)`, at most
`max_rejection_probability` (default 80%); a rejected request is not counted in the window. Stats
`http.<prefix>.admission_control.{rq_rejected, rq_success, rq_failure}`. Runtime keys never apply (pylon's runtime
has no layers): the default values are the values. Health check requests are neither rejected nor counted.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from pylon.config import registry
from pylon.config.constraints import Duration
from pylon.config.envoy import EnvoyStruct, Percent, RuntimeFeatureFlag, RuntimeUInt32
from pylon.config.errors import FieldError
from pylon.proxy.filters.http import register_filter
from pylon.proxy.router import is_grpc_request

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.admission_control.v3.AdmissionControl"
DETAILS = "denied_by_admission_control"
#: gRPC codes that count as successes unless grpc_criteria says otherwise (Envoy's list)
DEFAULT_GRPC_SUCCESS = frozenset({6, 1, 9, 3, 5, 0, 11, 7, 16, 12, 2})


class RuntimeDouble(EnvoyStruct, kw_only=True):
    """config.core.v3.RuntimeDouble (the runtime key never applies)."""

    default_value: float = 0.0
    runtime_key: str = ""


class RuntimePercent(EnvoyStruct, kw_only=True):
    """config.core.v3.RuntimePercent (the runtime key never applies)."""

    default_value: Percent = msgspec.field(default_factory=Percent)
    runtime_key: str = ""


class Int32Range(EnvoyStruct, kw_only=True):
    """type.v3.Int32Range: [start, end)."""

    start: int = 0
    end: int = 0


class HttpCriteria(EnvoyStruct, kw_only=True):
    http_success_status: Annotated[list[Int32Range], msgspec.Meta(min_length=1)]


class GrpcCriteria(EnvoyStruct, kw_only=True):
    grpc_success_status: Annotated[list[int], msgspec.Meta(min_length=1)]


class SuccessCriteria(EnvoyStruct, kw_only=True):
    http_criteria: HttpCriteria | None = None
    grpc_criteria: GrpcCriteria | None = None

    def __post_init__(self) -> None:
        for i, status_range in enumerate(self.http_criteria.http_success_status if self.http_criteria else []):
            if not (100 <= status_range.start <= status_range.end <= 600 and status_range.start < 600):
                raise FieldError(f"http_criteria.http_success_status[{i}]",
                                 f"invalid HTTP range: [{status_range.start}, {status_range.end})")
        for i, code in enumerate(self.grpc_criteria.grpc_success_status if self.grpc_criteria else []):
            if not 0 <= code <= 16:
                raise FieldError(f"grpc_criteria.grpc_success_status[{i}]", f"invalid gRPC code {code}")


class AdmissionControl(EnvoyStruct, kw_only=True):
    """extensions.filters.http.admission_control.v3.AdmissionControl."""

    enabled: RuntimeFeatureFlag | None = None
    success_criteria: SuccessCriteria | None = None
    sampling_window: Duration | None = None
    aggression: RuntimeDouble | None = None
    sr_threshold: RuntimePercent | None = None
    rps_threshold: RuntimeUInt32 | None = None
    max_rejection_probability: RuntimePercent | None = None

    def __post_init__(self) -> None:
        if self.success_criteria is None:
            raise FieldError("success_criteria", "Evaluation criteria not set")
        if self.sr_threshold is not None and self.sr_threshold.default_value.value < 1.0:
            raise FieldError("sr_threshold", "Success rate threshold cannot be less than 1.0%.")


class Window:
    """A worker's outcomes of the last `seconds`, in one-second buckets (Envoy's ThreadLocalControllerImpl)."""

    def __init__(self, seconds: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self.buckets: collections.deque[list[float]] = collections.deque()  # [start, requests, successes]
        self.requests = self.successes = 0

    def _refresh(self) -> None:
        now = self.clock()
        buckets = self.buckets
        while buckets and now - buckets[0][0] >= self.seconds:
            _, requests, successes = buckets.popleft()
            self.requests -= int(requests)
            self.successes -= int(successes)
        if not buckets or now - buckets[-1][0] >= 1.0:
            buckets.append([now, 0, 0])

    def record(self, success: bool) -> None:
        self._refresh()
        bucket = self.buckets[-1]
        bucket[1] += 1
        self.requests += 1
        if success:
            bucket[2] += 1
            self.successes += 1

    def counts(self) -> tuple[int, int]:
        self._refresh()
        return self.requests, self.successes

    def average_rps(self) -> int:
        if not self.buckets or not self.requests:
            return 0
        age = int(self.clock() - self.buckets[0][0])
        return self.requests // max(self.seconds, age)


class AdmissionControlFilter:
    """One HCM's admission control filter in one worker."""

    def __init__(self, name: str, config: AdmissionControl, stat_prefix: str, stats: Any, loop: Any,
                 chance: Callable[[int], int] = random.randrange) -> None:
        self.name = name
        self.chance = chance
        self.enabled = config.enabled.default_value if config.enabled is not None else False
        window = int(float(config.sampling_window)) if config.sampling_window is not None else 30
        self.window = Window(window)
        self.aggression = max(1.0, config.aggression.default_value if config.aggression is not None else 1.0)
        self.sr_threshold = min(config.sr_threshold.default_value.value if config.sr_threshold else 95.0, 100.0) / 100
        self.rps_threshold = config.rps_threshold.default_value if config.rps_threshold is not None else 0
        self.max_rejection = (config.max_rejection_probability.default_value.value
                              if config.max_rejection_probability is not None else 80.0) / 100
        criteria = config.success_criteria
        assert criteria is not None
        ranges = [(r.start, r.end) for r in criteria.http_criteria.http_success_status] \
            if criteria.http_criteria is not None else [(0, 500)]
        self.http_success: Callable[[int], bool] = lambda status: any(a <= status < b for a, b in ranges)
        self.grpc_success = frozenset(criteria.grpc_criteria.grpc_success_status) \
            if criteria.grpc_criteria is not None else DEFAULT_GRPC_SUCCESS
        prefix = f"http.{stat_prefix}.admission_control."
        self.counters = {name: stats.counter(prefix + name) for name in ("rq_rejected", "rq_success", "rq_failure")}
        #: streams whose response is counted; True once the head left the verdict to the trailers
        self._recorded: dict[Any, bool] = {}

    def decode_headers(self, stream: Any) -> bool:
        if not self.enabled or stream.health_check:
            return True
        if self.window.average_rps() >= self.rps_threshold and self._reject():
            self.counters["rq_rejected"].inc()
            stream.respond_from_filter(503, b"", [], DETAILS)
            return False
        self._recorded[stream] = False
        stream.on_finish(lambda: self._recorded.pop(stream, None))
        return True

    def _reject(self) -> bool:
        requests, successes = self.window.counts()
        probability = (requests - successes / self.sr_threshold) / (requests + 1)
        if self.aggression != 1.0 and probability > 0:
            probability = probability ** (1.0 / self.aggression)
        probability = min(probability, self.max_rejection)
        return 1e4 * max(probability, 0.0) > self.chance(10_000)

    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        if self._recorded.get(stream) is not False:
            return
        if is_grpc_request(headers.items):
            grpc_status = headers.get(b"grpc-status")
            if grpc_status is None:
                self._recorded[stream] = True  # the trailers will say
                return
            return self._record(stream, grpc_status.isdigit() and int(grpc_status) in self.grpc_success)
        self._record(stream, self.http_success(status))

    def encode_trailers(self, stream: Any, trailers: list[tuple[bytes, bytes]]) -> None:
        if self._recorded.get(stream) is True:
            grpc_status = next((value for name, value in trailers if name == b"grpc-status"), None)
            self._record(stream, grpc_status is not None and grpc_status.isdigit()
                         and int(grpc_status) in self.grpc_success)

    def _record(self, stream: Any, success: bool) -> None:
        self._recorded.pop(stream, None)
        self.window.record(success)
        self.counters["rq_success" if success else "rq_failure"].inc()


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, AdmissionControl)
register_filter(AdmissionControl, AdmissionControlFilter)
