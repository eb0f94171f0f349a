"""Ensemble uncertainty of semantic segmentation: pixel maps and their pooling to one score per frame.

Inputs are the K ensemble members' softmax outputs ``probs [K, N, C, H, W]`` (Deep Probabilistic
Ensembles: Chitta, Alvarez & Lesnikowski, *Large-Scale Visual Active Learning with Deep Probabilistic
Ensembles*, 2018). With ``p̄ = mean_k p_k``:

- predictive entropy ``PE = H[p̄]`` (total uncertainty);
- expected entropy ``EE = E_k H[p_k]`` (aleatoric part);
- mutual information ``MI = PE - EE`` (epistemic part, BALD: Houlsby et al., *Bayesian Active
  Learning for Classification and Preference Learning*, 2011; Gal, Islam & Ghahramani, *Deep Bayesian
  Active Learning with Image Data*, ICML 2017). Computed as ``E_k KL(p_k || p̄)``, which equals
  ``PE - EE`` but is a sum of non-negative terms, so it does not cancel catastrophically when the
  members agree; it is clipped at 0;
- variation ratio ``1 - (votes for the modal class) / K`` over the members' argmax (Freeman 1965);
- margin ``1 - (p̄_(1) - p̄_(2))``, one minus the gap between the two most likely classes.

All maps are ``[N, H, W]`` float32. Frames are processed one at a time so the temporaries stay at
``[K, C, H, W]`` (a 4-member, 11-class 176x240 batch of 8 is 15 M floats; its full ``p log p`` would be
another 60 MB). Entropies are in nats: ``0 <= EE <= PE <= log C`` and ``0 <= MI <= log C``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from avminer.errors import ScoringError

F32 = NDArray[np.float32]

MEASURES = ("mi", "entropy", "expected_entropy", "variation_ratio", "margin")
"""Names of the pixel maps :func:`uncertainty_maps` can compute."""

_EPS = np.float32(1e-12)  # probabilities are clipped here before log: log(0) stays finite, p log p -> 0


def _check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs)
    if p.ndim != 5:
        raise ScoringError(f"probs must be [K, N, C, H, W], got shape {p.shape}")
    if p.shape[0] < 1 or p.shape[2] < 2:
        raise ScoringError(f"probs need K >= 1 members and C >= 2 classes, got shape {p.shape}")
    return p


def _argmax0(x: np.ndarray) -> NDArray[np.intp]:
    """``x.argmax(axis=0)`` for a small leading axis (classes): C passes of elementwise work, which is
    several times faster than numpy's strided argmax over a non-last axis. Ties go to the lowest index."""
    best = x[0].copy()
    idx = np.zeros(x.shape[1:], dtype=np.intp)
    better = np.empty(x.shape[1:], dtype=bool)
    for c in range(1, x.shape[0]):
        np.greater(x[c], best, out=better)
        np.copyto(idx, c, where=better)
        np.maximum(best, x[c], out=best)
    return idx


def _top2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest and second-largest values along the leading (class) axis, elementwise passes."""
    first = np.maximum(x[0], x[1])
    second = np.minimum(x[0], x[1])
    for c in range(2, x.shape[0]):
        second = np.maximum(second, np.minimum(first, x[c]))
        np.maximum(first, x[c], out=first)
    return first, second


def _frame_maps(p: F32, want: frozenset[str]) -> dict[str, F32]:
    """All requested maps of one frame; ``p`` is ``[K, C, H, W]`` float32 in [0, 1]."""
    k, c, h, w = p.shape
    out: dict[str, F32] = {}
    mean_p = p.mean(axis=0, dtype=np.float32)  # [C, H, W]
    if want & {"mi", "entropy", "expected_entropy"}:
        log_mean = np.log(np.maximum(mean_p, _EPS))  # [C, H, W]
        pe = np.maximum(-np.einsum("chw,chw->hw", mean_p, log_mean), 0.0)  # [H, W]
        out["entropy"] = pe
        if want & {"mi", "expected_entropy"}:
            log_p = np.log(np.maximum(p, _EPS))  # [K, C, H, W]
            if "expected_entropy" in want:
                ee = -np.einsum("kchw,kchw->hw", p, log_p) / np.float32(k)  # [H, W]
                out["expected_entropy"] = np.clip(ee, 0.0, pe)  # EE <= PE (Jensen); rounding aside
            if "mi" in want:
                log_p -= log_mean  # [K, C, H, W]: log p_k - log p̄, in place to save a temporary
                mi = np.einsum("kchw,kchw->hw", p, log_p) / np.float32(k)  # [H, W] = E_k KL(p_k || p̄)
                out["mi"] = np.clip(mi, 0.0, pe)  # MI <= PE; rounding aside
    if "variation_ratio" in want:
        votes = np.stack([_argmax0(member) for member in p]).reshape(k, h * w)  # [K, HW]
        flat = votes * (h * w) + np.arange(h * w)  # [K, HW]: index into a [C, HW] vote table
        counts = np.bincount(flat.ravel(), minlength=c * h * w).reshape(c, h, w)  # [C, H, W]
        out["variation_ratio"] = (1.0 - counts.max(axis=0) / np.float32(k)).astype(np.float32)
    if "margin" in want:
        first, second = _top2(mean_p)  # [H, W] each
        out["margin"] = np.clip(1.0 - (first - second), 0.0, 1.0).astype(np.float32)
    return {name: out[name].astype(np.float32, copy=False) for name in want}


def uncertainty_maps(probs: np.ndarray, measures: Iterable[str] = MEASURES) -> dict[str, F32]:
    """Compute several pixel maps in one pass over the frames (shares ``p̄`` and the logs).

    Args:
        probs: ``[K, N, C, H, W]`` member probabilities (each ``p_k`` sums to 1 over C).
        measures: names from :data:`MEASURES`.

    Returns:
        name -> ``[N, H, W]`` float32.
    """
    p = _check_probs(probs)
    want = frozenset(measures)
    unknown = want - set(MEASURES)
    if unknown:
        raise ScoringError(f"unknown uncertainty measures {sorted(unknown)}; choose from {MEASURES}")
    _, n, _, h, w = p.shape
    out = {name: np.empty((n, h, w), dtype=np.float32) for name in want}
    for i in range(n):
        frame = np.clip(p[:, i].astype(np.float32, copy=False), 0.0, 1.0)  # [K, C, H, W]
        for name, m in _frame_maps(frame, want).items():
            out[name][i] = m
    return out


def predictive_entropy(probs: np.ndarray) -> F32:
    """Entropy of the mean prediction ``H[mean_k p_k]`` in nats, ``[K,N,C,H,W] -> [N,H,W]``."""
    return uncertainty_maps(probs, ("entropy",))["entropy"]


def expected_entropy(probs: np.ndarray) -> F32:
    """Mean entropy of the members ``E_k H[p_k]`` in nats, ``[K,N,C,H,W] -> [N,H,W]``."""
    return uncertainty_maps(probs, ("expected_entropy",))["expected_entropy"]


def mutual_information(probs: np.ndarray) -> F32:
    """BALD mutual information ``H[p̄] - E_k H[p_k]`` in nats (>= 0), ``[K,N,C,H,W] -> [N,H,W]``."""
    return uncertainty_maps(probs, ("mi",))["mi"]


def variation_ratio(probs: np.ndarray) -> F32:
    """``1 - modal votes / K`` over the members' argmax, ``[K,N,C,H,W] -> [N,H,W]`` in [0, 1 - 1/K]."""
    return uncertainty_maps(probs, ("variation_ratio",))["variation_ratio"]


