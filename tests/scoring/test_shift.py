"""Shift reference: shrinkage estimators, Mahalanobis scoring, npz round trip, baseline, drift."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avminer.errors import ScoringError
from avminer.scoring.shift import (
    ALL,
    DriftMonitor,
    ShiftReference,
    ledoit_wolf_shrinkage,
    max_softmax_score,
    oas_shrinkage,
    shrunk_covariance,
)


def _lw_direct(x: np.ndarray) -> float:
    """Ledoit & Wolf (2004), Lemma 3.2-3.4, written the slow way from the paper."""
    n, d = x.shape
    s = x.T @ x / n
    m = np.trace(s) / d
    d2 = ((s - m * np.eye(d)) ** 2).sum() / d
    b_bar2 = sum((((np.outer(xk, xk) - s) ** 2).sum() / d) for xk in x) / n**2
    b2 = min(b_bar2, d2)
    return float(b2 / d2)


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 40), st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_ledoit_wolf_matches_the_paper(n: int, d: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(n, d)) * np.linspace(0.5, 3, d)
    xc = x - x.mean(axis=0)
    assert ledoit_wolf_shrinkage(xc) == pytest.approx(_lw_direct(xc), rel=1e-6, abs=1e-9)
    assert 0.0 <= oas_shrinkage(xc) <= 1.0


def test_shrunk_covariance_is_well_conditioned_with_few_samples() -> None:
    x = np.random.default_rng(0).normal(size=(10, 50))  # n < D: the sample covariance is singular
    for how in (None, "oas", 0.3):
        _, cov, s = shrunk_covariance(x, how)
        assert 0 < s <= 1
        assert np.linalg.eigvalsh(cov).min() > 0
    with pytest.raises(ScoringError, match="shrinkage"):
        shrunk_covariance(x, "magic")


def _two_slices(rng: np.random.Generator, d: int = 16) -> dict[str, np.ndarray]:
    return {
        "day/clear/a": rng.normal(size=(400, d)),
        "dusk/clear/a": rng.normal(loc=2.0, size=(100, d)),
    }


def test_mahalanobis_separates_and_falls_back_to_pooled() -> None:
    rng = np.random.default_rng(0)
    ref = ShiftReference.fit(_two_slices(rng))
    assert set(ref.slices) == {ALL, "day/clear/a", "dusk/clear/a"}
    inlier = rng.normal(size=(200, 16))
    outlier = rng.normal(loc=4.0, size=(200, 16))
    s_in = ref.mahalanobis(inlier, ["day/clear/a"] * 200)
    s_out = ref.mahalanobis(outlier, ["day/clear/a"] * 200)
    assert s_in.dtype == np.float32 and (s_in >= 0).all()
    assert s_in.mean() == pytest.approx(16, rel=0.3)  # ~ chi-square with D degrees of freedom
    assert s_out.min() > np.percentile(s_in, 99)
    # unknown slice and None both use the pooled reference
    np.testing.assert_array_equal(ref.mahalanobis(inlier[:3], ["night/fog/b", None, "x"]), ref.mahalanobis(inlier[:3]))
    # the dusk frame is close to its own slice, far from day
    dusk = rng.normal(loc=2.0, size=(1, 16))
    assert ref.mahalanobis(dusk, ["dusk/clear/a"])[0] < ref.mahalanobis(dusk, ["day/clear/a"])[0]


def test_held_out_score_statistics_match_new_inliers() -> None:
    rng = np.random.default_rng(3)
    ref = ShiftReference.fit({"s": rng.normal(size=(120, 40))})  # n only 3 x D: in-sample scores biased low
    fresh = ref.mahalanobis(rng.normal(size=(2000, 40)), ["s"] * 2000)
    st_ = ref.slices["s"]
    assert st_.score_mean == pytest.approx(float(fresh.mean()), rel=0.15)


def test_save_load_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    ref = ShiftReference.fit({**_two_slices(rng), "rare/x/y": rng.normal(size=(3, 16))})
    assert "rare/x/y" not in ref.slices  # too few frames: uses the pooled reference
    path = tmp_path / "reference_stats.npz"
    ref.save(path)
    loaded = ShiftReference.load(path)
    again = ShiftReference.load(io.BytesIO(ref.to_bytes()))
    x = rng.normal(size=(5, 16))
    keys = ["day/clear/a", "dusk/clear/a", "rare/x/y", None, "day/clear/a"]
    np.testing.assert_array_equal(loaded.mahalanobis(x, keys), ref.mahalanobis(x, keys))
    np.testing.assert_array_equal(again.mahalanobis(x, keys), ref.mahalanobis(x, keys))
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        assert int(z["version"]) == 1 and z["precisions"].shape == (3, 16, 16)


def test_load_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ScoringError, match="does not exist"):
        ShiftReference.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ScoringError, match="not a readable npz"):
        ShiftReference.load(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, version=np.int64(1))
    with pytest.raises(ScoringError, match="lacks"):
        ShiftReference.load(partial)


def test_fit_and_score_errors() -> None:
    with pytest.raises(ScoringError, match="no features"):
        ShiftReference.fit({})
    with pytest.raises(ScoringError, match="feature dim"):
        ShiftReference.fit({"a": np.zeros((5, 3)), "b": np.zeros((5, 4))})
    with pytest.raises(ScoringError, match="NaN"):
        ShiftReference.fit({"a": np.full((5, 3), np.nan)})
    ref = ShiftReference.fit({"a": np.random.default_rng(0).normal(size=(20, 3))})
    with pytest.raises(ScoringError, match=r"\[N, 3\]"):
        ref.mahalanobis(np.zeros((2, 4)))


def test_constant_feature_channels_stay_finite() -> None:
    x = np.random.default_rng(0).normal(size=(50, 6))
    x[:, 2] = 0.0  # a dead ReLU channel
    ref = ShiftReference.fit({"a": x})
    assert np.isfinite(ref.mahalanobis(x)).all()


def test_max_softmax_score() -> None:
    p = np.zeros((2, 2, 3, 1, 2), dtype=np.float32)
    p[:, 0, 0] = 1.0  # frame 0: every member certain
    p[:, 1] = 1 / 3  # frame 1: uniform
    np.testing.assert_allclose(max_softmax_score(p), [0.0, 2 / 3], atol=1e-6)


def test_drift_monitor_alarms_on_shift_only() -> None:
    rng = np.random.default_rng(0)
    ref = ShiftReference.fit({"day": rng.normal(size=(500, 8))})
    mon = DriftMonitor(window=50, alarm=3.0, reference=ref)
    inliers = ref.mahalanobis(rng.normal(size=(200, 8)), ["day"] * 200)
    for chunk in np.split(inliers, 20):
        state = mon.update("day", chunk)
        assert not state.alarm
    assert abs(state.value) < 1.0 and state.frames == 50
    shifted = ref.mahalanobis(rng.normal(loc=1.5, size=(50, 8)), ["day"] * 50)
    state = mon.update("day", shifted)
    assert state.alarm and state.value > 3.0
    assert mon.values()["day"] == (state.value, True)
    assert mon.state("night") is None


def test_few_frames_still_get_the_pooled_reference() -> None:
    # Below min_count a slice has no Gaussian of its own, but the pooled one needs only 2 frames:
    # a trainer releasing from 3 labeled frames still ships a usable reference.
    x = np.random.default_rng(1).normal(size=(3, 4))
    ref = ShiftReference.fit({"dusk/clear/a": x}, min_count=5)
    assert set(ref.slices) == {ALL}
    assert np.isfinite(ref.mahalanobis(x, ["dusk/clear/a"] * 3)).all()
