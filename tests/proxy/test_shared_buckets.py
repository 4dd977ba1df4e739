"""The rate limit table the workers share: the same key is the same bucket in every process, and taking a
token is atomic across processes (two processes racing for 20,000 tokens get exactly 20,000)."""

from __future__ import annotations

import multiprocessing
import os

from pylon.extensions.filters.common.token_bucket import BucketRule
from pylon.proxy.shared_buckets import SharedBuckets

RULE = BucketRule(max_tokens=20_000, rate=1.0)  # every take at the same instant: no refill


def _take_all(fd: int, tries: int, out: "multiprocessing.Queue[int]") -> None:
    table = SharedBuckets(fd, slots=16)  # this process's own mapping, as a worker makes it
    bucket = table.bucket(b"k", lambda: RULE.full_start(0.0))
    assert bucket is not None
    out.put(sum(bucket.update(lambda start: RULE.take(start, 0.0)).allowed for _ in range(tries)))


def test_same_key_same_bucket_other_key_other_bucket() -> None:
    table = SharedBuckets.create(slots=8)
    try:
        other = SharedBuckets(os.dup(table.fd), slots=8)
        a = table.bucket(b"a", lambda: 1.0)
        assert a is not None and a.update(lambda s: (s + 1, s)) == 1.0
        again = other.bucket(b"a", lambda: 99.0)  # found, not initialised again
        assert again is not None and again.update(lambda s: (s, s)) == 2.0
        b = other.bucket(b"b", lambda: 5.0)
        assert b is not None and b.update(lambda s: (s, s)) == 5.0
        other.close()
    finally:
        table.close()


def test_a_full_table_says_so() -> None:
    table = SharedBuckets.create(slots=2)
    try:
        assert table.bucket(b"a", lambda: 0.0) is not None and table.bucket(b"b", lambda: 0.0) is not None
        assert table.bucket(b"c", lambda: 0.0) is None
    finally:
        table.close()


def test_processes_racing_never_take_more_than_the_bucket_holds() -> None:
    table = SharedBuckets.create(slots=16)
    context = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[int] = context.Queue()
    try:
        procs = [context.Process(target=_take_all, args=(table.fd, 15_000, out)) for _ in range(2)]
        for proc in procs:
            proc.start()
        taken = [out.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        assert sum(taken) == 20_000
    finally:
        table.close()
