"""``avminer train run --adapt`` and ``avminer train report --adapt`` end to end (starter bundle, tiny folders)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avminer.catalog.catalog import open_catalog
from avminer.cli.main import main
from avminer.engines.bundle import load_bundle
from avminer.errors import DatasetError
from avminer.evaluation.adaptation import DEFAULT_ROWS, adaptation_splits, india_role
from avminer.taxonomy import CAMVID, IDD_LEVEL1
from tests.sinks import factories as f

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _folder(root: Path, tax, rows: list[tuple[str, str, str, str]], location: str) -> Path:
    """CamVid-layout folder of (frame_id, split, sequence, time_of_day) rows, 36x48 street-like frames."""
    root.mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"classes": list(tax.classes), "void": tax.void}))
    rng = np.random.default_rng(tax.num_classes)
    lines = ["frame_id,split,sequence,frame_index,time_of_day,location,image,label"]
    for i, (fid, split, seq, tod) in enumerate(rows):
        img = np.zeros((36, 48, 3), np.uint8)
        img[:12], img[12:20], img[20:] = (170, 190, 220), (120, 110, 100), (80, 80, 85)
        if tod == "dusk":
            img //= 4
        Image.fromarray(np.clip(img + rng.integers(-15, 15, img.shape), 0, 255).astype(np.uint8)).save(root / f"{fid}.png")
        label = np.zeros((36, 48), np.uint8)
        if tax is CAMVID:
            label[:12], label[12:20], label[20:] = 0, 1, 3  # sky, building, road
        else:
            label[:12], label[12:20], label[20:] = 6, 5, 0  # sky, far objects, drivable
        Image.fromarray(label).save(root / f"{fid}_label.png")
        lines.append(f"{fid},{split},{seq},{i},{tod},{location},{fid}.png,{fid}_label.png")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    cv = _folder(tmp_path / "camvid", CAMVID,
                 [(f"d{i}", "train", "DAY", "day") for i in range(4)] + [("v0", "val", "DAY", "day"), ("v1", "val", "DAY", "day")]
                 + [(f"k{i}", "train", "DUSK", "dusk") for i in range(4)], "cambridge_uk")
    # IDD sequences chosen so that every role of the by-sequence split has frames.
    seqs = {}
    for s in range(40):
        seqs.setdefault(india_role(str(s)), str(s))
    assert set(seqs) == {"adapt", "eval", "val"}
    idd = _folder(tmp_path / "idd", IDD_LEVEL1,
                  [(f"{seqs[r]}_{j}", "train", seqs[r], "day") for r in ("adapt", "eval", "val") for j in range(2)], "india")
    return cv, idd


def test_train_run_adapt_writes_a_bundle_and_marks_pseudo_labels(folders, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cv, idd = folders
    catalog = open_catalog(str(tmp_path / "c.db"))
    dec = f.decision(1)
    dec.frame_id = "k0"  # the catalog knows one of the dusk frames (mined, not labeled)
    catalog.upsert_decision(dec, frame_uri="s3://b/k0.jpg", width=48, height=36, priority=1.0)
    catalog.close()
    rc = main(["train", "run", "--adapt", "adabn,pseudo", "--data", str(cv), "--day-only", "--target", str(cv),
               "--target-sequences", "DUSK", "--target-labels", str(idd), "--pseudo-rounds", "1", "--epochs", "1",
               "--threads", "1", "--no-progress", "--out", str(tmp_path / "bundle"), "--version", "adapted-1",
               "--catalog", f"sqlite:///{tmp_path / 'c.db'}", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["adaptation"]["methods"] == ["adabn", "pseudo"]
    assert out["adaptation"]["target_labels_used"] == 6 and out["adaptation"]["pseudo_frames"] == 4
    assert out["catalog_pseudo_marked"] == 1
    bundle = load_bundle(tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    trained_on = manifest["trained_on"]
    assert trained_on["pseudo_labeled_frames"] == [f"k{i}+pseudo" for i in range(4)]
    assert trained_on["config"]["coarse_taxonomy"] == "idd_level1"
    assert bundle.version == "adapted-1"
    row = open_catalog(str(tmp_path / "c.db")).get_sample("s0001")
    assert row is not None and row.labeler == "pseudo:adapted-1" and row.label_uri is None


def test_train_run_adapt_refuses_missing_target(folders, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cv, _ = folders
    assert main(["train", "run", "--adapt", "pseudo", "--data", str(cv), "--out", str(tmp_path / "b")]) == 2
    assert "--target: adabn, pseudo and mix need unlabeled target frames" in capsys.readouterr().err
    assert main(["train", "run", "--adapt", "synth", "--data", str(cv), "--out", str(tmp_path / "b")]) == 2
    assert "--target: synth's mix renders frames in the style of the target frames" in capsys.readouterr().err
    assert main(["train", "run", "--adapt", "synth,dream", "--data", str(cv), "--out", str(tmp_path / "b")]) == 2
    assert "unknown adaptation method(s) ['dream']" in capsys.readouterr().err


def test_train_report_adapt_table_on_tiny_folders(folders, capsys: pytest.CaptureFixture[str]) -> None:
    cv, idd = folders
    rc = main(["train", "report", "--adapt", "--data", str(cv), "--target-data", str(idd), "--methods", "baseline",
               "adabn", "--seeds", "0", "1", "--threads", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["splits"]["dusk_adapt"] == 2 and out["splits"]["eval:cambridge_uk/dusk"] == 2
    # The full report's default thins the India adaptation frames to every 3rd (2 -> 1); evaluation keeps all.
    assert out["splits"]["india_adapt"] == 1 and out["splits"]["eval:india/day"] == 2
    assert out["config"]["max_source_frames"] == 120 and out["config"]["thin"] == {"india_adapt": 3}
    summary = {e["method"]: e for e in out["summary"]}
    assert summary["adabn"]["seeds"] == [0, 1] and summary["baseline"]["seeds"] == [None]
    for cond in ("cambridge_uk/day", "cambridge_uk/dusk", "india/day"):
        assert 0 <= summary["baseline"][cond]["mean"] <= 1
    assert summary["adabn"]["labels_used"] == 0 and summary["adabn"]["pseudo_frames"] == 0


@pytest.mark.slow
def test_quick_adaptation_report_on_the_shared_data(capsys: pytest.CaptureFixture[str]) -> None:
    """The CI run of the report's quick mode (a few minutes on two cores; the time is printed, not asserted)."""
    rc = main(["train", "report", "--adapt", "--quick", "--data", str(SHARED / "camvid"),
               "--target-data", str(SHARED / "idd_lite"), "--threads", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    methods = [e["method"] for e in out["summary"]]
    assert methods == ["baseline", "adabn", "synth+adabn+pseudo"]
    combined = out["summary"][2]
    assert combined["pseudo_frames"] > 0 and 0 < combined["pseudo_pixel_share"] < 1
    print(f"quick adaptation report: {out['seconds_total']} s")


@pytest.fixture
def folders_with_validation(tmp_path: Path) -> tuple[Path, Path]:
    """As ``folders``, with a second day sequence (the one validation mode holds out of the source)."""
    cv = _folder(tmp_path / "camvid", CAMVID,
                 [(f"d{i}", "train", "DAY", "day") for i in range(4)] + [(f"h{i}", "train", "HELD", "day") for i in range(3)]
                 + [("v0", "val", "DAY", "day"), ("v1", "val", "DAY", "day")]
                 + [(f"k{i}", "train", "DUSK", "dusk") for i in range(6)], "cambridge_uk")
    seqs = {}
    for s in range(40):
        seqs.setdefault(india_role(str(s)), str(s))
    idd = _folder(tmp_path / "idd", IDD_LEVEL1,
                  [(f"{seqs[r]}_{j}", "train", seqs[r], "day") for r in ("adapt", "eval", "val") for j in range(2)], "india")
    return cv, idd


def test_validation_splits_never_touch_the_evaluation_frames(folders_with_validation) -> None:
    cv, idd = folders_with_validation
    held = adaptation_splits(cv, idd, (16, 24), day_validation_sequence="HELD")
    val = adaptation_splits(cv, idd, (16, 24), validation=True, day_validation_sequence="HELD")

    def ids(split) -> dict[str, set[str]]:
        return {s.condition: set(s.frames.frame_ids) for s in split.eval_slices}

    evaluation, validation = ids(held), ids(val)
    assert evaluation["cambridge_uk/day"] == {"v0", "v1"} and evaluation["cambridge_uk/dusk"] == {"k3", "k4", "k5"}
    assert validation["cambridge_uk/day"] == {"h0", "h1", "h2"}
    assert validation["cambridge_uk/dusk"] == {"k2"}  # the last third of the dusk adaptation half
    assert {india_role(i.split("_")[0]) for i in validation["india/day"]} == {"val"}
    assert {india_role(i.split("_")[0]) for i in evaluation["india/day"]} == {"eval"}
    every_eval = set().union(*evaluation.values())
    scored_or_trained = set().union(*validation.values(), val.source.frame_ids, val.target.frame_ids,
                                    val.dusk_labeled.frame_ids, val.india_labeled.frame_ids)
    assert not every_eval & scored_or_trained  # validation mode never loads an evaluation frame
    assert not set(val.source.frame_ids) & validation["cambridge_uk/day"]  # held out of the source
    assert not set(val.target.frame_ids) & validation["cambridge_uk/dusk"]  # held out of the target
    assert set(held.source.frame_ids) == {f"d{i}" for i in range(4)} | {f"h{i}" for i in range(3)}
    with pytest.raises(DatasetError, match="holds out day sequence 0006R0"):
        adaptation_splits(cv, idd, (16, 24), validation=True)


def test_train_report_adapt_validation_mode(folders, capsys: pytest.CaptureFixture[str]) -> None:
    cv, idd = folders
    assert main(["train", "report", "--adapt", "--validation", "--data", str(cv), "--target-data", str(idd),
                 "--methods", "baseline", "--threads", "1"]) == 2  # one day sequence: nothing to hold out
    assert "validation mode holds out day sequence" in capsys.readouterr().err


def test_train_report_adapt_takes_a_synthetic_mix_with_appearance(folders, capsys: pytest.CaptureFixture[str]) -> None:
    cv, idd = folders
    rc = main(["train", "report", "--adapt", "--data", str(cv), "--target-data", str(idd), "--methods", "synth",
               "--synth-mix", "dusk=0.3,appearance=0.3", "--thin", "day=2", "--seeds", "0", "--epochs", "1",
               "--threads", "1", "--synth-keep-clear", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["synth_mix"] == {"dusk": 0.3, "appearance": 0.3}
    assert out["config"]["synth_keep_clear"] is True
    assert out["config"]["thin"] == {"india_adapt": 3, "day": 2}  # --thin is merged over the default
    assert out["splits"]["eval:cambridge_uk/day"] == 1
    assert [e["method"] for e in out["summary"]] == ["synth"]
    assert main(["train", "report", "--adapt", "--data", str(cv), "--target-data", str(idd), "--methods", "synth",
                 "--synth-mix", "appearance=0.3,snow=0.1", "--threads", "1"]) == 2
    assert "--synth-mix.snow: unknown synthetic condition" in capsys.readouterr().err


def test_train_report_adapt_mix_row_pseudo_labels_in_groups(folders, capsys: pytest.CaptureFixture[str]) -> None:
    cv, idd = folders
    rc = main(["train", "report", "--adapt", "--data", str(cv), "--target-data", str(idd), "--methods", "synth+mix",
               "--pseudo-groups", "on", "--pseudo-flip", "on", "--source-share", "0.75", "--rounds", "1", "--seeds", "0",
               "--epochs", "1", "--threads", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["pseudo_groups"] is True and out["config"]["source_share"] == 0.75
    assert out["config"]["mix_pseudo"] == {"groups": True, "flip": True, "source_share": 0.75}  # what the row used
    (entry,) = out["summary"]
    assert entry["method"] == "synth+mix" and entry["target_labels_used"] == 0  # zero target labels
    assert entry["pseudo_frames"] > 0  # the unlabeled dusk / India frames, recorded as pseudo-labeled
    assert entry["labels_used"] <= out["splits"]["source"]  # labeled frames are source frames only


def test_train_run_adapt_synth_with_appearance_records_the_mix(folders, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    cv, _ = folders
    rc = main(["train", "run", "--adapt", "synth", "--data", str(cv), "--day-only", "--synth-mix",
               "appearance=0.5,dusk=0.2", "--epochs", "1", "--threads", "1", "--no-progress",
               "--out", str(tmp_path / "bundle"), "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["adaptation"]["methods"] == ["synth"]
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["trained_on"]["config"]["synth_mix"] == {"dusk": 0.2, "appearance": 0.5}


def test_train_report_adapt_interpolation_sweep_scores_one_adaptation_at_every_weight(
        folders, capsys: pytest.CaptureFixture[str]) -> None:
    cv, idd = folders
    common = ["train", "report", "--adapt", "--data", str(cv), "--target-data", str(idd), "--rounds", "1", "--seeds", "0",
              "--epochs", "1", "--threads", "1", "--json"]

    def rows(*extra: str) -> dict[str, dict[str, float]]:
        assert main([*common, *extra]) == 0
        out = json.loads(capsys.readouterr().out)
        return {r["method"]: r["miou"] for r in out["rows"]}

    swept = rows("--methods", "synth+mix+wise", "--interpolate-sweep", "0.5,1")
    assert set(swept) == {"synth+mix+wise@0.5", "synth+mix+wise@1"}
    # Each weight of the sweep is what a run at that weight gives: 1 is the plain row, 0.5 the --interpolate row.
    plain = rows("--methods", "synth+mix")["synth+mix"]
    half = rows("--methods", "synth+mix+wise", "--interpolate", "0.5")["synth+mix+wise"]
    for cond in plain:
        assert swept["synth+mix+wise@1"][cond] == pytest.approx(plain[cond], abs=1e-6)
        assert swept["synth+mix+wise@0.5"][cond] == pytest.approx(half[cond], abs=1e-6)
    # Not a row of the default report: on the validation slices no weight below 1 beat synth+mix.
    assert "synth+mix+wise" not in DEFAULT_ROWS and "synth+mix" in DEFAULT_ROWS
    assert main([*common, "--methods", "synth+mix+wise", "--interpolate-sweep", "0.5,1.5"]) == 2
    assert "--interpolate-sweep: weights must be in (0, 1], got 1.5" in capsys.readouterr().err
