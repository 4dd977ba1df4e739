"""When each request of a load run is meant to leave (sans-IO).

A fixed `-qps` run gives each connection its share of the rate and a schedule
of intended send times. Latency is measured from the intended time, not the
actual send, so a slow server cannot hide its stalls by slowing the client down
(no coordinated omission): a request that had to wait behind a slow one counts
that wait. `-nocatchup` instead re-bases the schedule when a connection falls
behind. At `-qps 0` there is no schedule: the next request leaves as soon as
the previous one completes, until the deadline or the shared call budget
(`-n`) runs out.

Fortio's shapes are kept: `-uniform` staggers the connections' first sends
across one interval; `-jitter` moves each send by up to ±10% of the interval.
"""

from __future__ import annotations

import random
from typing import Callable


class Tickets:
    """A call budget shared by the connections of one process (`-n` at max speed)."""

    __slots__ = ("left",)

    def __init__(self, total: int) -> None:
        self.left = total

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


class Pacer:
    """The intended send times of one connection.

    interval: seconds between sends (0 = as fast as possible);
    count: calls for this connection (None = unlimited);
    end: no send is intended at or after this time (None = no deadline);
    tickets: a shared budget taken once per call (max-speed `-n`).
    """

    __slots__ = ("start", "interval", "count", "end", "tickets", "jitter", "nocatchup", "rand", "sent")

    def __init__(self, start: float, interval: float = 0.0, *, count: int | None = None,
                 end: float | None = None, tickets: Tickets | None = None, offset: float = 0.0,
                 jitter: bool = False, nocatchup: bool = False,
                 rand: Callable[[], float] = random.random) -> None:
        self.start = start + offset
        self.interval = interval
        self.count = count
        self.end = end
        self.tickets = tickets
        self.jitter = jitter
        self.nocatchup = nocatchup
        self.rand = rand
        self.sent = 0

    def next_time(self, now: float) -> float | None:
        """The intended time of the next call, or None when this connection is done."""
        if self.count is not None and self.sent >= self.count:
            return None
        if self.interval <= 0:
            if self.end is not None and now >= self.end:
                return None
            if self.tickets is not None and not self.tickets.take():
                return None
            self.sent += 1
            return now
        intended = self.start + self.sent * self.interval
        if self.jitter:
            intended += (self.rand() - 0.5) * 0.2 * self.interval
        if self.nocatchup and intended < now:
            self.start += now - intended
            intended = now
        if self.end is not None and intended >= self.end:
            return None
        if self.tickets is not None and not self.tickets.take():
            return None
        self.sent += 1
        return intended


def split(total: int, parts: int) -> list[int]:
    """Split `total` into `parts` near-equal integers, the larger ones first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
