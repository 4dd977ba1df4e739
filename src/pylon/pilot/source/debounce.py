"""Istio's push debouncing, sans-IO: act 100 ms after the last change, but at most 10 s after the first.

istiod waits `PILOT_DEBOUNCE_AFTER` (100 ms) of quiet before it recomputes, so a
burst of edits (an editor writing a file in steps, `kubectl apply -f dir/`) costs
one push; `PILOT_DEBOUNCE_MAX` (10 s) bounds the wait when changes never stop.
"""

from __future__ import annotations

DEBOUNCE_AFTER = 0.1
DEBOUNCE_MAX = 10.0


class Debouncer:
    """Tracks changes by timestamp and says when the accumulated change is due."""

    def __init__(self, after: float = DEBOUNCE_AFTER, max_delay: float = DEBOUNCE_MAX) -> None:
        self.after = after
        self.max_delay = max_delay
        self._first: float | None = None
        self._last: float | None = None

    @property
    def pending(self) -> bool:
        return self._first is not None

    def change(self, now: float) -> None:
        """Record a change seen at `now`."""
        if self._first is None:
            self._first = now
        self._last = now

    def deadline(self) -> float | None:
        """When the pending change becomes due (None: nothing pending)."""
        if self._first is None or self._last is None:
            return None
        return min(self._last + self.after, self._first + self.max_delay)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def fire(self) -> None:
        """The pending change was acted on; start afresh."""
        self._first = self._last = None
