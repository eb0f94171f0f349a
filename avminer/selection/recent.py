"""The component scores of the last frames a miner judged, to re-rank them against current statistics."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from avminer.errors import SelectionError


class RecentScores:
    """Ring buffer of the last ``capacity`` frames' component values, with each frame's slice.

    The full policy's threshold is a quantile of these frames' priorities computed *now*, against the same
    sketches a new frame is ranked against (:meth:`avminer.selection.policy.SelectionPolicy._recent_priorities`):
    priorities recorded when each frame arrived were measured against smaller, older statistics and would
    not be comparable. Memory: ``capacity x width`` float64 (4096 x 4: 128 KiB).
    """

    def __init__(self, capacity: int, width: int) -> None:
        if capacity < 1 or width < 1:
            raise SelectionError(f"recent scores: capacity and width must be >= 1, got {capacity}, {width}")
        self.capacity = int(capacity)
        self._values = np.zeros((self.capacity, width), dtype=np.float64)
        self._slice_ids = np.zeros(self.capacity, dtype=np.int32)
        self._keys: dict[str, int] = {}
        self._size = 0
        self._next = 0

    def __len__(self) -> int:
        return self._size

    def add(self, slice_key: str, values: NDArray[np.float64] | list[float]) -> None:
        """Remember one frame (the oldest is overwritten when full)."""
        self._values[self._next] = values
        self._slice_ids[self._next] = self._keys.setdefault(slice_key, len(self._keys))
        self._next = (self._next + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def by_slice(self) -> dict[str, NDArray[np.float64]]:
        """The remembered values grouped by slice, ``{slice: [n, width]}``."""
        ids = self._slice_ids[: self._size]
        values = self._values[: self._size]
        present = np.unique(ids)
        return {key: values[ids == i] for key, i in self._keys.items() if i in present}

    def clear(self) -> None:
        """Forget everything (a new model: scores of the old one are not comparable)."""
        self._size, self._next = 0, 0
        self._keys.clear()
