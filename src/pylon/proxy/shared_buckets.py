"""Rate limit state the workers share: one 8-byte number per bucket, in memory every worker maps.

Envoy's local rate limit buckets are shared by all its worker threads, so `--concurrency` does not multiply
the rate. pylon's workers are processes; giving each its own bucket would let N workers pass N times the
configured rate, and dividing the rate among them would refuse a client whose connections all land on one
worker. So the supervisor creates one table in a `memfd` before any worker starts (as the load table of
balance/loadtable.py) and hands it to each; a bucket is a slot in it, found by a key every worker derives the
same way from the config (the filter's name and config, the route it belongs to), so the same bucket in two
workers is the same slot. A bucket's whole state is one number (see
extensions/filters/common/token_bucket.py); taking a token reads and writes it under a POSIX record lock on the
slot's byte (`lockf`: two system calls per request, ~6 µs here), which the kernel drops if a worker dies holding
it. With `--concurrency 1` there is nothing to share: the supervisor makes no table and the lone worker's
buckets are its own, lock-free.

Slots are claimed for good (4096 of them): a table that fills up (thousands of distinct buckets, e.g. after
many listener updates) makes `bucket()` return None, and the caller falls back to a bucket of its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
from typing import Any, Callable

SLOTS = 4096
#: where a worker keeps its mapping: `worker.singletons[SHARED_BUCKETS]` (absent outside a supervisor's workers)
SHARED_BUCKETS = "shared_buckets"
_SLOT_QWORDS = 2  # the key's hash, the bucket's state
_TABLE_LOCK = 0  # byte locked while a slot is claimed; slot i's lock is byte 1 + i


class SharedBuckets:
    """A worker's (or the supervisor's) mapping of the table."""

    def __init__(self, fd: int, slots: int = SLOTS) -> None:
        self.fd = fd
        self.slots = slots
        self._map = mmap.mmap(fd, slots * _SLOT_QWORDS * 8)
        self.keys = memoryview(self._map).cast("Q")
        self.states = memoryview(self._map).cast("d")

    @classmethod
    def create(cls, slots: int = SLOTS) -> "SharedBuckets":
        """A zeroed table in a fresh memfd (the supervisor, once, before any worker starts)."""
        fd = os.memfd_create("pylon-rate-limit-buckets", 0)  # inheritable: Popen's pass_fds hands it on
        os.ftruncate(fd, slots * _SLOT_QWORDS * 8)
        return cls(fd, slots)

    def bucket(self, key: bytes, initial: Callable[[], float]) -> "SharedBucket | None":
        """The bucket for `key`, its state set by `initial()` if this is its first use in any worker; None when
        the table is full."""
        wanted = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") or 1
        fd = self.fd
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, _TABLE_LOCK)
        try:
            for probe in range(self.slots):
                slot = (wanted + probe) % self.slots
                found = self.keys[slot * _SLOT_QWORDS]
                if found == wanted:
                    return SharedBucket(self, slot)
                if found == 0:
                    self.states[slot * _SLOT_QWORDS + 1] = initial()
                    self.keys[slot * _SLOT_QWORDS] = wanted
                    return SharedBucket(self, slot)
            return None
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, _TABLE_LOCK)

    def close(self) -> None:
        self.keys.release()
        self.states.release()
        self._map.close()
        os.close(self.fd)


class SharedBucket:
    """One slot: `update(change)` replaces its state with `change(state)` (and returns what change returned
    alongside), atomically with respect to every other worker."""

    __slots__ = ("fd", "states", "index", "lock_at")

    def __init__(self, table: SharedBuckets, slot: int) -> None:
        self.fd = table.fd
        self.states = table.states
        self.index = slot * _SLOT_QWORDS + 1
        self.lock_at = 1 + slot

    def update(self, change: Callable[[float], tuple[float, Any]]) -> Any:
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, self.lock_at)
        try:
            state, result = change(self.states[self.index])
            self.states[self.index] = state
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, self.lock_at)
        return result
