"""The load table: what each worker publishes about itself, in memory the supervisor can read.

Hand-off balancing (exact, dispatcher) decides in the supervisor but the load
lives in the workers. Asking a worker over the control channel per connection
would cost a round trip; instead every worker writes its numbers into shared
memory and the supervisor reads them when it picks. Each field has exactly one
writer (the worker that owns the slot), values are aligned 8-byte integers, and
a reader only ever needs a recent value, so there are no locks: a stale read
costs at most one slightly worse choice, never a wrong count (the supervisor
adds what it handed off and the worker has not taken yet, see `handoff.py`).

The memory is a `memfd` (anonymous, freed when the last process closes it)
passed to each worker by file descriptor, like the listening sockets. One
64-byte slot (a cache line, so workers never write the same line) per
(listener, worker).
"""

from __future__ import annotations

import mmap
import os

_QWORDS_PER_SLOT = 8  # 64 bytes

#: Connections this worker took off its hand-off channel and finished adopting (written by the worker).
TAKEN = 0
#: The worker's `listener.<addr>.worker_<i>.downstream_cx_active` (written by the worker).
CX_ACTIVE = 1
#: In-flight HTTP requests of the whole worker, all listeners, in thousandths, averaged over ~25 ms
#: (written by the worker every 10 ms; see `Worker._publish_load`).
RQ_ACTIVE = 2


class LoadTable:
    """A (listeners × workers) grid of slots of int64 fields, backed by a shareable memfd."""

    def __init__(self, fd: int, listeners: int, workers: int) -> None:
        self.fd = fd
        self.listeners = listeners
        self.workers = workers
        size = max(1, listeners * workers) * _QWORDS_PER_SLOT * 8
        self._map = mmap.mmap(fd, size)
        self.values = memoryview(self._map).cast("q")

    @classmethod
    def create(cls, listeners: int, workers: int) -> "LoadTable":
        """A zeroed table in a fresh memfd (the supervisor does this once, before any worker starts)."""
        fd = os.memfd_create("pylon-load-table", 0)  # inheritable: Popen's pass_fds hands it on
        os.ftruncate(fd, max(1, listeners * workers) * _QWORDS_PER_SLOT * 8)
        return cls(fd, listeners, workers)

    def slot(self, listener: int, worker: int) -> "LoadSlot":
        return LoadSlot(self.values, (listener * self.workers + worker) * _QWORDS_PER_SLOT)

    def close(self) -> None:
        self.values.release()
        self._map.close()
        os.close(self.fd)


class LoadSlot:
    """One (listener, worker) slot: `slot[CX_ACTIVE] = n` writes, `slot[TAKEN]` reads."""

    __slots__ = ("_values", "_base")

    def __init__(self, values: memoryview, base: int) -> None:
        self._values = values
        self._base = base

    def __getitem__(self, field: int) -> int:
        return self._values[self._base + field]

    def __setitem__(self, field: int, value: int) -> None:
        self._values[self._base + field] = value

    def reset(self) -> None:
        """Zero the slot (a replacement worker starts from nothing)."""
        for field in range(_QWORDS_PER_SLOT):
            self._values[self._base + field] = 0
