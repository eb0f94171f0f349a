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
    combine,
    reach_fraction,
    select_diverse,
    slice_budgets,
    summarise,
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


def test_class_weights_favour_classes_rare_in_the_labeled_set() -> None:
    pool = _frames(12, 16, 24, 0)
    pool.labels[:, : 16 // 2] = 11  # void above (not counted), road (3) below
    pool.labels[:, :2, :2] = 0  # a sliver of sky; class 9 never appears
    sim = Simulation(pool, _frames(3, 16, 24, 1), ALConfig(height=16, width=24, initial_fraction=0.2,
                                                           fractions=[0.5]), progress=lambda _: None)
    w = sim._class_weights(range(12))
    assert w[0] > w[3]  # rare sky pixels count more than common road
    assert w[9] == pytest.approx(10.0)  # never labeled: the cap
    assert (w >= 0.25).all() and (w <= 10.0).all()


def _report(seed: int, random_miou: list[float], policy_miou: list[float], full: float) -> dict[str, object]:
    def curve(mious: list[float]) -> list[RoundResult]:
        return [RoundResult(10 * (i + 1), 0.1 * (i + 1), m, {"day": m, "dusk": m / 2}, {"day": 10 * (i + 1)}, 1.0)
                for i, m in enumerate(mious)]

    report = summarise({"random": curve(random_miou), "policy": curve(policy_miou)}, full, {"day": full},
                       ALConfig(seed=seed), 100, 20, {"ensemble": 1.0, "mc_dropout_t20": 6.0}, 5.0)
    return report


def test_combine_averages_seeds_and_keeps_each_seed() -> None:
    a = _report(0, [0.1, 0.2, 0.3], [0.1, 0.25, 0.28], 0.3)
    b = _report(1, [0.1, 0.2, 0.3], [0.1, 0.19, 0.36], 0.4)
    out = combine([a, b])
    assert out["seeds"] == [0, 1]
    assert out["full_pool"]["miou"] == pytest.approx(0.35) and out["full_pool"]["per_seed"] == [0.3, 0.4]
    policy = out["strategies"]["policy"]
    assert [r["miou"] for r in policy["curve"]] == pytest.approx([0.1, 0.22, 0.32])
    assert policy["per_seed_miou"] == [[0.1, 0.25, 0.28], [0.1, 0.19, 0.36]]
    assert policy["curve"][1]["miou_by_condition"]["dusk"] == pytest.approx(0.11)
    assert policy["reaches_full_pool_at"] is None  # mean 0.32 < mean full pool 0.35
    assert out["policy_beats_random_at"] == [True, True]  # on the means
    assert out["policy_beats_random_per_seed"] == [[True, False], [False, True]]
    assert out["uncertainty_seconds_per_frame"]["mc_over_ensemble"] == pytest.approx(6.0)
    assert combine([a])["seeds"] == [0]


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


@pytest.mark.slow
def test_bench_al_seeds_run_in_worker_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avminer.cli.main import main
    from tests.trainer.test_data import write_camvid

    rows = [(f"d{i}", "train", "D", "day") for i in range(16)] + [(f"k{i}", "train", "K", "dusk") for i in range(6)]
    data = write_camvid(tmp_path / "cv", rows)
    rc = main(["bench", "al", "--data", str(data), "--quick", "--threads", "1", "--strategies", "random,policy",
               "--seeds", "2", "--jobs", "2", "--out", str(tmp_path / "al"), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seeds"] == [0, 1]
    for s in report["strategies"].values():
        assert len(s["per_seed_miou"]) == 2
        assert [r["miou"] for r in s["curve"]] == pytest.approx(np.mean(s["per_seed_miou"], axis=0).tolist())
    assert len(report["policy_beats_random_per_seed"]) == 2
