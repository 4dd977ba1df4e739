"""Envoy's token bucket as its local rate limit runs it: refilled continuously, kept as one number (sans-IO).

Envoy 1.40's local rate limit refills at `tokens_per_fill / fill_interval` tokens per second, continuously, up to
`max_tokens`, starting full (observed: with 2 tokens per 2 s, a request 1.3 s after the bucket ran dry passes,
one 0.6 s after does not). Its AtomicTokenBucket keeps the whole state as one time: the moment the bucket
would have been empty, so `tokens(now) = min(max_tokens, (now - start) * rate)`; consuming k tokens moves that
moment forward by k / rate. One number is what lets pylon's workers share a bucket: they keep it in shared
memory (proxy/shared_buckets.py) and change it under a lock, so N workers never pass N times the rate.

`x-ratelimit-reset` (DRAFT_VERSION_03) is the whole seconds, rounded up, until the next token.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class Taken(NamedTuple):
    allowed: bool
    remaining: int  # whole tokens left after this request (x-ratelimit-remaining)
    reset: int  # seconds until the next token (x-ratelimit-reset); 0 while one is there


class BucketRule(NamedTuple):
    max_tokens: float
    rate: float  # tokens per second

    def full_start(self, now: float) -> float:
        """The state of a full bucket at `now`."""
        return now - self.max_tokens / self.rate

    def take(self, start: float, now: float) -> tuple[float, Taken]:
        """Take one token from a bucket in state `start` at `now`: (the new state, what happened)."""
        tokens = min(self.max_tokens, (now - start) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        new_start = now - tokens / self.rate
        reset = 0 if tokens >= 1.0 else math.ceil((1.0 - tokens) / self.rate)
        return new_start, Taken(allowed, int(tokens), reset)


class LocalBucket:
    """A bucket only this process uses (one connection's, or a worker's when there is nowhere to share)."""

    __slots__ = ("rule", "start")

    def __init__(self, rule: BucketRule, now: float) -> None:
        self.rule = rule
        self.start = rule.full_start(now)

    def take(self, now: float) -> Taken:
        self.start, taken = self.rule.take(self.start, now)
        return taken