def margin(probs: np.ndarray) -> F32:
    """``1 - (p̄_(1) - p̄_(2))`` of the mean prediction, ``[K,N,C,H,W] -> [N,H,W]`` in [0, 1]."""
    return uncertainty_maps(probs, ("margin",))["margin"]


# --------------------------------------------------------------------------------------------------
# Pixel -> frame pooling
# --------------------------------------------------------------------------------------------------
def aggregate(
    pixel_map: np.ndarray,
    method: str = "mean",
    topk_fraction: float = 0.05,
    grid: int = 4,
    weights: np.ndarray | None = None,
) -> F32:
    """Pool a pixel map ``[N, H, W]`` to one score per frame ``[N]``.

    Args:
        pixel_map: e.g. the MI map.
        method: ``mean`` (all pixels), ``topk`` (mean of the ``topk_fraction`` highest pixels: a small
            confusing object is not drowned by a confident road), or ``grid`` (mean per cell of a
            ``grid x grid`` partition, max over cells: a confusing region wins).
        topk_fraction: fraction of pixels kept by ``topk`` (at least one pixel).
        grid: cells per side for ``grid`` (capped at the map's height and width).
        weights: optional ``[N, H, W]`` multiplicative weights applied to the map before pooling (e.g. the
            scoring head's rare-class weights): a weighted pixel counts as ``weight`` times its value.

    Returns:
        ``[N]`` float32; lies between the min and the max of the (weighted) map of each frame.
    """
    x = np.asarray(pixel_map, dtype=np.float32)
    if x.ndim != 3:
        raise ScoringError(f"pixel_map must be [N, H, W], got shape {x.shape}")
    if weights is not None:
        wts = np.asarray(weights, dtype=np.float32)
        if wts.shape != x.shape:
            raise ScoringError(f"weights shape {wts.shape} differs from the pixel map's {x.shape}")
        x = x * wts
    n, h, w = x.shape
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    if h * w == 0:
        raise ScoringError("pixel_map has no pixels")
    flat = x.reshape(n, h * w)
    if method == "mean":
        result: F32 = flat.mean(axis=1, dtype=np.float64).astype(np.float32)
        return result
    if method == "topk":
        if not 0.0 < topk_fraction <= 1.0:
            raise ScoringError(f"topk_fraction must be in (0, 1], got {topk_fraction}")
        k = max(1, int(np.ceil(topk_fraction * h * w)))
        top = np.partition(flat, h * w - k, axis=1)[:, h * w - k:]  # [N, k]: the k largest, unordered
        result = top.mean(axis=1, dtype=np.float64).astype(np.float32)
        return result
    if method == "grid":
        if grid < 1:
            raise ScoringError(f"grid must be >= 1, got {grid}")
        gh, gw = min(grid, h), min(grid, w)
        rows = np.linspace(0, h, gh + 1).astype(np.int64)  # cell edges; sizes differ by at most one
        cols = np.linspace(0, w, gw + 1).astype(np.int64)
        sums = np.add.reduceat(np.add.reduceat(x.astype(np.float64), rows[:-1], axis=1), cols[:-1], axis=2)
        cells = sums / np.outer(np.diff(rows), np.diff(cols))  # [N, gh, gw] cell means
        result = cells.reshape(n, -1).max(axis=1).astype(np.float32)
        return result
    raise ScoringError(f"unknown aggregation {method!r}; use mean, topk or grid")


def mean_prediction(probs: np.ndarray) -> NDArray[np.uint8]:
    """Argmax of the members' mean probabilities, ``[K,N,C,H,W] -> [N,H,W]`` uint8 class ids."""
    p = _check_probs(probs)
    _, n, _, h, w = p.shape
    out = np.empty((n, h, w), dtype=np.uint8)
    for i in range(n):
        out[i] = _argmax0(p[:, i].sum(axis=0, dtype=np.float32))  # [H, W]; the sum ranks like the mean
    return out
