"""A mergeable quantile sketch with bounded relative error (log-bucket histogram, DDSketch-style).

Masson, Rim & Lee, *DDSketch: A Fast and Fully-Mergeable Quantile Sketch with Relative-Error
Guarantees*, VLDB 2019. Values ``x > min_value`` fall into bucket ``ceil(log_gamma x)`` with
``gamma = (1 + a) / (1 - a)``; every quantile is answered within relative error ``a`` of the exact
order statistic. Merging adds bucket counts, so ``merge(sketch(A), sketch(B))`` equals ``sketch(A + B)``
exactly, whichever miner saw which frames — what the fleet-wide thresholds need. Scores are
non-negative; values ``<= min_value`` (and negatives) share one zero bucket; NaNs are ignored.

High quantiles are what selection needs: when the number of buckets exceeds ``max_bins`` the lowest
buckets are collapsed into one (low quantiles lose accuracy, high ones keep it).

Wire format (little-endian), version byte first::

    u8 version=1 | f64 relative_accuracy | f64 min_value | u32 max_bins | u64 zero_count
    | f64 min | f64 max | u32 n_bins | i32[n_bins] keys | u64[n_bins] counts
"""

from __future__ import annotations

import bisect
import math
import struct

import numpy as np
from numpy.typing import ArrayLike, NDArray

from avminer.errors import SelectionError

VERSION = 1
_HEADER = struct.Struct("<BddIQddI")


