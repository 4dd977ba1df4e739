"""Envoy's `exact_balance`: a new connection goes to the worker with the fewest active connections.

Envoy makes this exact with a lock that every worker thread takes while it
picks. pylon's workers are processes, so the same guarantee comes from having
one picker: the supervisor accepts every connection of the listener and hands
it to the chosen worker (`handoff.py`). One picker is the lock. The counts it
compares are exact, not sampled: what the worker published as active, plus
what was handed to it and not yet taken (see `loadtable.py`).

This module is the decision only (sans-IO): lists in, a worker id out.
Ties are broken by rotating past the last pick, so connections that come and go
(where every worker is often at 0) still spread over all workers instead of
piling onto worker 0.
"""

from __future__ import annotations

from typing import Sequence


class ExactPolicy:
    """Fewest active connections; ties rotate."""

    name = "exact"
    uses_inflight = False  # workers need not publish in-flight requests for this policy

    def __init__(self) -> None:
        self._last = -1

    def pick(self, workers: Sequence[int], connections: Sequence[int], requests: Sequence[int]) -> int:
        """The worker id (from `workers`, the live ones) the next connection goes to.

        `connections[i]` and `requests[i]` describe `workers[i]`; `requests` is ignored here.
        """
        best = rotating_min(workers, connections, None, self._last)
        self._last = best
        return best


def rotating_min(workers: Sequence[int], primary: Sequence[int], secondary: Sequence[int] | None,
                  last: int) -> int:
    """The worker with the smallest (primary, secondary) key; among equals, the first after `last` in id order."""
    best_index = 0
    best_key: tuple[int, int, bool, int] | None = None
    for index, worker in enumerate(workers):
        key = (primary[index], secondary[index] if secondary is not None else 0, worker <= last, worker)
        if best_key is None or key < best_key:
            best_key, best_index = key, index
    return workers[best_index]
