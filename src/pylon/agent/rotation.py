"""When to renew a workload certificate (sans-IO), as Istio's secret cache decides.

Renewal is due at `expiry - grace_ratio × lifetime`, the lifetime counted from when the
certificate was received (not its notBefore, which the CA backdates for clock skew). With the
default ratio 0.5 a 24 h certificate is renewed after 12 h.
"""

from __future__ import annotations

DEFAULT_GRACE_RATIO = 0.5
#: After a failed renewal, wait this long (doubling up to `MAX_RETRY`) before trying again.
FIRST_RETRY = 0.5
MAX_RETRY = 30.0


def rotate_at(received: float, not_after: float, grace_ratio: float = DEFAULT_GRACE_RATIO) -> float:
    """The time (same clock as the arguments) at which to request the next certificate."""
    if not 0 < grace_ratio < 1:
        raise ValueError(f"grace ratio must be between 0 and 1 (exclusive), got {grace_ratio}")
    lifetime = max(not_after - received, 0.0)
    return not_after - grace_ratio * lifetime


def next_retry(previous: float | None) -> float:
    """The delay after a failed renewal: FIRST_RETRY, then doubling, capped at MAX_RETRY."""
    return FIRST_RETRY if previous is None else min(previous * 2, MAX_RETRY)
