"""Property tests of the ensemble uncertainty measures and the pixel-to-frame pooling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avminer.errors import ScoringError
from avminer.scoring.uncertainty import (
    aggregate,
    expected_entropy,
    margin,
    mean_prediction,
    mutual_information,
    predictive_entropy,
    uncertainty_maps,
    variation_ratio,
)


@st.composite
def ensemble_probs(draw: st.DrawFn) -> np.ndarray:
    """Valid member probabilities [K, N, C, H, W] from random logits, sometimes extreme."""
    k = draw(st.integers(1, 4))
    n = draw(st.integers(1, 2))
    c = draw(st.integers(2, 6))
    h = draw(st.integers(1, 5))
    w = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    temperature = draw(st.sampled_from([0.1, 1.0, 10.0, 60.0]))  # 60: saturated, exact 0s and 1s in float32
    logits = np.random.default_rng(seed).normal(size=(k, n, c, h, w)) * temperature
    p = np.exp(logits - logits.max(axis=2, keepdims=True))
    return (p / p.sum(axis=2, keepdims=True)).astype(np.float32)


def _reference(p: np.ndarray) -> dict[str, np.ndarray]:
    """Straightforward float64 definitions."""
    q = np.clip(p.astype(np.float64), 1e-300, 1.0)
    mean = q.mean(axis=0)
    pe = -(mean * np.log(mean)).sum(axis=1)
    ee = -(q * np.log(q)).sum(axis=2).mean(axis=0)
    return {"entropy": pe, "expected_entropy": ee, "mi": pe - ee}


@settings(max_examples=150, deadline=None)
@given(ensemble_probs())
def test_entropy_bounds_and_identities(p: np.ndarray) -> None:
    c = p.shape[2]
    log_c = math.log(c) + 1e-5
    maps = uncertainty_maps(p)
    for m in maps.values():
        assert m.dtype == np.float32 and m.shape == (p.shape[1],) + p.shape[3:]
        assert np.isfinite(m).all()
    assert (maps["entropy"] >= 0).all() and (maps["entropy"] <= log_c).all()
    assert (maps["mi"] >= 0).all() and (maps["mi"] <= log_c).all()
    assert (maps["expected_entropy"] >= 0).all() and (maps["expected_entropy"] <= maps["entropy"]).all()
    assert ((maps["margin"] >= 0) & (maps["margin"] <= 1)).all()
    k = p.shape[0]
    assert ((maps["variation_ratio"] >= 0) & (maps["variation_ratio"] <= 1 - 1 / k + 1e-6)).all()
    ref = _reference(p)
    np.testing.assert_allclose(maps["entropy"], ref["entropy"], atol=2e-5)
    np.testing.assert_allclose(maps["expected_entropy"], ref["expected_entropy"], atol=2e-5)
    np.testing.assert_allclose(maps["mi"], np.maximum(ref["mi"], 0), atol=2e-5)


@settings(max_examples=60, deadline=None)
@given(ensemble_probs(), st.integers(1, 5))
def test_mi_is_zero_when_members_agree(p: np.ndarray, k: int) -> None:
    same = np.repeat(p[:1], k, axis=0)  # every member predicts the same distribution
    assert mutual_information(same).max() <= 1e-5
    assert variation_ratio(same).max() == 0.0
    np.testing.assert_allclose(expected_entropy(same), predictive_entropy(same), atol=1e-5)


def test_mi_is_maximal_for_confident_disagreeing_members() -> None:
    c = 4
    p = np.zeros((c, 1, c, 1, 1), dtype=np.float32)
    for k in range(c):
        p[k, 0, k] = 1.0  # member k is certain of class k
    assert mutual_information(p)[0, 0, 0] == pytest.approx(math.log(c), rel=1e-5)
    assert variation_ratio(p)[0, 0, 0] == pytest.approx(1 - 1 / c)
    assert margin(p)[0, 0, 0] == pytest.approx(1.0)


def test_single_functions_match_the_combined_pass() -> None:
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(5), size=(3, 2, 6, 7)).transpose(0, 1, 4, 2, 3).astype(np.float32)
    maps = uncertainty_maps(p)
    np.testing.assert_array_equal(mutual_information(p), maps["mi"])
    np.testing.assert_array_equal(margin(p), maps["margin"])
    assert mean_prediction(p).shape == (2, 6, 7)
    np.testing.assert_array_equal(mean_prediction(p), p.mean(axis=0).argmax(axis=1))


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ScoringError, match=r"\[K, N, C, H, W\]"):
        mutual_information(np.zeros((2, 3, 4)))
    with pytest.raises(ScoringError, match="unknown uncertainty"):
        uncertainty_maps(np.full((1, 1, 2, 1, 1), 0.5), ["nope"])


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31 - 1),
    st.sampled_from(["mean", "topk", "grid"]), st.floats(0.001, 1.0), st.integers(1, 12), st.booleans(),
)
def test_aggregation_bounds(n: int, h: int, w: int, seed: int, method: str, frac: float, grid: int,
                            weighted: bool) -> None:
    rng = np.random.default_rng(seed)
    x = rng.exponential(size=(n, h, w)).astype(np.float32)
    weights = rng.choice([1.0, 3.0], size=x.shape).astype(np.float32) if weighted else None
    v = x * weights if weights is not None else x
    out = aggregate(x, method, frac, grid, weights)
    assert out.shape == (n,)
    lo, hi = v.reshape(n, -1).min(axis=1), v.reshape(n, -1).max(axis=1)
    assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()
    mean = v.reshape(n, -1).mean(axis=1)
    if method != "mean":  # top-k and max-over-cells never fall below the plain mean
        assert (out >= mean - 1e-5).all()


def test_aggregation_examples() -> None:
    x = np.zeros((1, 4, 4), dtype=np.float32)
    x[0, 0, 0] = 16.0
    assert aggregate(x, "mean")[0] == pytest.approx(1.0)
    assert aggregate(x, "topk", topk_fraction=1 / 16)[0] == pytest.approx(16.0)
    assert aggregate(x, "topk", topk_fraction=2 / 16)[0] == pytest.approx(8.0)
    assert aggregate(x, "grid", grid=2)[0] == pytest.approx(4.0)  # the cell holding the hot pixel
    with pytest.raises(ScoringError, match="unknown aggregation"):
        aggregate(x, "median")