class QuantileSketch:
    """Mergeable quantile sketch of non-negative values with relative accuracy ``relative_accuracy``."""

    def __init__(self, relative_accuracy: float = 0.0025, min_value: float = 1e-9, max_bins: int = 4096) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise SelectionError(f"relative_accuracy must be in (0, 1), got {relative_accuracy}")
        if min_value <= 0.0 or max_bins < 2:
            raise SelectionError(f"min_value must be > 0 and max_bins >= 2, got {min_value}, {max_bins}")
        self.relative_accuracy = float(relative_accuracy)
        self.min_value = float(min_value)
        self.max_bins = int(max_bins)
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self._bins: dict[int, int] = {}
        self._n_pos = 0  # sum of the bins' counts
        self.zero_count = 0
        self.min = math.inf
        self.max = -math.inf
        self._cache: tuple[NDArray[np.int64], NDArray[np.int64], list[int], list[int]] | None = None

    # -- building ----------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Values added (NaNs excluded)."""
        return self.zero_count + self._n_pos

    def _keys(self, x: NDArray[np.float64]) -> NDArray[np.int64]:
        keys: NDArray[np.int64] = np.ceil(np.log(x) / self._log_gamma).astype(np.int64)
        return keys

    def update(self, values: ArrayLike) -> None:
        """Add one value or an array of values."""
        if isinstance(values, float | int):  # the per-frame fast path: no numpy round trip
            self._add_one(float(values))
            return
        x = np.asarray(values, dtype=np.float64).ravel()
        x = x[~np.isnan(x)]
        if x.size == 0:
            return
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        pos = x[x > self.min_value]
        self.zero_count += int(x.size - pos.size)
        if pos.size:
            keys, counts = np.unique(self._keys(pos), return_counts=True)
            for k, c in zip(keys.tolist(), counts.tolist(), strict=True):
                self._bins[k] = self._bins.get(k, 0) + c
            self._n_pos += int(pos.size)
            self._collapse()
        self._cache = None

    def _add_one(self, x: float) -> None:
        if math.isnan(x):
            return
        self.min = min(self.min, x)
        self.max = max(self.max, x)
        if x > self.min_value:
            k = math.ceil(math.log(x) / self._log_gamma)
            self._bins[k] = self._bins.get(k, 0) + 1
            self._n_pos += 1
            self._collapse()
        else:
            self.zero_count += 1
        self._cache = None

    def _collapse(self) -> None:
        if len(self._bins) <= self.max_bins:
            return
        keys = sorted(self._bins)
        excess = keys[: len(keys) - self.max_bins + 1]
        merged = sum(self._bins.pop(k) for k in excess)
        target = excess[-1]
        self._bins[target] = self._bins.get(target, 0) + merged

    def merge(self, other: QuantileSketch) -> None:
        """Add another sketch's counts into this one (same accuracy and min_value required)."""
        if (other.relative_accuracy, other.min_value) != (self.relative_accuracy, self.min_value):
            raise SelectionError(
                f"cannot merge sketches of accuracy/min_value {other.relative_accuracy}/{other.min_value} into "
                f"{self.relative_accuracy}/{self.min_value}; every miner must use the same sketch settings"
            )
        for k, c in other._bins.items():
            self._bins[k] = self._bins.get(k, 0) + c
        self._n_pos += other._n_pos
        self.zero_count += other.zero_count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self._collapse()
        self._cache = None

    def copy(self) -> QuantileSketch:
        """An independent copy."""
        out = QuantileSketch(self.relative_accuracy, self.min_value, self.max_bins)
        out.merge(self)
        return out

    # -- queries -----------------------------------------------------------------------------------------
    def _sorted(self) -> tuple[NDArray[np.int64], NDArray[np.int64], list[int], list[int]]:
        """Sorted keys and cumulative counts, as arrays and as lists (cached until the next change)."""
        if self._cache is None:
            keys = np.array(sorted(self._bins), dtype=np.int64)
            cum = np.cumsum(np.array([self._bins[k] for k in keys.tolist()], dtype=np.int64))
            self._cache = (keys, cum, keys.tolist(), cum.tolist())
        return self._cache

    def _value(self, key: int) -> float:
        return 2.0 * self._gamma**key / (self._gamma + 1.0)  # bucket midpoint in relative terms

    def quantile(self, q: float) -> float:
        """Value at quantile ``q`` in [0, 1] (within relative error of the exact order statistic).

        Raises:
            SelectionError: an empty sketch or ``q`` outside [0, 1].
        """
        if not 0.0 <= q <= 1.0:
            raise SelectionError(f"quantile must be in [0, 1], got {q}")
        n = self.count
        if n == 0:
            raise SelectionError("quantile of an empty sketch")
        rank = q * (n - 1)  # the exact order statistic this answers for: index floor(rank)
        if rank < self.zero_count:
            return float(min(max(self.min, 0.0), self.min_value))  # the zero bucket
        keys, cum, _, _ = self._sorted()
        i = int(np.searchsorted(cum, math.floor(rank) - self.zero_count, side="right"))
        i = min(i, len(keys) - 1)
        return float(min(max(self._value(int(keys[i])), self.min), self.max))

    def count_above(self, values: ArrayLike) -> NDArray[np.float64]:
        """Estimated number of sketched values strictly above each of ``values``.

        Values in the query's own bucket count half (they are as likely above as below it).
        """
        x = np.asarray(values, dtype=np.float64)
        n = self.count
        keys, cum, _, _ = self._sorted()
        total_pos = float(cum[-1]) if len(cum) else 0.0
        out = np.empty(x.shape, dtype=np.float64)
        small = ~(x > self.min_value)
        out[small] = total_pos + 0.5 * self.zero_count if n else 0.0
        if (~small).any():
            qk = self._keys(x[~small])
            lo = np.searchsorted(keys, qk, side="left")  # buckets strictly below the query's bucket
            hi = np.searchsorted(keys, qk, side="right")  # ... and up to it
            below = np.where(lo > 0, cum[np.maximum(lo - 1, 0)], 0) if len(cum) else np.zeros_like(qk)
            upto = np.where(hi > 0, cum[np.maximum(hi - 1, 0)], 0) if len(cum) else np.zeros_like(qk)
            out[~small] = total_pos - upto + 0.5 * (upto - below)
        return out

    def count_above_one(self, value: float) -> float:
        """:meth:`count_above` for one value, without numpy overhead (the per-frame path)."""
        _, _, keys, cum = self._sorted()
        total_pos = cum[-1] if cum else 0
        if not value > self.min_value:
            return total_pos + 0.5 * self.zero_count if self.count else 0.0
        k = math.ceil(math.log(value) / self._log_gamma)
        lo = bisect.bisect_left(keys, k)
        hi = bisect.bisect_right(keys, k)
        below = cum[lo - 1] if lo > 0 else 0
        upto = cum[hi - 1] if hi > 0 else 0
        return total_pos - upto + 0.5 * (upto - below)

    # -- wire --------------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialise (format in the module docstring)."""
        keys = np.array(sorted(self._bins), dtype="<i4")
        counts = np.array([self._bins[k] for k in keys.tolist()], dtype="<u8")
        head = _HEADER.pack(VERSION, self.relative_accuracy, self.min_value, self.max_bins, self.zero_count,
                            self.min, self.max, len(keys))
        return head + keys.tobytes() + counts.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> QuantileSketch:
        """Inverse of :meth:`to_bytes`.

        Raises:
            SelectionError: truncated bytes, an unknown version, or inconsistent contents.
        """
        if len(data) < _HEADER.size:
            raise SelectionError(f"sketch bytes truncated: {len(data)} < header {_HEADER.size}")
        version, acc, min_value, max_bins, zero, mn, mx, n = _HEADER.unpack_from(data)
        if version != VERSION:
            raise SelectionError(f"sketch format version {version} is not {VERSION}; upgrade avminer on every miner")
        if len(data) != _HEADER.size + 12 * n:
            raise SelectionError(f"sketch bytes hold {len(data)} bytes, expected {_HEADER.size + 12 * n}")
        out = cls(acc, min_value, max_bins)
        keys = np.frombuffer(data, dtype="<i4", count=n, offset=_HEADER.size)
        counts = np.frombuffer(data, dtype="<u8", count=n, offset=_HEADER.size + 4 * n)
        out._bins = {int(k): int(c) for k, c in zip(keys.tolist(), counts.tolist(), strict=True) if c}
        out._n_pos = sum(out._bins.values())
        out.zero_count, out.min, out.max = int(zero), float(mn), float(mx)
        return out

    def __repr__(self) -> str:
        return f"QuantileSketch(count={self.count}, bins={len(self._bins)}, a={self.relative_accuracy})"
