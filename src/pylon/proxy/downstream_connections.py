"""Envoy's global downstream connections limit, across pylon's worker processes.

Envoy counts every open downstream connection of the process (the overload manager's
`global_downstream_max_connections` monitor, or its deprecated runtime key) and closes a connection as it is
accepted once the count has reached the limit (`listener.<address>.downstream_global_cx_overflow`; the monitor's
`failed_updates` counts the refusals too). Its threads share one atomic counter; pylon's workers are processes, so
the supervisor creates a table in a memfd before they start (as `shared_buckets.py` does), one signed 8-byte count
per worker, which only that worker writes. Admitting a connection sums the table and bumps the worker's own count
under a `lockf` lock on the table's first byte (two admissions never both take the last place); the other
changes are single-writer stores. A worker that restarts zeroes its count: the connections it had died with it.

A connection counts from its accept to its close: `admit` counts it while it is being adopted (TLS handshake,
listener filters), `adopted` uncounts that when the adoption ends, and the connection counts again from its
`connection_opened` to its `connection_closed` (a refused or failed adoption never opens).
"""

from __future__ import annotations

import fcntl
import mmap
import os

from pylon.stats.store import Counter

__all__ = ["ConnectionCounts", "ConnectionGate"]


class ConnectionCounts:
    """The table: a count per worker in a memfd the supervisor creates and every worker maps."""

    def __init__(self, fd: int, workers: int) -> None:
        self.fd = fd
        self.workers = workers
        self._map = mmap.mmap(fd, max(1, workers) * 8)
        self.counts = memoryview(self._map).cast("q")

    @classmethod
    def create(cls, workers: int) -> "ConnectionCounts":
        fd = os.memfd_create("pylon-downstream-connections", 0)  # inheritable: Popen's pass_fds hands it on
        os.ftruncate(fd, max(1, workers) * 8)
        return cls(fd, workers)

    def total(self) -> int:
        """Every worker's open connections (read without the lock: a pressure reading, not an admission)."""
        return sum(self.counts)

    def close(self) -> None:
        self.counts.release()
        self._map.close()
        os.close(self.fd)


class ConnectionGate:
    """One worker's side of the table: admit or refuse a connection as it is accepted, count it until it closes."""

    __slots__ = ("table", "slot", "limit", "failed")

    def __init__(self, table: ConnectionCounts, worker_id: int, limit: int, failed: Counter) -> None:
        self.table = table
        self.slot = worker_id
        self.limit = limit
        self.failed = failed  # overload.<monitor>.failed_updates: Envoy counts each refusal there
        table.counts[worker_id] = 0  # a restarted worker's predecessor took its connections with it

    def admit(self) -> bool:
        """Count a connection just accepted, or refuse it (False) when the limit is reached."""
        table = self.table
        fcntl.lockf(table.fd, fcntl.LOCK_EX, 1, 0)
        try:
            if sum(table.counts) >= self.limit:
                self.failed.value += 1
                return False
            table.counts[self.slot] += 1
            return True
        finally:
            fcntl.lockf(table.fd, fcntl.LOCK_UN, 1, 0)

    def adopted(self) -> None:
        """An admitted connection's adoption ended (it opened, or it failed)."""
        self.table.counts[self.slot] -= 1

    def opened(self) -> None:
        self.table.counts[self.slot] += 1

    def closed(self) -> None:
        self.table.counts[self.slot] -= 1
