"""The closed-loop backtest on the product's code: a quick run end to end, determinism, the summary maths."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from avminer.config import load_settings
from avminer.datasets.fleet import FleetSpec, build_fleet
from avminer.errors import DatasetError
from avminer.evaluation.backtest import (
    _Data,
    _interp_labels_to_reach,
    mine_segment,
    parse_strategy,
    quick_config,
    resummarise,
    run_backtest,
    run_key,
    run_settings,
    summarise,
    write_report,
)
from avminer.taxonomy import CAMVID, CAMVID_TO_IDD_LEVEL1, IDD_LEVEL1
from avminer.trainer.mapped_labels import lift_labels
from tests.datasets.test_fleet import make_folder

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet")
    day = [("D1", str(i), "day", "train") for i in range(20)] + [("D2", str(i), "day", "val") for i in range(4)]
    dusk = [("K1", str(i), "dusk", "train") for i in range(8)]
    camvid = make_folder(root / "camvid", CAMVID, day + dusk, "cambridge_uk")
    region = make_folder(root / "idd", IDD_LEVEL1, [(str(s), str(i), "day", "train") for s in range(8) for i in range(3)],
                         "india", weather=True)
    spec = FleetSpec(frames=240, shares={"dusk": 0.05, "fog": 0.05, "night": 0.03, "new_region": 0.05}, seed=1,
                     eval_region_frames=4)
    build_fleet(camvid, root / "out", spec, region=region)
    return root / "out"


def _cfg(fleet: Path, out: Path, **changes: object):
    return quick_config(stream=fleet / "stream.avro", base=fleet / "base",
                        eval_folders=sorted(fleet.glob("eval-*")), out=out, budget=0.1, **changes).validate()


def test_quick_backtest_end_to_end(fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg(fleet, tmp_path / "bt", strategies=["random", "mi", "adaptive"])
    settings = load_settings(None, environ={}, overrides={"selection": {"warmup_frames": 40}})
    report = run_backtest(cfg, settings)
    assert set(report["strategies"]) == {"random", "mi", "adaptive"}
    assert report["stream_by_condition"]["day"] == 197 and report["rare_stream_share"] == pytest.approx(0.18, abs=0.01)
    for name, s in report["strategies"].items():
        assert [c["round"] for c in s["curve"]] == [1, 2], name
        assert all(0.0 <= c["worst"] <= 1.0 for c in s["curve"])
    run = next(r for r in report["runs"] if r["strategy"] == "random")
    assert sum(row["labels"] for row in run["rounds"]) > 0  # the oracle answered the miner's requests
    conditions = set(run["rounds"][-1]["eval"]["conditions"])
    # India is scored in its own taxonomy; fog and night copies only of the CamVid folder.
    assert {"cambridge_uk/day", "cambridge_uk/dusk", "cambridge_uk/fog0.05", "cambridge_uk/night",
            "india/day"} <= conditions and not any(c.startswith("india/fog") for c in conditions)
    assert "adaptive" in report["goals"]
    # The report names the versions it was measured under (figures move with them).
    import torch

    assert report["environment"]["torch"] == torch.__version__ and report["environment"]["numpy"] == np.__version__
    # A resumed backtest with the same settings reuses the finished runs instead of running them again.
    again = run_backtest(cfg, settings, report_only=True)
    assert again["runs"] == report["runs"]
    with pytest.raises(DatasetError, match="no finished run"):  # other settings: nothing to summarise, no empty report
        run_backtest(replace(cfg, steps=cfg.steps + 1), settings, report_only=True)
    # An interrupted run (its round folders there, no result.json) starts over: the requests it wrote
    # are not answered twice.
    (tmp_path / "bt" / "runs" / "random-s0" / "result.json").unlink()
    rerun = run_backtest(replace(cfg, strategies=["random"]), settings)["runs"][0]["rounds"]
    assert [(r["labels"], r["bought_by_condition"]) for r in rerun] == [
        (r["labels"], r["bought_by_condition"]) for r in run["rounds"]]
    jpath, ppath = write_report(report, tmp_path / "bt")
    assert json.loads(jpath.read_text())["strategies"].keys() == report["strategies"].keys()
    assert ppath.stat().st_size > 10_000
    # The CLI summarises a written report again from its runs, nothing re-run; a file that is no report is
    # refused, naming it.
    from avminer.cli.main import main

    assert main(["backtest", "--resummarise", str(jpath), "--out", str(tmp_path / "again"), "--json"]) == 0
    again_written = json.loads((tmp_path / "again" / "backtest.json").read_text())
    assert again_written["goals"] == json.loads(jpath.read_text())["goals"]
    (tmp_path / "bad.json").write_text("{not json")
    capsys.readouterr()
    assert main(["backtest", "--resummarise", str(tmp_path / "bad.json"), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "--resummarise" in err and "bad.json" in err


@pytest.mark.parametrize("strategy", ["full", "random", "bald"])
def test_same_seed_stream_and_settings_give_the_same_selections(fleet: Path, tmp_path: Path, strategy: str) -> None:
    from avminer.engines.hotswap import EngineHolder
    from avminer.selection.registry import make_policy

    cfg = _cfg(fleet, tmp_path / "bt", strategies=[strategy])
    settings = load_settings(None, environ={}, overrides={"selection": {"warmup_frames": 40}})
    data = _Data(cfg)

    def mined(run: int) -> list[str]:
        s = run_settings(settings, cfg, strategy, seed=0, out=tmp_path / f"run{run}")
        holder = EngineHolder.from_settings(s)
        try:
            assert holder.load(data.initial).ok
            _, decided = mine_segment(s, holder, make_policy(s.selection), data.segments[0].path)
        finally:
            holder.close()
        assert len(decided) == data.segments[0].frames
        return [d.decision.sample_id for d in decided if d.decision.mined]

    first = mined(1)
    assert first and first == mined(2)


def test_lifted_labels_keep_one_to_one_groups_only() -> None:
    groups = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], np.uint8)  # drivable .. sky, void 7
    lifted = lift_labels(groups, CAMVID_TO_IDD_LEVEL1)
    names = {int(v): (CAMVID.classes[v] if v < CAMVID.num_classes else "void") for v in np.unique(lifted)}
    assert [names[int(v)] for v in lifted.ravel()] == [
        "road", "sidewalk", "void", "car", "void", "void", "sky", "void"]


def test_summary_measures_reach_and_spread() -> None:
    assert _interp_labels_to_reach([0, 10, 20], [0.1, 0.2, 0.4], 0.3) == pytest.approx(15.0)
    assert _interp_labels_to_reach([0, 10], [0.1, 0.2], 0.5) is None

    def run(strategy: str, seed: int, worst: list[float], labels: list[int], day: float = 0.5) -> dict:
        rounds = []
        for w, n in zip(worst, labels, strict=True):
            rounds.append({"worst": w, "labels_total": n, "worst_condition": "x/dusk", "released": True,
                           "seconds": {"total": 1.0}, "bought_by_condition": {"dusk": 2, "day": 2} if strategy == "adaptive"
                           else {"day": 4}, "eval": {"conditions": {"x/day": {"miou_common": day},
                                                                    "x/dusk": {"miou_common": w}}}})
        return {"strategy": strategy, "seed": seed, "rounds": rounds}

    runs = [run("random", 0, [0.10, 0.20], [10, 20]), run("random", 1, [0.12, 0.22], [10, 20]),
            run("adaptive", 0, [0.30, 0.40], [5, 10]), run("adaptive", 1, [0.31, 0.41], [5, 10])]
    cfg = quick_config(stream=Path("s"), base=Path("b"), eval_folders=[Path("e")], strategies=["random", "adaptive"])
    report = summarise(runs, {"worst_miou_common": 0.05, "worst_condition": "x/dusk"}, {"day": 95, "dusk": 5}, cfg)
    goals = report["goals"]["adaptive"]
    assert goals["random_final_worst"] == pytest.approx(0.21)
    assert goals["labels_to_reach_random_final"] == pytest.approx(0.16 / 0.255 * 5, rel=1e-6)
    assert goals["beats_by_more_than_spread"]["random"] == [True, True]
    # At the same number of labels: random's seeds read at 5 and 10 labels (0.075, 0.10 and 0.085, 0.12).
    equal = goals["at_equal_labels"]["random"]
    assert [r["theirs"] for r in equal] == pytest.approx([0.08, 0.11])
    assert [r["spread"] for r in equal] == pytest.approx([0.01, 0.02])
    assert [r["win"] for r in equal] == [True, True]
    # Paired by seed, each read at that seed's own labels: seed 0 0.30 - 0.075, seed 1 0.31 - 0.085; then
    # 0.40 - 0.10 and 0.41 - 0.12.
    assert [r["paired"] for r in equal] == [pytest.approx([0.225, 0.225]), pytest.approx([0.30, 0.29])]
    assert [(r["ahead"], r["paired_seeds"]) for r in equal] == [(2, 2), (2, 2)]
    # More labels than random ever bought: nothing to compare with (no extrapolation).
    more = runs[:2] + [run("adaptive", 0, [0.30, 0.40], [5, 30]), run("adaptive", 1, [0.31, 0.11], [5, 15])]
    beyond = summarise(more, {"worst_miou_common": 0.05, "worst_condition": "x/dusk"}, {"day": 95, "dusk": 5},
                       cfg)["goals"]["adaptive"]["at_equal_labels"]["random"]
    assert beyond[0]["theirs"] is not None and beyond[1]["theirs"] is None and beyond[1]["win"] is None
    # Seed 0 is beyond random's labels, seed 1 behind it (0.11 against 0.17 at 15 labels).
    assert beyond[1]["paired"] == [None, pytest.approx(-0.06)] and (beyond[1]["ahead"], beyond[1]["paired_seeds"]) == (0, 1)
    # A written report summarised again from the runs it holds gives the same summary; a stranger is refused.
    written = json.loads(json.dumps(report))
    del written["goals"], written["strategies"]
    again = resummarise(written | {"seconds": 12.0})
    assert again["goals"] == json.loads(json.dumps(report["goals"])) and again["seconds"] == 12.0
    with pytest.raises(DatasetError, match="not a backtest report"):
        resummarise({"strategies": {}})
    assert report["strategies"]["adaptive"]["rare_buy_ratio"] == pytest.approx(0.5 / 0.05)
    assert report["strategies"]["random"]["curve"][1]["worst_min"] == pytest.approx(0.20)
    # Random never beat the starting model: "reaching random's final figure" is then not a win.
    flat = summarise(runs, {"worst_miou_common": 0.5, "worst_condition": "x/dusk"}, {"day": 95, "dusk": 5}, cfg)
    assert flat["goals"]["adaptive"]["labels_to_reach_random_final"] is None
    assert flat["goals"]["adaptive"]["random_improved_worst"] is False
    # Day against random: the gap of the means, judged against the larger of the two seed ranges.
    assert goals["day_vs_random"][0] == {"condition": "x/day", "gap": 0.0, "spread": 0.0, "within_spread": True}
    days = [run("random", 0, [0.10, 0.20], [10, 20], day=0.52), run("random", 1, [0.12, 0.22], [10, 20], day=0.50),
            run("adaptive", 0, [0.30, 0.40], [5, 10], day=0.48), run("adaptive", 1, [0.31, 0.41], [5, 10], day=0.47)]
    (gap, _) = summarise(days, {"worst_miou_common": 0.05, "worst_condition": "x/dusk"}, {"day": 95, "dusk": 5},
                         cfg)["goals"]["adaptive"]["day_vs_random"]
    assert gap["gap"] == pytest.approx(0.035) and gap["spread"] == pytest.approx(0.02) and not gap["within_spread"]


def test_a_baseline_at_a_multiple_of_the_budget_is_measured_against_the_policy() -> None:
    """``random-x3`` is random mining at three times the budget, through the same miner; the summary says how
    many labels the policy needs to reach its final figure (the "a third of random's labels" goal, measured)."""
    assert parse_strategy("mi") == ("mi", 1.0) and parse_strategy("random-x3") == ("random", 3.0)
    assert parse_strategy("adaptive_mi-x1.5") == ("adaptive_mi", 1.5)
    for bad in ("randomx3", "random-x", "random-x0", "random-xnan", "nope-x3"):
        with pytest.raises(DatasetError, match="strategies"):
            parse_strategy(bad)
    cfg = quick_config(stream=Path("s"), base=Path("b"), eval_folders=[Path("e")], budget=0.04,
                       strategies=["random", "full", "random-x3"]).validate()
    s = run_settings(load_settings(None, environ={}), cfg, "random-x3", seed=1, out=Path("o"))
    assert (s.selection.policy, s.selection.target_rate, s.selection.seed) == ("random", pytest.approx(0.12), 1)
    with pytest.raises(DatasetError, match="random-x30 at budget 0.04"):
        replace(cfg, strategies=["random-x30"]).validate()

    def run(strategy: str, seed: int, worst: list[float], labels: list[int]) -> dict:
        return {"strategy": strategy, "seed": seed, "rounds": [
            {"worst": w, "labels_total": n, "worst_condition": "x/dusk", "released": True, "seconds": {"total": 1.0},
             "bought_by_condition": {"day": 4}, "eval": {"conditions": {"x/dusk": {"miou_common": w}}}}
            for w, n in zip(worst, labels, strict=True)]}

    runs = [run("random", 0, [0.10, 0.10], [10, 20]), run("full", 0, [0.20, 0.30], [10, 20]),
            run("random-x3", 0, [0.12, 0.15], [30, 60])]
    start = {"worst_miou_common": 0.10, "worst_condition": "x/dusk"}
    goals = summarise(runs, start, {"day": 95, "dusk": 5}, cfg)["goals"]["full"]
    assert goals["random_improved_worst"] is False and goals["labels_to_reach_random_final"] is None
    assert list(goals["at_equal_labels"]) == ["random"]  # the same-budget comparisons stay among equals
    (more,) = goals["more_labels"]
    # full climbs 0.10 -> 0.20 over its first 10 labels: random-x3's final 0.15 at 5 labels, 1/12 of its 60.
    assert more["strategy"] == "random-x3" and more["budget_multiple"] == 3.0 and more["final_labels"] == 60
    assert more["labels_to_reach"] == pytest.approx(5.0) and more["label_fraction"] == pytest.approx(5 / 60)
    assert more["reached_by_round_labels"] == 10 and more["label_fraction_bound"] == pytest.approx(10 / 60)
    assert more["ahead_at_every_round"] is True
    # A richer baseline that never improved on the start: nothing to reach, no fraction claimed.
    flat = summarise(runs[:2] + [run("random-x3", 0, [0.09, 0.10], [30, 60])], start, {"day": 95, "dusk": 5}, cfg)
    (none,) = flat["goals"]["full"]["more_labels"]
    assert none["improved_worst"] is False and none["labels_to_reach"] is None and none["label_fraction"] is None
    assert none["reached_by_round_labels"] is None and none["label_fraction_bound"] is None


def test_bald_baseline_runs_the_torch_engine_with_mc_dropout(fleet: Path, tmp_path: Path) -> None:
    """`bald` is the same miner with Monte-Carlo dropout in the torch engine (BaaL's approach), MI-ranked."""
    from avminer.engines.hotswap import EngineHolder
    from avminer.selection.registry import make_policy

    cfg = _cfg(fleet, tmp_path / "bt", strategies=["bald"], bald_samples=4)
    settings = load_settings(None, environ={}, overrides={"selection": {"warmup_frames": 40}})
    data = _Data(cfg)
    s = run_settings(settings, cfg, "bald", seed=0, out=tmp_path / "run")
    assert (s.engine.backend, s.engine.mc_dropout_samples, s.selection.policy) == ("torch", 4, "bald")
    holder = EngineHolder.from_settings(s)
    try:
        assert holder.load(data.initial).ok
        assert holder.current.mc_dropout_samples == 4  # type: ignore[attr-defined]
        _, decided = mine_segment(s, holder, make_policy(s.selection), data.segments[0].path)
    finally:
        holder.close()
    assert len(decided) == data.segments[0].frames
    assert any(d.decision.mined for d in decided)


def test_run_key_follows_what_a_run_reads() -> None:
    """A finished run is reused only under the same settings; the broker settings, which the embedded miner
    never reads, do not count."""
    cfg = quick_config(stream=Path("s"), base=Path("b"), eval_folders=[Path("e")])
    base = load_settings(None, environ={})
    broker = load_settings(None, environ={}, overrides={"kafka": {"bootstrap_servers": "127.0.0.1:1"}})
    policy = load_settings(None, environ={}, overrides={"selection": {"warmup_frames": 7}})
    assert run_key(cfg, base) == run_key(cfg, broker) != run_key(cfg, policy)
    assert run_key(cfg, base) != run_key(replace(cfg, steps=cfg.steps + 1), base)
    # A path counts by the file it names, however it was spelled; another file is another key.
    spelled = replace(cfg, stream=Path.cwd() / "s", base=Path("./b"), eval_folders=[Path("x/../e")])
    assert run_key(spelled, base) == run_key(cfg, base) != run_key(replace(cfg, base=Path("b2")), base)
    assert run_key(cfg, base) != run_key(replace(cfg, replay=2.0), base)
    with pytest.raises(DatasetError, match="replay"):
        replace(cfg, replay=-1.0).validate()


def test_the_starting_model_is_fine_tuned_at_the_backtest_size_once(fleet: Path, tmp_path: Path) -> None:
    """The starter is trained at another input size: the backtest's production model is first fine-tuned on the
    base frames at its own size (so no run gains from that alone), recorded in its manifest and reused while
    what made it is unchanged."""
    import torch

    from avminer.engines import default_bundle_path
    from avminer.engines.bundle import load_bundle
    from avminer.evaluation.backtest import prepare_initial
    from avminer.models import load_ensemble
    from avminer.trainer.data import load_camvid

    cfg = _cfg(fleet, tmp_path / "bt", initial_epochs=1)
    base = load_camvid(cfg.base, cfg.size)
    out = prepare_initial(cfg, base)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["trained_on"]["epochs"] == 1 and manifest["trained_on"]["base_frames"] == len(base)
    assert [manifest["input"]["height"], manifest["input"]["width"]] == list(cfg.size)
    stamp = (out / "model.pt").stat().st_mtime_ns
    assert prepare_initial(cfg, base) == out and (out / "model.pt").stat().st_mtime_ns == stamp  # reused
    untouched = prepare_initial(replace(cfg, initial_epochs=0), base)  # other settings: made again
    assert json.loads((untouched / "manifest.json").read_text())["trained_on"]["epochs"] == 0
    tuned_again = prepare_initial(cfg, base)
    starter = load_ensemble(load_bundle(default_bundle_path()).torch_path)
    moved = [k for k, v in load_ensemble(tuned_again / "model.pt").state_dict().items()
             if v.is_floating_point() and not torch.equal(v, starter.state_dict()[k])]
    assert moved  # the fine-tuning changed the weights
    with pytest.raises(DatasetError, match="initial_epochs"):
        replace(cfg, initial_epochs=-1).validate()
