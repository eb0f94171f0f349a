"""The one segmentation evaluation: conditions, taxonomies, variants, and a perfect/blind model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avminer.evaluation.segmentation import (
    EvalSlice,
    bundle_predictor,
    condition_key,
    evaluate,
    load_eval_slices,
)
from avminer.taxonomy import CAMVID, CAMVID_TO_IDD_LEVEL1, IDD_LEVEL1

STARTER = Path(__file__).resolve().parents[2] / "avminer" / "data" / "starter_bundle"


def _folder(tmp: Path, tax, rows: list[tuple[str, str, str, str]], with_weather: bool) -> Path:
    """A tiny CamVid-layout folder: (frame_id, sequence, time_of_day, weather) rows, 24x32 frames."""
    tmp.mkdir(parents=True)
    (tmp / "classes.json").write_text(json.dumps({"classes": list(tax.classes), "void": tax.void}))
    rng = np.random.default_rng(len(str(tmp)) + tax.num_classes)  # folders get different pixels
    header = "frame_id,split,sequence,frame_index,time_of_day,location," + ("weather," if with_weather else "")
    lines = [header + "image,label"]
    for i, (fid, seq, tod, weather) in enumerate(rows):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(tmp / f"{fid}.png")
        label = rng.integers(0, tax.num_classes, (24, 32), dtype=np.uint8)
        label[:2] = tax.void
        Image.fromarray(label).save(tmp / f"{fid}_label.png")
        loc = "india" if tax is IDD_LEVEL1 else "cambridge_uk"
        extra = f"{weather}," if with_weather else ""
        lines.append(f"{fid},train,{seq},{i},{tod},{loc},{extra}{fid}.png,{fid}_label.png")
    (tmp / "manifest.csv").write_text("\n".join(lines) + "\n")
    return tmp


def test_conditions_variants_and_taxonomies(tmp_path: Path) -> None:
    camvid = _folder(tmp_path / "cv", CAMVID, [("a1", "A", "day", ""), ("a2", "A", "day", ""),
                                               ("b1", "B", "dusk", "")], with_weather=False)
    idd = _folder(tmp_path / "idd", IDD_LEVEL1, [("i1", "7", "day", "clear"), ("i2", "8", "day", "rain")],
                  with_weather=True)
    slices = load_eval_slices([camvid, idd], (24, 32), fog_betas=(0.02,), night=True)
    got = {s.condition: (len(s.frames), s.taxonomy.name) for s in slices}
    assert got == {
        "cambridge_uk/day": (2, "camvid11"), "cambridge_uk/dusk": (1, "camvid11"),
        "cambridge_uk/fog0.02": (2, "camvid11"), "cambridge_uk/night": (2, "camvid11"),
        "india/day": (1, "idd_level1"), "india/day/rain": (1, "idd_level1"),
        "india/fog0.02": (1, "idd_level1"), "india/night": (1, "idd_level1"),
    }
    by = {s.condition: s for s in slices}
    # variants keep labels, change pixels
    np.testing.assert_array_equal(by["cambridge_uk/fog0.02"].frames.labels, by["cambridge_uk/day"].frames.labels)
    assert not np.array_equal(by["cambridge_uk/night"].frames.images, by["cambridge_uk/day"].frames.images)
    assert [s.condition for s in load_eval_slices([camvid], (24, 32), sequences=["B"])] == ["cambridge_uk/dusk"]
    assert condition_key("india", "day", "clear") == "india/day"


def _oracle_predictor(slices: list[EvalSlice]):
    """A model that outputs the CamVid ground truth as one-hot probabilities (IDD labels: the first member
    class of each group), to check the scoring arithmetic end to end."""
    table = {}
    first_member = {IDD_LEVEL1.index(g): CAMVID.index(m[0]) for g, m in CAMVID_TO_IDD_LEVEL1.groups.items()}
    for s in slices:
        for img, lab in zip(s.frames.images, s.frames.labels, strict=True):
            fine = lab if s.taxonomy is CAMVID else np.vectorize(lambda v: first_member.get(int(v), 0))(lab)
            table[img.tobytes()] = np.where(lab == s.taxonomy.void, 0, fine)

    def run(images: np.ndarray) -> np.ndarray:
        out = np.zeros((len(images), CAMVID.num_classes, *images.shape[1:3]), np.float32)
        for i, img in enumerate(images):
            ids = table[img.tobytes()]
            np.put_along_axis(out[i], ids[None].astype(np.int64), 1.0, axis=0)
        return out

    return run


def test_a_perfect_model_scores_one_everywhere_and_a_blind_one_less(tmp_path: Path) -> None:
    camvid = _folder(tmp_path / "cv", CAMVID, [("a1", "A", "day", ""), ("b1", "B", "dusk", "")], False)
    idd = _folder(tmp_path / "idd", IDD_LEVEL1, [("i1", "7", "day", "clear")], True)
    slices = load_eval_slices([camvid, idd], (24, 32))
    report = evaluate(_oracle_predictor(slices), slices, batch_size=1)
    for result in report.slices:
        assert result.miou == pytest.approx(1.0) and result.miou_common == pytest.approx(1.0), result
    blind = evaluate(lambda x: np.full((len(x), 11, 24, 32), 1 / 11, np.float32) + np.eye(11)[3][None, :, None, None],
                     slices)
    assert blind.worst.miou_common < 0.2
    assert json.dumps(blind.to_dict())  # JSON-ready (NaN -> None)


def test_starter_bundle_on_real_camvid_dusk_is_worse_than_day() -> None:
    data = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "camvid"
    if not data.exists():
        pytest.fail(f"{data} missing: the shared CamVid frames are on every machine of this project")
    predict, size = bundle_predictor(STARTER)
    slices = load_eval_slices([data], size, limit=None, sequences=["0001TP", "0006R0"])
    slices = [EvalSlice(s.condition, s.frames.subset(range(0, len(s.frames), 8)), s.taxonomy) for s in slices]
    report = evaluate(predict, slices).by_condition()
    assert report["cambridge_uk/dusk"].miou < report["cambridge_uk/day"].miou
    assert report["cambridge_uk/day"].miou > 0.25
