"""The local rate limit's token bucket on a fake clock: Envoy 1.40's continuous refill (sans-IO)."""

from __future__ import annotations

from pylon.extensions.filters.common.token_bucket import BucketRule, LocalBucket, Taken


def test_starts_full_and_empties() -> None:
    bucket = LocalBucket(BucketRule(max_tokens=2, rate=1.0), now=100.0)
    assert bucket.take(100.0) == Taken(True, 1, 0)
    assert bucket.take(100.0) == Taken(True, 0, 1)
    assert bucket.take(100.0) == Taken(False, 0, 1)


def test_refills_continuously_not_per_interval() -> None:
    # 2 tokens per 2 s: one token a second, as Envoy's AtomicTokenBucket (a timer-filled bucket would wait 2 s)
    bucket = LocalBucket(BucketRule(max_tokens=2, rate=2 / 2.0), now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert not bucket.take(0.6).allowed
    assert bucket.take(1.1).allowed
    assert not bucket.take(1.5).allowed  # 0.5 tokens since
    assert bucket.take(2.2).allowed


def test_never_holds_more_than_max_tokens() -> None:
    bucket = LocalBucket(BucketRule(max_tokens=3, rate=10.0), now=0.0)
    taken = [bucket.take(1000.0).allowed for _ in range(5)]
    assert taken == [True, True, True, False, False]


def test_reset_is_whole_seconds_rounded_up_to_the_next_token() -> None:
    bucket = LocalBucket(BucketRule(max_tokens=1, rate=2 / 5.0), now=0.0)  # a token every 2.5 s
    assert bucket.take(0.0) == Taken(True, 0, 3)
    assert bucket.take(1.0) == Taken(False, 0, 2)  # 0.4 tokens in: 1.5 s to go


def test_a_rate_limited_request_takes_nothing() -> None:
    rule = BucketRule(max_tokens=1, rate=1.0)
    state, taken = rule.take(rule.full_start(0.0), 0.0)
    assert taken.allowed
    again, refused = rule.take(state, 0.5)
    assert not refused.allowed and again == state  # the half token stays
