"""A budget of client reads per event-loop I/O phase, so one busy phase cannot starve the rest.

Why: libuv's I/O phase goes on while epoll keeps returning a full buffer of
ready descriptors, up to 48 rounds of 1,024. Under thousands of busy keep-alive
clients every answer makes another socket ready within the same phase, so one
phase served each client several times and lasted over a second — and
everything uvloop schedules with `call_soon` waits for its end: a new
connection's `connection_made` (and so its first read), task steps such as
upstream connects. Envoy's libevent serves each ready event once per
iteration. Here, once a phase has served `limit` client reads, a further
client read is parked: the connection stops reading and its bytes are handled
with the `call_soon` callbacks, in order with what else waits there. Parked
sockets are no longer polled, so the phase ends after at most one more pass.

The budget resets when the phase is over: `spend()` arms a `call_soon` the
first time it is called in a phase, and that runs with the callbacks after it.
"""

from __future__ import annotations

import asyncio

#: Two epoll buffers' worth: far above what a phase sees below saturation, so
#: parking costs nothing until a phase would otherwise start another lap.
DEFAULT_READS_PER_PHASE = 2048


class PhaseBudget:
    """Counts client reads in the current I/O phase; `spend()` is False once it is used up."""

    __slots__ = ("loop", "limit", "used", "armed")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = DEFAULT_READS_PER_PHASE) -> None:
        self.loop = loop
        self.limit = limit
        self.used = 0
        self.armed = False

    def spend(self) -> bool:
        self.used += 1
        if not self.armed:
            self.armed = True
            self.loop.call_soon(self._reset)
        return self.used <= self.limit

    def _reset(self) -> None:
        self.used = 0
        self.armed = False
