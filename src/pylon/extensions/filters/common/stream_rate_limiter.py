"""One direction of one stream paced by a byte token bucket, as Envoy's StreamRateLimiter does it (sans-IO).

Why sans-IO: the pacing is arithmetic on a clock, a bucket and a queue of bytes; the bandwidth_limit filter
(extensions/filters/http/bandwidth_limit.py) owns the timer and the stream, and the tests drive this with a
clock of their own, no sleeping.

Envoy 1.40 (source/extensions/filters/http/common/stream_rate_limiter.cc, token_bucket_impl.cc):

- the bucket holds at most `limit_kbps * 1024` tokens (KiB/s: the proto says "KiB/s" and Envoy multiplies by
  1024) and refills at that many per second; a byte costs a token (where a bucket starts is the filter's
  business: see bandwidth_limit.py);
- data a stream writes joins its buffer, and a tick takes as many tokens as the buffer holds (fewer when the
  bucket has fewer: whole tokens only) and lets that many bytes on. With bytes left over, the next tick is one
  `fill_interval` later and counts as enforced (its delay, one fill interval, adds to the filter's delay);
- the first tick after a write with nothing pending is at once (Envoy: a 0 ms timer; here the bytes the bucket
  already allows go on synchronously, which is the same order and amount);
- the stream's end passes once the buffer is empty;
- the buffer is a watermark buffer: above `high_watermark` bytes (the connection's buffer limit) the data's
  source is paused, below half of it resumed.

The bucket is one number, the moment it would have been empty (extensions/filters/common/token_bucket.py's
representation), so the workers can share it in shared memory as Envoy's threads share one SharedTokenBucketImpl.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import NamedTuple


def kib_to_bytes(kib: int) -> int:
    """Envoy's StreamRateLimiter::kiloBytesToBytes: limit_kbps is KiB, 1024 bytes each."""
    return kib * 1024


class ByteBucket(NamedTuple):
    """A bucket's rule: `max_tokens` bytes, refilled at `rate` bytes per second. Its state is `start`, the
    moment it would have been empty: `tokens(now) = min(max_tokens, (now - start) * rate)`."""

    max_tokens: float
    rate: float

    def start_with(self, tokens: float, now: float) -> float:
        """The state of a bucket holding `tokens` at `now` (Envoy's maybeReset)."""
        return now - tokens / self.rate

    def consume(self, start: float, now: float, wanted: int) -> tuple[float, int]:
        """Take up to `wanted` whole tokens at `now` (Envoy's consume with allow_partial): (new state, taken)."""
        tokens = min(self.max_tokens, (now - start) * self.rate)
        taken = min(wanted, math.floor(tokens)) if tokens > 0 else 0
        return now - (tokens - taken) / self.rate, taken


class Tick(NamedTuple):
    """What one step of the limiter lets through."""

    data: bytes  # the bytes that go on now (maybe none)
    again: bool  # bytes are left: the next tick is one fill interval from now
    end: bool  # the stream's end goes on after `data`


class StreamRateLimiter:
    """The pending bytes of one stream direction and when they may go on.

    `take(wanted) -> taken` draws whole tokens from the bucket (shared or not, the caller's business).
    `on_pause(True/False)` is called when the buffer crosses the watermarks.
    """

    __slots__ = ("take", "high_watermark", "pending", "length", "saw_end", "ticking", "above_high", "on_pause")

    def __init__(self, take: Callable[[int], int], high_watermark: int, on_pause: Callable[[bool], None]) -> None:
        self.take = take
        self.high_watermark = high_watermark
        self.on_pause = on_pause
        self.pending: deque[bytes] = deque()
        self.length = 0
        self.saw_end = False
        self.ticking = False  # a tick is due (bytes are waiting for tokens)
        self.above_high = False

    def write(self, data: bytes) -> bytes | None:
        """Bytes from the source: those the bucket allows now go on (then `ticking` says whether some are left for
        the next tick), unless bytes wait ahead of them (None: the due tick takes them in turn)."""
        if self.ticking:
            self.pending.append(data)
            self.length += len(data)
            self._watermarks()
            return None
        size = len(data)  # nothing waits (a tick leaves bytes behind only while ticking)
        taken = self.take(size) if size else 0
        if taken == size:
            return data
        self.pending.append(data[taken:])
        self.length = size - taken
        self.ticking = True
        self._watermarks()
        return data[:taken]

    def end(self) -> bool:
        """The source ended: True when the end may go on now, False when it waits for the pending bytes (a later
        tick says `end`)."""
        self.saw_end = True
        return self.length == 0

    def tick(self) -> Tick:
        """Envoy's onTokenTimer: as many pending bytes as the bucket has tokens go on."""
        taken = self.take(self.length) if self.length else 0
        data = self._pop(taken)
        again = self.length > 0
        self.ticking = again
        self._watermarks()
        return Tick(data, again, self.saw_end and not again)

    def _pop(self, size: int) -> bytes:
        if not size:
            return b""
        self.length -= size
        pending = self.pending
        if size == len(pending[0]):
            return pending.popleft()
        out = []
        while size:
            piece = pending[0]
            if len(piece) <= size:
                out.append(pending.popleft())
                size -= len(piece)
            else:
                out.append(piece[:size])
                pending[0] = piece[size:]
                size = 0
        return b"".join(out)

    def _watermarks(self) -> None:
        """Envoy's WatermarkBuffer: above the high mark the source pauses, and resumes at half of it or less.
        The pause is said again while above (the stream may have resumed the source for a reason of its own)."""
        if self.length > self.high_watermark:
            self.above_high = True
            self.on_pause(True)
        elif self.above_high and self.length <= self.high_watermark // 2:
            self.above_high = False
            self.on_pause(False)
