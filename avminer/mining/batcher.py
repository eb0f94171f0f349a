"""Micro-batching: trade a few milliseconds of latency for engine throughput.

A batch goes out when it holds ``max_batch`` frames, or when its oldest frame has waited
``max_wait_ms`` — so a trickle of frames is never stuck behind a batch that does not fill.
Pure logic with an injectable clock; the pipeline's assembler thread owns one batcher.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    """Collects items into batches by size and age.

    Args:
        max_batch: items per batch at most (a full batch is returned by :meth:`add` at once).
        max_wait_ms: longest an item waits in a partial batch.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, max_batch: int, max_wait_ms: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.clock = clock
        self._items: list[T] = []
        self._first_at = 0.0

    def add(self, item: T) -> list[T] | None:
        """Add one item; returns the batch when it just became full."""
        if not self._items:
            self._first_at = self.clock()
        self._items.append(item)
        if len(self._items) >= self.max_batch:
            return self.flush()
        return None

    def due(self) -> list[T] | None:
        """The partial batch if its oldest item waited ``max_wait_ms``, else None."""
        if self._items and self.clock() >= self._first_at + self.max_wait_s:
            return self.flush()
        return None

    def flush(self) -> list[T] | None:
        """Whatever is pending, now (None when empty)."""
        if not self._items:
            return None
        out, self._items = self._items, []
        return out

    def next_deadline(self) -> float | None:
        """Clock time when the pending partial batch is due (None: nothing pending)."""
        return self._first_at + self.max_wait_s if self._items else None

    def drop(self, keep: Callable[[T], bool]) -> int:
        """Remove pending items for which ``keep`` is false (revoked partitions); returns how many."""
        before = len(self._items)
        self._items = [it for it in self._items if keep(it)]
        return before - len(self._items)

    def __len__(self) -> int:
        return len(self._items)
