"""The Scorer turns one engine batch into FrameScores and feeds the drift monitor."""

from __future__ import annotations

import numpy as np
import pytest

from avminer import metrics
from avminer.config import ScoringSettings
from avminer.errors import ScoringError
from avminer.events.records import CameraFrame, Conditions, RadarDetection, RadarScan
from avminer.mining.score_metrics import export_scores
from avminer.scoring.scorer import SCORE_KEYS, Scorer
from avminer.scoring.shift import ShiftReference
from avminer.taxonomy import CAMVID

K, N, C, H, W, D = 3, 4, len(CAMVID.classes), 24, 32, 8


def _batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[CameraFrame]]:
    logits = rng.normal(size=(K, N, C, H, W)) * 2
    p = np.exp(logits)
    probs = (p / p.sum(axis=2, keepdims=True)).astype(np.float32)
    feats = rng.normal(size=(N, D)).astype(np.float32)
    feats[-1] += 6.0  # the last frame is shifted
    images = np.full((N, H, W, 3), 150, dtype=np.uint8)
    images[..., 0] = 10  # clear: a dark channel near zero
    frames = [
        CameraFrame("veh", "front", i, f"f{i}", W, H, conditions=Conditions(region="test_region"))
        for i in range(N)
    ]
    return probs, feats, images, frames


def test_scores_every_frame() -> None:
    rng = np.random.default_rng(0)
    ref = ShiftReference.fit({"day/clear/test_region": rng.normal(size=(200, D))})
    scorer = Scorer(ScoringSettings(drift_window=10), CAMVID.classes, ref, observer=export_scores)
    probs, feats, images, frames = _batch(rng)
    radar = [None, RadarScan("veh", "radar", 0, [RadarDetection(10.0, 0.0, 0.0, 8.0, 5.0)]), None, None]
    out = scorer.score(probs, feats, images, frames, radar)
    assert len(out) == N
    for fs in out:
        assert fs.slice == "day/clear/test_region"
        assert set(fs.scores) == set(SCORE_KEYS)
        assert all(np.isfinite(v) for v in fs.scores.values())
        assert fs.prediction.shape == (H, W) and fs.prediction.dtype == np.uint8
        stride = ScoringSettings().map_stride
        assert fs.uncertainty_map.shape == (-(-H // stride), -(-W // stride))
        assert fs.uncertainty_map.dtype == np.float32
        assert fs.embedding.shape == (D,) and fs.embedding.dtype == np.float32
        assert 0 <= fs.scores["msp"] <= 1 and 0 <= fs.scores["radar"] <= 1
    assert out[-1].scores["shift"] > max(fs.scores["shift"] for fs in out[:-1])
    np.testing.assert_array_equal(out[0].prediction, probs[:, 0].mean(axis=0).argmax(axis=0))
    state = scorer.drift.state("day/clear/test_region")
    assert state is not None and state.frames == N
    gauge = metrics.DRIFT.labels("day/clear/test_region")._value.get()
    assert gauge == pytest.approx(state.value)


def test_without_reference_and_bad_batches() -> None:
    rng = np.random.default_rng(1)
    scorer = Scorer(ScoringSettings(), CAMVID.classes, None)
    probs, feats, images, frames = _batch(rng)
    out = scorer.score(probs, feats, images, frames, [None] * N)
    assert all(fs.scores["shift"] == 0.0 for fs in out)
    with pytest.raises(ScoringError, match="batch sizes"):
        scorer.score(probs, feats[:2], images, frames, [None] * N)


def test_map_stride_one_scores_every_pixel_and_agrees_with_strided() -> None:
    rng = np.random.default_rng(1)
    probs, feats, images, frames = _batch(rng)
    full = Scorer(ScoringSettings(map_stride=1, aggregation="mean"), CAMVID.classes, None)
    half = Scorer(ScoringSettings(map_stride=2, aggregation="mean"), CAMVID.classes, None)
    a = full.score(probs, feats, images, frames, [None] * N)
    b = half.score(probs, feats, images, frames, [None] * N)
    for fa, fb in zip(a, b, strict=True):
        assert fa.uncertainty_map.shape == (H, W)
        assert fa.prediction.shape == fb.prediction.shape == (H, W)
        # Mean pooling over a regular subgrid of i.i.d.-ish pixels stays close to the full mean.
        assert abs(fa.scores["entropy"] - fb.scores["entropy"]) < 0.05 * max(fa.scores["entropy"], 1e-6) + 1e-3
