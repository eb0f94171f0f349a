"""Per-slice release gates: a regression beyond the margin on any slice refuses the release."""

from __future__ import annotations

import json
import math

import pytest

from avminer.errors import GateRefusedError, TrainerError
from avminer.models import build_ensemble, erfnet_arch
from avminer.trainer.gates import compare, enforce, gate_models
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
