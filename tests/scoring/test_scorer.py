"""The Scorer turns one engine batch (compact in-graph outputs) into FrameScores and feeds the drift monitor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from avminer import metrics
from avminer.config import ScoringSettings
from avminer.engines.base import compact_from_probs
from avminer.engines.contract import EngineOutput, HeadSpec
from avminer.errors import ScoringError
from avminer.events.records import CameraFrame, Conditions, RadarDetection, RadarScan
from avminer.mining.score_metrics import export_scores
from avminer.scoring import scorer as scorer_module
from avminer.scoring.scorer import COMPONENTS, SCORE_KEYS, BatchContext, Scorer
from avminer.scoring.shift import ShiftReference
from avminer.taxonomy import CAMVID

CLASSES = list(CAMVID.classes)
K, N, C, H, W, D = 3, 4, len(CLASSES), 24, 32, 8


def _batch(rng: np.random.Generator, head: HeadSpec | None = None
           ) -> tuple[np.ndarray, EngineOutput, np.ndarray, list[CameraFrame], list[int]]:
    """Probabilities, the engine output the numpy twin of the head makes of them, images, frames, and a
    list that records which rows' argmax were fetched."""
    logits = rng.normal(size=(K, N, C, H, W)) * 2
    p = np.exp(logits)
    probs = (p / p.sum(axis=2, keepdims=True)).astype(np.float32)
    feats = rng.normal(size=(N, D)).astype(np.float32)
    feats[-1] += 6.0  # the last frame is shifted
    head = head or HeadSpec.for_classes(CLASSES)
    scores, feats, umap, fetch = compact_from_probs(probs, feats, head, C)
    fetched: list[int] = []

    def counting(row: int) -> np.ndarray:
        fetched.append(row)
        return fetch(row)

    out = EngineOutput(scores, feats, umap, "v1", head.score_names(), head.map_scale(C), counting)
    images = np.full((N, H, W, 3), 150, dtype=np.uint8)
    images[..., 0] = 10  # clear: a dark channel near zero
    frames = [
        CameraFrame("veh", "front", i, f"f{i}", W, H, conditions=Conditions(region="test_region"))
        for i in range(N)
    ]
    return probs, out, images, frames, fetched


def test_scores_every_frame() -> None:
    rng = np.random.default_rng(0)
    ref = ShiftReference.fit({"day/clear/test_region": rng.normal(size=(200, D))})
    scorer = Scorer(ScoringSettings(drift_window=10), CLASSES, ref, observer=export_scores)
    probs, out, images, frames, fetched = _batch(rng)
    radar = [None, RadarScan("veh", "radar", 0, [RadarDetection(10.0, 0.0, 0.0, 8.0, 5.0)]), None, None]
    scored = scorer.score(out, images, frames, radar)
    assert fetched == [1]  # only the radar-joined frame's argmax was read
    assert len(scored) == N
    for fs in scored:
        assert fs.slice == "day/clear/test_region"
        assert set(fs.scores) == set(SCORE_KEYS)
        assert all(np.isfinite(v) for v in fs.scores.values())
        assert fs.prediction.shape == (H, W) and fs.prediction.dtype == np.uint8
        stride = ScoringSettings().map_stride
        assert fs.uncertainty_map.shape == (-(-H // stride), -(-W // stride))
        assert fs.uncertainty_map.dtype == np.float32
        assert fs.embedding.shape == (D,) and fs.embedding.dtype == np.float32
        assert 0 <= fs.scores["msp"] <= 1 and 0 <= fs.scores["radar"] <= 1
    assert scored[-1].scores["shift"] > max(fs.scores["shift"] for fs in scored[:-1])
    np.testing.assert_array_equal(scored[0].prediction, probs[:, 0].mean(axis=0).argmax(axis=0))
    # The umap is MI quantised to uint8: within half a unit of the float map.
    from avminer.scoring.uncertainty import mutual_information

    mi = mutual_information(np.ascontiguousarray(probs[..., ::2, ::2]))
    assert np.abs(scored[2].uncertainty_map - mi[2]).max() <= out.map_scale / 2 + 1e-6
    state = scorer.drift.state("day/clear/test_region")
    assert state is not None and state.frames == N
    gauge = metrics.DRIFT.labels("day/clear/test_region")._value.get()
    assert gauge == pytest.approx(state.value)


@pytest.mark.parametrize("aggregation", ["mean", "topk", "grid"])
def test_scores_are_the_configured_pooling_of_the_graph(aggregation: str) -> None:
    rng = np.random.default_rng(2)
    _, out, images, frames, _ = _batch(rng)
    scorer = Scorer(ScoringSettings(aggregation=aggregation), CLASSES, None)
    scored = scorer.score(out, images, frames, [None] * N)
    for measure in ("mi", "entropy", "expected_entropy", "variation_ratio", "margin"):
        np.testing.assert_array_equal([fs.scores[measure] for fs in scored], out.score(f"{measure}_{aggregation}"))
    np.testing.assert_array_equal([fs.scores["msp"] for fs in scored], out.score("msp"))


def test_without_reference_and_bad_batches() -> None:
    rng = np.random.default_rng(1)
    scorer = Scorer(ScoringSettings(), CLASSES, None)
    _, out, images, frames, _ = _batch(rng)
    scored = scorer.score(out, images, frames, [None] * N)
    assert all(fs.scores["shift"] == 0.0 for fs in scored)
    short = dataclasses.replace(out, features=out.features[:2])
    with pytest.raises(ScoringError, match="batch sizes"):
        scorer.score(short, images, frames, [None] * N)


def test_a_registered_component_reaches_every_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new score component is one registered function."""
    monkeypatch.setattr(scorer_module, "COMPONENTS", dict(COMPONENTS))

    @scorer_module.component("brightness")
    def brightness(ctx: BatchContext) -> np.ndarray:
        return np.asarray([f.width / 100.0 for f in ctx.frames], dtype=np.float32)

    rng = np.random.default_rng(3)
    _, out, images, frames, _ = _batch(rng)
    scored = Scorer(ScoringSettings(), CLASSES, None).score(out, images, frames, [None] * N)
    assert all(fs.scores["brightness"] == pytest.approx(W / 100.0) for fs in scored)
    assert set(SCORE_KEYS) < set(scored[0].scores)
