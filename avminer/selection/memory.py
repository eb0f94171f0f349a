"""Bounded memory of recent embeddings for near-duplicate checks (cosine similarity)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from avminer.errors import SelectionError


def normalize(x: np.ndarray) -> NDArray[np.float32]:
    """Rows scaled to unit L2 norm (zero rows stay zero); ``[N, D]`` float32."""
    v = np.asarray(x, dtype=np.float32)
    if v.ndim != 2:
        raise SelectionError(f"embeddings must be [N, D], got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)  # [N, 1]
    out: NDArray[np.float32] = v / np.maximum(norms, np.float32(1e-12))
    return out


class EmbeddingMemory:
    """Ring buffer of the last ``capacity`` unit embeddings.

    Memory is ``capacity x D`` float32 (2048 x 128: 1 MiB). A query costs one ``[N, D] @ [D, capacity]``
    product. Embeddings of another dimension (a new model) clear the memory: old and new feature spaces
    are not comparable.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise SelectionError(f"memory capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._buf: NDArray[np.float32] | None = None  # [capacity, D]
        self._size = 0
        self._next = 0

    def __len__(self) -> int:
        return self._size

    def clear(self) -> None:
        """Forget everything."""
        self._buf, self._size, self._next = None, 0, 0

    def max_similarity(self, unit: np.ndarray) -> NDArray[np.float32]:
        """Highest cosine similarity of each unit row ``[N, D]`` to the memory; -1 when empty."""
        q = np.asarray(unit, dtype=np.float32)
        if self._buf is None or self._size == 0 or q.shape[1] != self._buf.shape[1]:
            return np.full(len(q), -1.0, dtype=np.float32)
        sims = q @ self._buf[: self._size].T  # [N, size]
        out: NDArray[np.float32] = sims.max(axis=1)
        return out

    def add(self, unit: np.ndarray) -> None:
        """Remember unit rows ``[N, D]`` (the oldest are overwritten when full)."""
        q = np.asarray(unit, dtype=np.float32)
        if q.ndim != 2:
            raise SelectionError(f"embeddings must be [N, D], got shape {q.shape}")
        if self._buf is None or self._buf.shape[1] != q.shape[1]:
            self._buf = np.zeros((self.capacity, q.shape[1]), dtype=np.float32)
            self._size, self._next = 0, 0
        for row in q[-self.capacity:]:
            self._buf[self._next] = row
            self._next = (self._next + 1) % self.capacity
            self._size = min(self._size + 1, self.capacity)
