"""Envoy's StreamRateLimiter on a clock the test moves: bytes paced by a byte bucket, watermarks (sans-IO)."""

from __future__ import annotations

import pytest

from pylon.extensions.filters.common.stream_rate_limiter import ByteBucket, StreamRateLimiter, kib_to_bytes

KIB = 1024


class Clocked:
    """A bucket in state `start`, drawn at the test's `now`."""

    def __init__(self, rule: ByteBucket, initial: float) -> None:
        self.rule = rule
        self.now = 0.0
        self.start = rule.start_with(initial, 0.0)

    def take(self, wanted: int) -> int:
        self.start, taken = self.rule.consume(self.start, self.now, wanted)
        return taken


def limiter(kib_per_s: int, fill: float = 0.05, high: int = 1 << 20) -> tuple[StreamRateLimiter, Clocked, list[bool]]:
    rate = float(kib_to_bytes(kib_per_s))
    bucket = Clocked(ByteBucket(rate, rate), rate * fill)  # Envoy's first reset: one fill interval's worth
    pauses: list[bool] = []
    return StreamRateLimiter(bucket.take, high, pauses.append), bucket, pauses


def test_limit_kbps_is_kibibytes() -> None:
    assert kib_to_bytes(100) == 102400


def test_bucket_gives_whole_tokens_refills_continuously_and_caps() -> None:
    rule = ByteBucket(max_tokens=1000.0, rate=1000.0)
    start = rule.start_with(0.0, 10.0)
    start, taken = rule.consume(start, 10.0015, 100)
    assert taken == 1  # 1.5 tokens: one whole
    start, taken = rule.consume(start, 10.0015, 100)
    assert taken == 0  # the half token stays
    start, taken = rule.consume(start, 10.1, 5000)
    assert taken == 99  # 0.5 left + 98.5 since
    _, taken = rule.consume(start, 1000.0, 5000)
    assert taken == 1000  # never more than max_tokens after an idle spell


def test_a_body_is_paced_at_the_limit() -> None:
    # 200 KiB at 100 KiB/s: one fill interval's worth at once, then 5 KiB every 50 ms: about 1.95 s in all
    paced, bucket, _ = limiter(100)
    body = bytes(range(256)) * 800
    first = paced.write(body[:65536])
    assert first is not None and len(first) == 5120 and paced.ticking
    out = [first]
    assert paced.write(body[65536:]) is None  # bytes wait ahead of it: the due tick takes it
    assert not paced.end()
    ends = []
    while paced.ticking:
        bucket.now += 0.05
        tick = paced.tick()
        assert len(tick.data) <= 5121  # a fill interval's worth (and a fraction carried over)
        out.append(tick.data)
        ends.append(tick.end)
    assert b"".join(out) == body
    assert ends[-1] and not any(ends[:-1])
    assert bucket.now >= 1.9


def test_an_unlimited_amount_passes_at_once() -> None:
    paced, _, _ = limiter(1024 * 1024)
    data = b"x" * 100000
    assert paced.write(data) is data and not paced.ticking
    assert paced.end()


def test_a_tick_with_no_tokens_lets_nothing_through_and_goes_again() -> None:
    paced, bucket, _ = limiter(1, fill=0.02)  # 20 bytes at first
    assert paced.write(b"x" * 100) == b"x" * 20
    tick = paced.tick()  # same instant: no tokens
    assert tick.data == b"" and tick.again and not tick.end
    bucket.now += 0.05
    assert len(paced.tick().data) == 51


def test_a_paused_source_resumes_at_half_the_high_watermark() -> None:
    paced, bucket, pauses = limiter(1, high=1000)
    paced.write(b"x" * 900)
    assert pauses == []
    paced.write(b"x" * 200)  # 1100 - 51 held: above 1000
    assert pauses == [True] and paced.above_high
    paced.write(b"x" * 10)
    assert pauses == [True, True]  # said again: the stream may have resumed the source for its own reasons
    bucket.now += 0.5  # 512 more tokens: 547 held
    paced.tick()
    assert pauses[-1] is True
    bucket.now += 0.1
    paced.tick()  # 445 held: at most half of 1000
    assert pauses[-1] is False and not paced.above_high


@pytest.mark.parametrize("sizes", [[1, 2, 3], [5000, 1], [1, 10000]])
def test_pieces_come_out_in_order_split_anywhere(sizes: list[int]) -> None:
    paced, bucket, _ = limiter(1)
    pieces = [bytes([i + 65]) * size for i, size in enumerate(sizes)]
    out = []
    for piece in pieces:
        allowed = paced.write(piece)
        if allowed is not None:
            out.append(allowed)
    while paced.ticking:
        bucket.now += 0.05
        out.append(paced.tick().data)
    assert b"".join(out) == b"".join(pieces)
