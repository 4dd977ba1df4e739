"""Reconnect backoff: exponential ceiling, full jitter, capped, reset by a good stream."""

from __future__ import annotations

import random

from pylon.xds.backoff import Backoff


class Highest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


def test_ceiling_doubles_up_to_the_maximum_and_resets() -> None:
    backoff = Backoff(base=0.5, maximum=3.0, rng=Highest())
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_delays_are_jittered_below_the_ceiling() -> None:
    backoff = Backoff(base=1.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(3)]
    assert all(0 <= d <= 2**i for i, d in enumerate(delays)) and len(set(delays)) == 3
