"""Envoy's previous_priorities retry priority: which priority levels a retry leaves out (sans-IO).

Envoy's router asks its retry priority for the priority load of each retry (never of the first attempt). With
`update_frequency` N, the first N attempts use the cluster's own load; at every N-th attempted host the levels
of all hosts tried so far are excluded, and the load is spread over the levels left by their health, the way the
cluster spreads it (`priority.priority_loads`). Between updates the last computed load stands. When no level is
left with any health, the cluster's own load is used and the tried hosts are forgotten (Envoy's fallback, so a
request is routed rather than failed).

One `RetryPriorityState` lives on a request that has a retry priority; the balancer's `choose_excluding`
(`PrioritizedBalancer` in priority.py) reads its `excluded` levels and tells it when none is left.
"""

from __future__ import annotations

from pylon.proxy.upstream.host import Host

__all__ = ["RetryPriorityState"]


class RetryPriorityState:
    """The priority levels one request's retries leave out, from the hosts it tried (`attempted`, in order: the
    stream appends each; Envoy's retry priority keeps its own list, apart from the host predicates')."""

    __slots__ = ("update_frequency", "attempted", "excluded")

    def __init__(self, update_frequency: int) -> None:
        self.update_frequency = update_frequency
        self.attempted: list[Host] = []
        #: the levels the next retry leaves out; None: the cluster's own load
        self.excluded: frozenset[int] | None = None

    def advance(self) -> None:
        """Before a retry's pick: at every `update_frequency`-th attempted host, leave out the levels tried."""
        count = len(self.attempted)
        if count < self.update_frequency:
            self.excluded = None
        elif count % self.update_frequency == 0:
            self.excluded = (self.excluded or frozenset()) | {host.placement.priority for host in self.attempted}

    def exhausted(self) -> None:
        """No level with health is left (the balancer says): the cluster's own load, and the tries forgotten."""
        self.excluded = None
        self.attempted.clear()
