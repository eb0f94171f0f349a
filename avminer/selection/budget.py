"""Token buckets: at most ``capacity`` mined frames per period, refilled continuously."""

from __future__ import annotations

from collections.abc import Callable

from avminer.errors import SelectionError


class TokenBucket:
    """A bucket of ``capacity`` tokens refilled at ``capacity / period_s`` per second of ``clock``.

    Starts full. ``clock`` is injectable so tests control time.
    """

    def __init__(self, capacity: float, period_s: float, clock: Callable[[], float]) -> None:
        if capacity < 0 or period_s <= 0:
            raise SelectionError(f"token bucket needs capacity >= 0 and period > 0, got {capacity}, {period_s}")
        self.capacity = float(capacity)
        self.rate = self.capacity / float(period_s)
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._last)  # a clock stepping backwards refills nothing
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._last = now

    def try_take(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if available; False (and nothing taken) otherwise."""
        self._refill()
        if self._tokens + 1e-9 >= n:
            self._tokens -= n
            return True
        return False
