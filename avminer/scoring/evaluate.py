"""Evaluation helpers for detectors: rank-based AUROC."""

from __future__ import annotations

import numpy as np

from avminer.errors import ScoringError


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (like ``scipy.stats.rankdata``), float64."""
    v = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], len(v)]  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of "higher score means positive", via the Mann-Whitney U statistic.

    ``P(score of a random positive > score of a random negative) + 0.5 P(tie)``; ties get average ranks.

    Raises:
        ScoringError: either side empty or holding NaN.
    """
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ScoringError(f"AUROC needs positives and negatives, got {pos.size} and {neg.size}")
    if np.isnan(pos).any() or np.isnan(neg).any():
        raise ScoringError("AUROC scores contain NaN")
    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))
