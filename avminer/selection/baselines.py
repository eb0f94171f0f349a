"""Baseline selection policies, behind the same interface as :class:`~avminer.selection.policy.SelectionPolicy`.

They exist so that the backtest (``avminer backtest``) can measure the product's policy against what a
team would do without it, through the same miner: only ``selection.policy`` changes.

- ``random``: each frame is mined with probability ``target_rate`` (a hash of the frame's sample id and
  ``selection.seed``, so a replay draws the same frames): uniform over the stream at the same budget.
- ``entropy``: predictive entropy of the ensemble mean (the scorer's ``entropy``), one threshold for
  all frames at the ``1 - target_rate`` quantile of the last :func:`window` frames' scores (a streaming
  top-k that follows a new model's score scale within one window; no slices, no duplicate suppression).
- ``mi``: the same with the ensemble's mutual information alone (the scorer's ``mi``: Deep Probabilistic
  Ensembles, Chitta et al. 2018).
- ``bald``: the same ranking of ``mi``, which the torch engine then computes over Monte-Carlo dropout
  passes of one member (``engine.mc_dropout_samples``; BaaL's approach) instead of over the ensemble.

Their warm-up is ``warmup_frames`` frames seen (at least :data:`WARMUP_MIN_FRAMES`): frames seen, like the
full policy's.

None of them keeps per-slice statistics or shares sketches with the fleet: their sketch export is empty
and remote sketches are ignored.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from avminer.config import SelectionSettings
from avminer.selection.policy import REFRESH_EVERY, WARMUP_MIN_FRAMES, Candidate, Verdict


class _Baseline:
    """Shared bookkeeping: per-slice counters for :meth:`stats`, no fleet sketches."""

    name = "baseline"

    def __init__(self, settings: SelectionSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._frames: Counter[str] = Counter()
        self._mined: Counter[str] = Counter()
        self._rejected: dict[str, Counter[str]] = {}
        self._threshold: float | None = None

    def select(self, cands: Sequence[Candidate]) -> list[Verdict]:
        """Decide a batch, in arrival order."""
        with self._lock:
            out = []
            for c in cands:
                v = self._decide(c)
                self._frames[c.slice] += 1
                if v.mined:
                    self._mined[c.slice] += 1
                else:
                    self._rejected.setdefault(c.slice, Counter())[v.rejected or "below_threshold"] += 1
                out.append(v)
            return out

    def _decide(self, c: Candidate) -> Verdict:
        raise NotImplementedError

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per slice: frames, mined, rates, the (fleet-wide) threshold and rejections."""
        with self._lock:
            return {
                key: {
                    "frames": n, "distinct": n, "mined": self._mined[key],
                    "mined_rate": self._mined[key] / n, "distinct_rate": self._mined[key] / n,
                    "target_rate": self.settings.target_rate, "threshold": self._threshold,
                    "fleet_frames": n, "rejected": dict(self._rejected.get(key, {})), "reasons": {},
                }
                for key, n in sorted(self._frames.items())
            }

    def export_sketches(self) -> dict[str, bytes]:
        """Nothing: a baseline ranks against this miner's frames only."""
        return {}

    def merge_remote(self, miner_id: str, sketches: Mapping[str, bytes]) -> None:
        """Ignored (see :meth:`export_sketches`)."""

    def forget_remote(self, miner_id: str) -> None:
        """Ignored."""

    def reset_statistics(self) -> None:
        """Nothing to reset between models but the threshold's sketch (see subclasses)."""

    def set_model_quality(self, quality: Mapping[str, Any] | None) -> None:
        """Ignored: a baseline reads no measured quality."""


class RandomPolicy(_Baseline):
    """Mine each frame with probability ``target_rate``, drawn from a hash of (seed, sample id)."""

    name = "random"

    def _decide(self, c: Candidate) -> Verdict:
        digest = hashlib.sha256(f"{self.settings.seed}:{c.sample_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
        if u < self.settings.target_rate:
            return Verdict(True, ["random"], 1.0 - u, None, None, {"draw": u})
        return Verdict(False, [], 1.0 - u, "below_threshold", None, {"draw": u})


def window(settings: SelectionSettings) -> int:
    """Frames a baseline's threshold is the quantile of: twice the warm-up, at least 100."""
    return max(2 * settings.warmup_frames, 100)


class ScorePolicy(_Baseline):
    """Mine frames whose ``score`` is in the top ``target_rate`` of the recent frames (no slices).

    The threshold is the ``1 - target_rate`` quantile of the last :func:`window` scores, recomputed every
    :data:`REFRESH_EVERY` frames; until ``warmup_frames`` frames (at least :data:`WARMUP_MIN_FRAMES`)
    nothing is mined, as in the full policy.

    Args:
        settings: ``settings.selection``.
        score: the scorer's key to rank by (``entropy`` or ``mi``).
        name: the policy's name.
    """

    def __init__(self, settings: SelectionSettings, score: str, name: str) -> None:
        super().__init__(settings)
        self.score = score
        self.name = name
        self._recent: deque[float] = deque(maxlen=window(settings))
        self._since = 0

    def _decide(self, c: Candidate) -> Verdict:
        value = float(c.scores.get(self.score, 0.0))
        warm = len(self._recent) >= max(self.settings.warmup_frames, WARMUP_MIN_FRAMES)
        if warm and (self._threshold is None or self._since >= REFRESH_EVERY):
            self._threshold = float(np.quantile(np.fromiter(self._recent, np.float64), 1.0 - self.settings.target_rate))
            self._since = 0
        self._since += 1
        self._recent.append(value if np.isfinite(value) else 0.0)
        if self._threshold is None:
            return Verdict(False, [], value, "warmup", None, {})
        if value <= self._threshold:
            return Verdict(False, [], value, "below_threshold", self._threshold, {})
        return Verdict(True, [self.score], value, None, self._threshold, {})

    def reset_statistics(self) -> None:
        """Forget the recent scores (a new model changes the score's scale)."""
        with self._lock:
            self._recent.clear()
            self._threshold = None
