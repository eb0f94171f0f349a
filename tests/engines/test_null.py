"""The null engine: precomputed outputs in the bundle's shapes, at any input size, at once."""

from __future__ import annotations

import numpy as np

from avminer.engines.bundle import Bundle
from avminer.engines.null import POOL, NullEngine
from tests.engines.conftest import INPUT_HW


def test_null_engine_follows_the_contract_at_its_own_input_size(bundles: dict[str, Bundle]) -> None:
    b = bundles["v1"]
    engine = NullEngine(b, input_hw=(60, 80))
    assert engine.input_hw == (60, 80) and engine.backend == "null"
    out = engine.infer(np.zeros((5, 60, 80, 3), np.uint8))
    assert out.scores.shape == (5, len(b.head.score_names())) and out.features.shape == (5, b.feature_dim)
    assert out.umap.shape == (5, *b.head.map_hw((60, 80)))
    assert out.prediction(4).shape == (60, 80)
    assert (out.scores >= 0).all() and np.isfinite(out.scores).all()
    # Rows cycle through the pool: consecutive batches get different frames' outputs.
    again = engine.infer(np.zeros((5, 60, 80, 3), np.uint8))
    assert not np.array_equal(out.features, again.features)
    many = engine.infer(np.zeros((POOL + 3, 60, 80, 3), np.uint8))
    assert len(many) == POOL + 3
    with_probs = NullEngine(b).infer(np.zeros((1, *INPUT_HW, 3), np.uint8), probs=True)
    assert with_probs.probs is not None and np.allclose(with_probs.probs.sum(axis=2), 1.0)
