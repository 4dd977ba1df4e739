"""Timeouts without a loop timer per request: a coarse timer wheel of connections to look at (sans-IO).

Arming and cancelling a uvloop timer costs 2-4 µs, about a tenth of a proxied
request, so route, per-try, idle and header timeouts are not timers. Each
connection instead keeps `wake_at`, the earliest time it may need a look, and
sits in the wheel's slot for that time. When a slot comes due the connection's
`sweep(now)` enforces whatever has expired and returns its next deadline (its
deadlines are recomputed from its own state, so activity never has to touch
the wheel). Arming a deadline later than the one already armed is a single
comparison: under steady traffic most requests cost nothing here.

A target sits in one slot at a time (an earlier arm moves it), and `disarm`
takes it out: a connection that closes long before its deadline (an idle
timeout of an hour is Envoy's default) is not kept alive by the wheel until then.

A deadline fires at most one `resolution` (plus event-loop lag) late, and never
early: slots are rounded up.
"""

from __future__ import annotations

import heapq
import math
from typing import Protocol


class Watched(Protocol):
    """A connection with timeouts: `wake_at` is owned by the wheel (0.0 = not armed)."""

    wake_at: float

    def sweep(self, now: float) -> float:
        """Enforce what has expired at `now`; return the next deadline (0.0 for none)."""


class DeadlineWheel:
    """Connections keyed by the slot of the earliest deadline they asked to be looked at."""

    def __init__(self, resolution: float) -> None:
        self.resolution = resolution
        self._slots: dict[int, dict[Watched, float]] = {}
        self._order: list[int] = []  # heap of slot indices; an index whose slot emptied is skipped when popped

    def __bool__(self) -> bool:
        """Whether any deadline is armed."""
        return bool(self._slots)

    def arm(self, target: Watched, when: float) -> None:
        """Look at `target` at `when` (or earlier, if it already asked for an earlier look)."""
        current = target.wake_at
        if when <= 0.0 or (current and current <= when):
            return
        if current:
            self._remove(target, current)
        target.wake_at = when
        index = math.ceil(when / self.resolution)
        entries = self._slots.get(index)
        if entries is None:
            self._slots[index] = {target: when}
            heapq.heappush(self._order, index)
        else:
            entries[target] = when

    def disarm(self, target: Watched) -> None:
        """Forget `target`'s deadline (it closed): the wheel no longer holds it."""
        current = target.wake_at
        if current:
            self._remove(target, current)
            target.wake_at = 0.0

    def _remove(self, target: Watched, when: float) -> None:
        index = math.ceil(when / self.resolution)
        entries = self._slots.get(index)
        if entries is not None:
            entries.pop(target, None)
            if not entries:
                del self._slots[index]

    def expire(self, now: float) -> int:
        """Sweep every target whose slot is due at `now` and re-arm it at its next deadline; returns how many."""
        last = math.floor(now / self.resolution)
        order, slots = self._order, self._slots
        swept = 0
        while order and order[0] <= last:
            entries = slots.pop(heapq.heappop(order), None)
            if entries is None:
                continue  # emptied by disarms and moves
            for target, when in entries.items():
                if target.wake_at != when:
                    continue  # disarmed or moved by a target swept before it in this slot
                target.wake_at = 0.0
                swept += 1
                following = target.sweep(now)
                if 0.0 < following <= now:
                    following = now + self.resolution / 2  # a deadline on the edge goes to the next slot
                self.arm(target, following)
        return swept
