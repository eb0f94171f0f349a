"""Per-slice release gates: a regression beyond the margin on any slice refuses the release."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from avminer.datasets.conditions import apply_fog
from avminer.errors import GateRefusedError, TrainerError
from avminer.models import Ensemble, build_ensemble, erfnet_arch
from avminer.trainer.gates import (
    FOG_BETA,
    compare,
    enforce,
    fog_copies,
    gate_groups,
    gate_metrics,
    gate_models,
)
from tests.trainer.conftest import make_frames

PROD = {"day/clear/x": 0.60, "dusk/clear/x": 0.40, "all": 0.55}


def test_within_margin_passes() -> None:
    cand = {"day/clear/x": 0.59, "dusk/clear/x": 0.45, "all": 0.56}
    report = enforce(compare(cand, PROD, margin=0.02))
    assert report.passed
    assert {s.slice: round(s.delta or 0, 3) for s in report.slices} == {
        "day/clear/x": -0.01, "dusk/clear/x": 0.05, "all": 0.01}


def test_one_slice_beyond_margin_refuses_with_a_report() -> None:
    cand = {"day/clear/x": 0.70, "dusk/clear/x": 0.37, "all": 0.60}  # better overall, dusk worse by 0.03
    report = compare(cand, PROD, margin=0.02)
    assert not report.passed
    assert [s.slice for s in report.failures] == ["dusk/clear/x"]
    with pytest.raises(GateRefusedError, match="dusk/clear/x") as info:
        enforce(report)
    assert isinstance(info.value, TrainerError)
    assert info.value.report is report  # type: ignore[attr-defined]
    assert json.loads(report.to_json())["passed"] is False
    assert "REFUSED" in report.table()


def test_missing_or_nan_candidate_slice_fails() -> None:
    assert not compare({"day/clear/x": 0.6, "all": 0.6}, PROD, 0.02).passed
    assert not compare({**PROD, "dusk/clear/x": math.nan}, PROD, 0.02).passed


def test_first_release_and_new_slices_pass() -> None:
    assert compare(PROD, None, 0.02).passed
    assert compare({**PROD, "fog/fog/x": 0.1}, PROD, 0.02).passed


def test_gate_models_same_model_passes_and_worse_model_is_refused() -> None:
    frames = make_frames(4, slices=("day/clear/a", "dusk/clear/a"))
    model = build_ensemble(erfnet_arch(width=0.25, members=2), seed=0).eval()
    assert gate_models(model, model, frames, margin=0.0).passed
    report = gate_models(model, model, frames, margin=0.0, raise_on_failure=False)
    assert all(s.delta == 0 for s in report.slices)


def test_the_report_carries_the_candidates_quality_per_gate_slice() -> None:
    """What a release ships for the miners' policy: the candidate's mIoU and frames per gate slice."""
    frames = make_frames(6, slices=("day/clear/a", "dusk/clear/a", "day/clear/unknown"))
    model = build_ensemble(erfnet_arch(width=0.25, members=2), seed=0).eval()
    report = gate_models(model, None, frames, margin=0.0)
    quality = report.quality()
    assert set(quality) == {"all", "day", "dusk", "fog", "region:a"}
    assert {k: v["frames"] for k, v in quality.items()} == {"all": 6, "day": 4, "dusk": 2, "fog": 4, "region:a": 4}
    assert all(v["miou"] == round(s.candidate, 4) for s in report.slices for k, v in quality.items() if k == s.slice)
    assert compare({"all": 0.5}, None, 0.0).quality() == {"all": {"miou": 0.5, "frames": 0}}  # bare mIoU: no count


def test_gate_slices_are_time_of_day_fog_and_region() -> None:
    frames = make_frames(6, slices=("day/clear/a", "dusk/clear/a", "day/clear/unknown"))
    gated, groups = gate_groups(frames)
    day = [0, 2, 3, 5]
    assert len(gated) == 6 + len(day)
    assert groups[:3] == [["all", "day", "region:a"], ["all", "dusk", "region:a"], ["all", "day"]]
    assert groups[6:] == [["fog"]] * len(day)
    # The fog slice is the dataset tool's fog over the held-out day frames, at the fixed density, labels kept.
    expected = np.stack([apply_fog(frames.images[i], FOG_BETA, label=frames.labels[i]) for i in day])
    np.testing.assert_array_equal(gated.images[6:], expected)
    np.testing.assert_array_equal(gated.labels[6:], frames.labels[day])
    assert np.abs(expected.astype(int) - frames.images[day].astype(int)).mean() > 20  # visibly fogged
    np.testing.assert_array_equal(fog_copies(frames.subset(day)).images, expected)  # deterministic
    assert gated.slices[6] == "day/fog/a" and gated.frame_ids[6].endswith("+fog0.02")
    assert len(gate_groups(frames, fog_beta=None)[0]) == 6


class FogBlind(Ensemble):
    """Production's weights, but it predicts class 10 everywhere on the fogged gate frames it is shown."""

    def __init__(self, production: Ensemble, fogged: np.ndarray) -> None:
        super().__init__(production.arch)
        self.load_state_dict(production.state_dict())
        self.fogged = {img.tobytes() for img in fogged}  # uint8 [H, W, 3] each

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        probs, feats = super().forward(images)  # [K, N, C, H, W], [N, D]
        frames = images.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [N, H, W, 3]
        for n, frame in enumerate(frames):
            if frame.tobytes() in self.fogged:
                probs[:, n] = 0.0
                probs[:, n, 10] = 1.0
        return probs, feats


def test_a_candidate_that_regresses_only_on_fog_is_refused_naming_the_fog_slice() -> None:
    frames = make_frames(6, slices=("day/clear/a", "dusk/clear/a"))
    production = build_ensemble(erfnet_arch(width=0.25, members=2), seed=0).eval()
    candidate = FogBlind(production, gate_groups(frames)[0].images[6:]).eval()
    margin = 0.01
    prod_fog = gate_metrics(production, frames)["fog"].miou
    assert prod_fog > 2 * margin  # production does see something in the fog, so losing it is a regression
    report = gate_models(candidate, production, frames, margin=margin, raise_on_failure=False)
    assert [s.slice for s in report.failures] == ["fog"]
    fog = report.failures[0]
    assert fog.candidate == 0.0 and fog.production == pytest.approx(prod_fog)
    assert {s.slice: s.delta for s in report.slices if s.passed} == {"all": 0.0, "day": 0.0, "dusk": 0.0, "region:a": 0.0}
    with pytest.raises(GateRefusedError, match=r"slices regressed beyond margin 0.01: fog \(drops") as info:
        gate_models(candidate, production, frames, margin=margin)
    table = info.value.report.table()  # type: ignore[attr-defined]
    assert next(line for line in table.splitlines() if line.startswith("fog ")).endswith(f"REFUSED {fog.reason}")
