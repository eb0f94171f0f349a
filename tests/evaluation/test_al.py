"""Active-learning simulation: selection helpers are correct, and the loop runs every strategy end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avminer.errors import DatasetError
from avminer.evaluation.al import (
    ALConfig,
    RoundResult,
    Simulation,
    _rank01,
    reach_fraction,
    select_diverse,
    slice_budgets,
    write_report,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_rank01_is_tie_aware_and_bounded() -> None:
    r = _rank01(np.array([3.0, 1.0, 2.0, 2.0]))
    assert r.tolist() == pytest.approx([1.0, 0.0, 0.5, 0.5])
    assert _rank01(np.array([5.0])).tolist() == [0.0]


def test_select_diverse_skips_near_duplicates() -> None:
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(3, 16)))
    # Ten copies of frame 0 with top priority, then two distinct frames with lower priority.
    emb = _unit(np.concatenate([base[:1] + 1e-3 * rng.normal(size=(10, 16)), base[1:]]))
    priority = np.r_[np.full(10, 1.0), 0.6, 0.5]
    picks = select_diverse(priority, emb, np.zeros((0, 16)), 3, diversity_weight=1.0)
    assert picks[0] < 10 and set(picks[1:]) == {10, 11}
    # Without the diversity penalty the copies win.
    assert all(p < 10 for p in select_diverse(priority, emb, np.zeros((0, 16)), 3, diversity_weight=0.0))


def test_slice_budgets_follow_priority_and_availability() -> None:
    slices = ["day"] * 8 + ["dusk"] * 2
    priority = np.r_[np.full(8, 0.1), np.full(2, 1.0)]
    b = slice_budgets(slices, priority, 5)
    assert sum(b.values()) == 5
    assert b["dusk"] == 2  # wants more than it has: capped at what is available
    assert slice_budgets(slices, np.zeros(10), 4) == {"day": 3, "dusk": 1}  # no signal: by size


def test_reach_fraction() -> None:
    rounds = [RoundResult(1, 0.1, 0.2, {}, {}, 0.0), RoundResult(2, 0.2, 0.5, {}, {}, 0.0)]
    assert reach_fraction(rounds, 0.4) == 0.2
    assert reach_fraction(rounds, 0.6) is None


def _frames(n: int, h: int, w: int, seed: int):  # type: ignore[no-untyped-def]
    from avminer.trainer.data import LabeledFrames

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, size=(n, h, w, 3), dtype=np.uint8)
    labels = np.zeros((n, h, w), np.uint8)
    labels[:, h // 2 :] = 3  # road below, sky above: something learnable
    dusk = np.arange(n) % 3 == 0
    images[dusk] //= 4
    slices = ["dusk/clear/x" if d else "day/clear/x" for d in dusk]
    return LabeledFrames(images, labels, [f"f{i}" for i in range(n)], slices, ["s"] * n)


def test_simulation_runs_every_strategy(tmp_path: Path) -> None:
    cfg = ALConfig(height=16, width=24, members=2, initial_fraction=0.1, fractions=[0.2, 0.35], epochs=1.0, min_steps=2,
                   batch_size=4, mc_samples=3, threads=1)
    pool, held = _frames(30, 16, 24, 0), _frames(9, 16, 24, 1)
    report = Simulation(pool, held, cfg, progress=lambda _: None).run()
    assert set(report["strategies"]) == {"random", "entropy", "mc_bald", "dpe_mi", "policy"}
    for s in report["strategies"].values():
        curve = s["curve"]
        assert [r["labeled"] for r in curve] == [3, 6, round(0.35 * 30)]
        assert all(0.0 <= r["miou"] <= 1.0 for r in curve)
        assert set(curve[-1]["miou_by_condition"]) == {"day", "dusk"}
        # The initial set is day frames only; later rounds may add dusk.
        assert curve[0]["picked_by_condition"] == {"day": 3}
    cost = report["uncertainty_seconds_per_frame"]
    assert cost["ensemble"] > 0 and cost["mc_dropout_t20"] > 0
    assert len(report["policy_beats_random_at"]) == 2
    jpath, ppath = write_report(report, tmp_path)
    assert json.loads(jpath.read_text())["pool_frames"] == 30
    assert ppath.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_errors_are_clear() -> None:
    with pytest.raises(DatasetError, match="multiples of 8"):
        ALConfig(height=50).validate()
    with pytest.raises(DatasetError, match="unknown strategies"):
        ALConfig(strategies=["oracle"]).validate()


def test_bench_al_quick_cli_prints_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avminer.cli.main import main
    from tests.trainer.test_data import write_camvid

    rows = [(f"d{i}", "train", "D", "day") for i in range(16)] + [(f"k{i}", "train", "K", "dusk") for i in range(6)]
    data = write_camvid(tmp_path / "cv", rows)
    rc = main(["bench", "al", "--data", str(data), "--quick", "--threads", "1", "--strategies", "random,policy",
               "--out", str(tmp_path / "al"), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["strategies"]) == {"random", "policy"}
    assert report["pool_frames"] + report["eval_frames"] == len(rows)
    assert Path(report["files"]["plot"]).is_file()
