"""The committed starter bundle: verifies, fits the repo budget, and rebuilds in torch."""

from __future__ import annotations

import numpy as np
import torch

from avminer.engines import default_bundle_path
from avminer.engines.bundle import load_bundle
from avminer.models import load_ensemble
from avminer.scoring.shift import ShiftReference


def test_starter_bundle_is_complete_and_small() -> None:
    path = default_bundle_path()
    assert (path / "manifest.json").exists(), f"{path} is missing; rebuild it with tools/train_starter.py"
    bundle = load_bundle(path)  # checksums verified
    assert sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) <= 10 * 1024 * 1024
    m = bundle.manifest
    assert bundle.version == "starter-1" and bundle.members >= 4 and bundle.void_index == 11
    assert len(bundle.classes) == 11
    assert {"day/clear/cambridge_uk", "dusk/clear/cambridge_uk"} <= set(m["metrics"]["miou"])
    assert m["trained_on"]["slices"] == ["day/clear/cambridge_uk"]
    ref = ShiftReference.load(bundle.reference_path)  # type: ignore[arg-type]
    assert ref.dim == bundle.feature_dim and "day/clear/cambridge_uk" in ref.slices

    model = load_ensemble(bundle.torch_path)
    x = torch.from_numpy(np.full((1, 3, bundle.input_height, bundle.input_width), 128, np.float32))
    with torch.no_grad():
        probs, feats = model(x)
    assert probs.shape == (bundle.members, 1, 11, bundle.input_height, bundle.input_width)
    assert feats.shape == (1, bundle.feature_dim)
