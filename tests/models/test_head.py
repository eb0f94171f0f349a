"""The in-graph scoring head computes exactly what the numpy scoring maths computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from avminer.engines.contract import POOLINGS, HeadSpec
from avminer.models.head import ScoringHead
from avminer.scoring.shift import max_softmax_score
from avminer.scoring.uncertainty import (
    MEASURES,
    aggregate,
    mean_prediction,
    uncertainty_maps,
)
from avminer.taxonomy import CAMVID

CLASSES = list(CAMVID.classes)


@settings(max_examples=12, deadline=None)
@given(
    k=st.integers(1, 4), n=st.integers(1, 3), h=st.integers(3, 23), w=st.integers(3, 29),
    stride=st.integers(1, 3), topk=st.sampled_from([0.01, 0.05, 0.5, 1.0]), grid=st.integers(1, 5),
    weight=st.sampled_from([1.0, 3.0]), seed=st.integers(0, 10_000),
)
def test_head_matches_the_numpy_reference(k: int, n: int, h: int, w: int, stride: int, topk: float, grid: int,
                                          weight: float, seed: int) -> None:
    spec = HeadSpec.for_classes(CLASSES, map_stride=stride, topk_fraction=topk, grid=grid, rare_class_weight=weight)
    head = ScoringHead(spec, len(CLASSES), (h, w))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(k, n, len(CLASSES), h, w, generator=gen) * 3  # [K, N, C, H, W]
    scores, umap, argmax, probs = head(logits)
    p = probs.numpy()
    sub = np.ascontiguousarray(p[..., ::stride, ::stride])
    maps = uncertainty_maps(sub)
    rare = [CLASSES.index(c) for c in ("pedestrian", "bicyclist", "sign_symbol")]
    weights = 1.0 + (weight - 1.0) * sub.mean(axis=0)[:, rare].sum(axis=1)  # [N, h, w] soft rare-class weight
    names = spec.score_names()
    for measure in MEASURES:
        for pooling in POOLINGS:
            ref = aggregate(maps[measure], pooling, topk, grid, weights if measure == "mi" else None)
            got = scores[:, names.index(f"{measure}_{pooling}")].numpy()
            np.testing.assert_allclose(got, ref, atol=5e-6, err_msg=f"{measure}_{pooling}")
    np.testing.assert_allclose(scores[:, names.index("msp")].numpy(), max_softmax_score(sub), atol=2e-6)
    np.testing.assert_array_equal(argmax.numpy(), mean_prediction(p))
    assert umap.dtype == torch.uint8 and tuple(umap.shape) == (n, *spec.map_hw((h, w)))
    assert np.abs(umap.numpy() * spec.map_scale(len(CLASSES)) - maps["mi"]).max() <= spec.map_scale(len(CLASSES)) / 2 + 1e-6
    # Property bounds (nats): 0 <= EE <= PE <= log C, 0 <= MI <= PE; margin and msp in [0, 1].
    assert (scores >= 0).all() and (scores[:, names.index("entropy_mean")] <= np.log(len(CLASSES)) + 1e-5).all()


def test_float16_map_and_low_precision_logits() -> None:
    """The head computes in float32 whatever the net's dtype; the map can be FP16 (MI in nats)."""
    spec = HeadSpec.for_classes(CLASSES, map_dtype="float16")
    head = ScoringHead(spec, len(CLASSES), (16, 20))
    logits = torch.randn(2, 1, len(CLASSES), 16, 20, generator=torch.Generator().manual_seed(0))
    s32, umap, _, probs = head(logits)
    s16, _, _, _ = head(logits.to(torch.bfloat16))
    assert umap.dtype == torch.float16 and s32.dtype == s16.dtype == torch.float32 and probs.dtype == torch.float32
    assert spec.map_scale(len(CLASSES)) == 1.0
    # bf16 logits carry ~3 significant digits: scores move by about that much, not more.
    assert torch.abs(s32 - s16).max() < 0.05


def test_head_spec_rejects_bad_values_and_round_trips() -> None:
    from avminer.errors import BundleError, EngineError

    for bad in ({"map_stride": 0}, {"topk_fraction": 0.0}, {"grid": 0}, {"rare_class_weight": 0.0},
                {"map_dtype": "int4"}):
        with pytest.raises(EngineError, match="head"):
            HeadSpec(**bad)  # type: ignore[arg-type]
    spec = HeadSpec.for_classes(CLASSES, map_stride=4)
    assert HeadSpec.from_manifest(spec.to_manifest()) == spec
    assert spec.rare_classes == tuple(CLASSES.index(c) for c in ("sign_symbol", "pedestrian", "bicyclist"))
    with pytest.raises(BundleError, match="lacks 'grid'"):
        HeadSpec.from_manifest({k: v for k, v in spec.to_manifest().items() if k != "grid"})
    with pytest.raises(BundleError, match="score columns"):
        HeadSpec.from_manifest({**spec.to_manifest(), "scores": ["mi_mean"]})
    # The goal of issue #14: <= 64 KB a frame at 480x360 (K plays no part: nothing per member leaves the graph).
    assert HeadSpec().host_bytes((360, 480), 48) <= 64 * 1024
