"""The dispatcher: the software counterpart of Intel DLB's load-balanced queues.

DLB lets one thread accept, and hardware queues deliver each connection to a
worker according to load. pylon's dispatcher is the same shape in software:
the supervisor's event loop accepts every connection of the listener and
passes the socket to a worker over a unix socketpair (SCM_RIGHTS), choosing
the worker from what the workers publish in shared memory (`loadtable.py`):
active connections and in-flight HTTP requests.

The choice is lexicographic: fewest active connections first, then fewest
in-flight requests, then rotation. Connection counts therefore stay as exact
as `exact_balance` (the operator's guarantee: within one of each other for
connections that stay open); load decides among the least-connected workers,
which is exactly where a stream of short connections lands (their counts keep
returning to a tie), so short connections avoid the worker that is busy with
a heavy long-lived connection. Load-first ordering was rejected because it lets
counts drift apart under load, which is the complaint that started this.

Config: `extend_balance {name: pylon.connection_balance.dispatcher,
typed_config: {"@type": type.googleapis.com/pylon.connection_balance.v1.Dispatcher}}`.
"""

from __future__ import annotations

from typing import Sequence

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.proxy.balance.exact import rotating_min

DISPATCHER_TYPE_URL = "type.googleapis.com/pylon.connection_balance.v1.Dispatcher"


class Dispatcher(EnvoyStruct, kw_only=True):
    """pylon.connection_balance.v1.Dispatcher (no fields: the policy is fixed, see the module docstring)."""


class DispatcherPolicy:
    """Fewest active connections, then fewest in-flight requests; ties rotate."""

    name = "dispatcher"
    uses_inflight = True  # workers publish their in-flight requests for this policy

    def __init__(self) -> None:
        self._last = -1

    def pick(self, workers: Sequence[int], connections: Sequence[int], requests: Sequence[int]) -> int:
        best = rotating_min(workers, connections, requests, self._last)
        self._last = best
        return best


registry.register_typed(registry.CONNECTION_BALANCER, DISPATCHER_TYPE_URL, Dispatcher)
