"""``avminer eval``: the CLI over the one segmentation evaluation, each folder in its own taxonomy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avminer.cli.main import main
from avminer.evaluation.segmentation import bundle_predictor, evaluate, load_eval_slices
from avminer.taxonomy import CAMVID, IDD_LEVEL1, Taxonomy

STARTER = Path(__file__).resolve().parents[2] / "avminer" / "data" / "starter_bundle"


def _folder(root: Path, classes: list[str], void: int, rows: list[tuple[str, str, str]], location: str) -> Path:
    """A CamVid-layout folder of (frame_id, sequence, time_of_day) rows with 36x48 random frames."""
    root.mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"classes": classes, "void": void}))
    rng = np.random.default_rng(len(classes))
    lines = ["frame_id,split,sequence,frame_index,time_of_day,location,image,label"]
    for i, (fid, seq, tod) in enumerate(rows):
        # Smooth-ish frames: a sky-like top and a road-like bottom, so the model predicts several classes.
        img = np.zeros((36, 48, 3), np.uint8)
        img[:18] = (150, 170, 200)
        img[18:] = (90, 90, 90)
        img = np.clip(img + rng.integers(-30, 30, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"{fid}.png")
        label = rng.integers(0, len(classes), (36, 48), dtype=np.uint8)
        label[:3] = void
        Image.fromarray(label).save(root / f"{fid}_label.png")
        lines.append(f"{fid},train,{seq},{i},{tod},{location},{fid}.png,{fid}_label.png")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def test_eval_json_per_condition_in_each_folders_taxonomy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cv = _folder(tmp_path / "cv", list(CAMVID.classes), CAMVID.void,
                 [("a1", "A", "day"), ("a2", "A", "day"), ("b1", "B", "dusk")], "cambridge_uk")
    idd = _folder(tmp_path / "idd", list(IDD_LEVEL1.classes), IDD_LEVEL1.void, [("i1", "7", "day")], "india")
    rc = main(["eval", "--model", str(STARTER), "--data", str(cv), "--data", str(idd), "--fog", "0.02",
               "--night", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    conds = out["conditions"]
    assert set(conds) == {"cambridge_uk/day", "cambridge_uk/dusk", "cambridge_uk/fog0.02", "cambridge_uk/night",
                          "india/day", "india/fog0.02", "india/night"}
    assert conds["india/day"]["taxonomy"] == "idd_level1"
    assert list(conds["india/day"]["per_class"]) == list(IDD_LEVEL1.classes)
    assert list(conds["cambridge_uk/dusk"]["per_class"]) == list(CAMVID.classes)
    assert out["common_taxonomy"] == "idd_level1"
    # The CLI's figures are the library's figures.
    predict, size = bundle_predictor(STARTER)
    direct = evaluate(predict, load_eval_slices([cv, idd], size)).by_condition()
    for key in ("cambridge_uk/day", "cambridge_uk/dusk", "india/day"):
        assert conds[key]["miou"] == pytest.approx(direct[key].miou)
        assert conds[key]["miou_common"] == pytest.approx(direct[key].miou_common)
    assert out["worst_miou_common"] == min(c["miou_common"] for c in conds.values())

    assert main(["eval", "--model", str(STARTER), "--data", str(cv), "--sequences", "B"]) == 0
    table = capsys.readouterr().out
    assert "| cambridge_uk/dusk | 1 | camvid11 |" in table and "cambridge_uk/day |" not in table


def test_eval_refuses_an_undeclared_taxonomy_and_bad_fog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    odd = Taxonomy("odd", ("road", "not_road"), 2)
    folder = _folder(tmp_path / "odd", list(odd.classes), odd.void, [("x1", "X", "day")], "mars")
    assert main(["eval", "--model", str(STARTER), "--data", str(folder)]) == 2
    assert "match no known taxonomy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(STARTER), "--data", str(folder), "--fog", "-1"])
    assert "fog densities must be > 0" in capsys.readouterr().err
