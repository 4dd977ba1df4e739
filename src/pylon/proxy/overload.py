"""Envoy's overload manager: what each action's triggers make of the monitors' pressures (sans-IO), and what a
worker does while an action is on.

Envoy's overload manager is one object on the main thread that measures its resource monitors every
`refresh_interval` and tells the worker threads each action's state. pylon's supervisor plays that part
(`overload_monitor.py`): it measures, computes each action's scale here (`action_scales`), publishes Envoy's
`overload.*` stats and sends the scales to the workers when they change; a worker keeps them in its
`WorkerOverload`, which the hot paths read as plain attributes:

- A trigger's scale: `threshold` is 1 from its value up, else 0; `scaled` is 0 below its scaling threshold,
  1 from its saturation threshold, linear between. An action's scale is the largest of its triggers'.
- `stop_accepting_requests`: each new request is answered 503 "envoy overloaded" (flag OL, details `overload`,
  `http.<prefix>.downstream_rq_overload_close`) with the action's scale as probability, as Envoy's bernoulli.
- `disable_http_keepalive`: a response ends its connection with the scale as probability
  (`http.<prefix>.downstream_cx_overload_disable_keepalive`).
- `stop_accepting_connections`: while saturated, listeners stop accepting (connections wait in the backlog).
- `reject_incoming_connections`: an accepted connection is closed at once with the scale as probability
  (`listener.<address>.downstream_cx_overload_reject`).

- `shrink_heap`: while saturated, every 10 s (Envoy's fixed period) the supervisor releases its own free heap
  memory and tells each worker to release theirs (`release_free_memory`: glibc's malloc_trim, what tcmalloc's
  ReleaseFreeMemory is to Envoy; CPython's small-object arenas go back to the system by themselves) and counts
  `overload.envoy.overload_actions.shrink_heap.shrink_count` once per round, as Envoy's one process does.

The global downstream connections limit (the `global_downstream_max_connections` monitor, or Envoy 1.40's
deprecated runtime key) is no action but a check at accept time across workers (`downstream_connections.py`).
"""

from __future__ import annotations

import ctypes
import random
from typing import Any, Mapping

from pylon.config.envoy import (
    DISABLE_HTTP_KEEPALIVE,
    REJECT_INCOMING_CONNECTIONS,
    STOP_ACCEPTING_CONNECTIONS,
    STOP_ACCEPTING_REQUESTS,
)

__all__ = ["HEAP_SHRINK_INTERVAL", "WorkerOverload", "action_scales", "release_free_memory", "trigger_scale"]

#: Envoy's HeapShrinker period (fixed, not configurable in Envoy either).
HEAP_SHRINK_INTERVAL = 10.0


def release_free_memory() -> None:
    """Give the C heap's free memory back to the system (glibc's malloc_trim; the config checked it exists)."""
    ctypes.CDLL(None).malloc_trim(0)


def trigger_scale(trigger: Any, pressure: float) -> float:
    """One trigger's scale (0..1) at a monitor's pressure."""
    if trigger.threshold is not None:
        return 1.0 if pressure >= trigger.threshold.value else 0.0
    scaled = trigger.scaled
    if pressure < scaled.scaling_threshold:
        return 0.0
    if pressure >= scaled.saturation_threshold:
        return 1.0
    return (pressure - scaled.scaling_threshold) / (scaled.saturation_threshold - scaled.scaling_threshold)


def action_scales(overload: Any, pressures: Mapping[str, float]) -> dict[str, float]:
    """Each configured action's scale: the largest of its triggers' at the monitors' pressures."""
    return {action.name: max(trigger_scale(t, pressures.get(t.name, 0.0)) for t in action.triggers)
            for action in overload.actions}


class WorkerOverload:
    """A worker's view of the actions (all off until the supervisor says otherwise)."""

    __slots__ = ("stop_requests", "keepalive_off", "stop_accepting", "reject", "_rng", "on_accepting")

    def __init__(self, rng: random.Random | None = None) -> None:
        self.stop_requests = 0.0  # each action's scale, 0..1
        self.keepalive_off = 0.0
        self.stop_accepting = False
        self.reject = 0.0
        self._rng = rng if rng is not None else random.Random()
        #: told when stop_accepting changes (the worker pauses or resumes its acceptors)
        self.on_accepting: Any = None

    def update(self, scales: Mapping[str, float]) -> None:
        """The supervisor's latest scales by action name (actions not named are off)."""
        self.stop_requests = scales.get(STOP_ACCEPTING_REQUESTS, 0.0)
        self.keepalive_off = scales.get(DISABLE_HTTP_KEEPALIVE, 0.0)
        self.reject = scales.get(REJECT_INCOMING_CONNECTIONS, 0.0)
        stop = scales.get(STOP_ACCEPTING_CONNECTIONS, 0.0) >= 1.0
        if stop != self.stop_accepting:
            self.stop_accepting = stop
            if self.on_accepting is not None:
                self.on_accepting(not stop)

    def _draw(self, scale: float) -> bool:
        return scale >= 1.0 or (scale > 0.0 and self._rng.random() < scale)

    def refuses_request(self) -> bool:
        """Whether a new request is answered 503 "envoy overloaded"."""
        return self.stop_requests > 0.0 and self._draw(self.stop_requests)

    def ends_keepalive(self) -> bool:
        """Whether a response closes its connection for disable_http_keepalive."""
        return self.keepalive_off > 0.0 and self._draw(self.keepalive_off)

    def rejects_connection(self) -> bool:
        """Whether an accepted connection is closed for reject_incoming_connections."""
        return self.reject > 0.0 and self._draw(self.reject)
