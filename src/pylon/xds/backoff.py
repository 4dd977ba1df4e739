"""Reconnect delays: exponential with full jitter, as Envoy's xDS streams (sans-IO).

Envoy retries a failed xDS stream after a random delay in [0, base * 2^n)
capped at a maximum (base 500 ms, max 30 s); a stream that was established
resets it. Jitter keeps a fleet of proxies from reconnecting in lockstep
when their management server comes back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

BASE_INTERVAL_S = 0.5
MAX_INTERVAL_S = 30.0


@dataclass
class Backoff:
    base: float = BASE_INTERVAL_S
    maximum: float = MAX_INTERVAL_S
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (and one more failed attempt counted)."""
        ceiling = min(self.maximum, self.base * 2**self.attempts)
        self.attempts += 1
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        """A stream was established: the next failure starts from the base interval again."""
        self.attempts = 0
