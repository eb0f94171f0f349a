"""CVAT: the export follows the documented "Segmentation mask 1.1" layout, and CVAT's export of the task comes
back as LabelResults (colours mapped through CVAT's own label map)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avminer.catalog.catalog import Catalog
from avminer.cli.main import main
from avminer.errors import LabelError
from avminer.labels.consumer import LabelApplier
from avminer.labels.cvat import (
    BACKGROUND,
    class_colours,
    colour_mask,
    export_task,
    labelmap_text,
    parse_labelmap,
    results_from_zip,
)
from avminer.labels.masks import CLASS_NAMES, VOID, decode_mask_png
from tests.labels.test_labelstudio import _mined
from tests.sinks import factories as f


def _png_rgb(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_export_is_a_cvat_segmentation_mask_task(tmp_path: Path, sqlite_catalog: Catalog) -> None:
    store = _mined(tmp_path / "out", sqlite_catalog)
    samples = sqlite_catalog.query_samples(states=["requested"])
    done = export_task(samples, store.get, tmp_path / "cvat")
    assert len(done.images) == done.pre_annotated == 3  # the unmined frame is not requested
    for s in samples:
        image = tmp_path / "cvat" / "images" / f"{s.sample_id}.jpg"
        assert s.frame_uri is not None and image.read_bytes() == store.get(s.frame_uri)
    with zipfile.ZipFile(tmp_path / "cvat" / "annotations.zip") as zf:
        names = set(zf.namelist())
        ids = {s.sample_id for s in samples}
        assert {"labelmap.txt", "ImageSets/Segmentation/default.txt"} <= names
        assert {n for n in names if n.startswith("SegmentationClass/")} == {f"SegmentationClass/{i}.png" for i in ids}
        assert set(zf.read("ImageSets/Segmentation/default.txt").decode().split()) == ids
        labelmap = parse_labelmap(zf.read("labelmap.txt").decode())
        assert labelmap[(0, 0, 0)] == BACKGROUND and set(labelmap.values()) == {BACKGROUND, *CLASS_NAMES}
        # Each pre-annotation is the stored prediction, coloured, at the frame's full size.
        s1 = next(s for s in samples if s.sample_id == "s0001")
        rgb = np.asarray(Image.open(io.BytesIO(zf.read("SegmentationClass/s0001.png"))).convert("RGB"))
    assert rgb.shape == (s1.height, s1.width, 3)
    assert np.array_equal(rgb, colour_mask(f.class_mask(1), class_colours()))


def test_cvat_export_imports_back_into_the_catalog(tmp_path: Path, sqlite_catalog: Catalog) -> None:
    store = _mined(tmp_path / "out", sqlite_catalog)
    # CVAT's export of the finished task: its own label colours (here: every label recoloured), a mask per
    # frame, the instance masks avminer ignores, all under a folder as some CVAT versions write it.
    cvat_colours = {name: (i * 20 + 5, 255 - i * 20, (i * 37) % 256) for i, name in enumerate(class_colours())}
    cvat_colours[BACKGROUND] = (0, 0, 0)
    painted = {"s0000": f.class_mask(0), "s0001": f.class_mask(1), "s0002": np.full((f.H, f.W), 3, np.uint8)}
    painted["s0002"][:4] = VOID  # unlabeled strip
    export = tmp_path / "task_export.zip"
    with zipfile.ZipFile(export, "w") as zf:
        zf.writestr("task/labelmap.txt", labelmap_text(cvat_colours))
        zf.writestr("task/ImageSets/Segmentation/default.txt", "".join(f"{k}\n" for k in painted))
        for sid, mask in painted.items():
            zf.writestr(f"task/SegmentationClass/{sid}.png", _png_rgb(colour_mask(mask, cvat_colours)))
            zf.writestr(f"task/SegmentationObject/{sid}.png", _png_rgb(np.zeros((f.H, f.W, 3), np.uint8)))
    results, problems = results_from_zip(export)
    assert problems == []
    assert {r.sample_id: decode_mask_png(r.mask_png).tolist() for r in results} == {  # type: ignore[arg-type]
        sid: m.tolist() for sid, m in painted.items()}
    applier = LabelApplier(sqlite_catalog, store)
    for r in results:
        applier.apply(r)
    row = sqlite_catalog.get_sample("s0002")
    assert row is not None and row.state == "labeled" and row.labeler == "cvat"


def test_bad_exports_are_refused_or_skipped_with_reasons(tmp_path: Path) -> None:
    colours = class_colours()
    mask = f.class_mask(2)
    path = tmp_path / "e.zip"
    odd = colour_mask(mask, colours)
    odd[0, 0] = (1, 2, 3)  # a colour the label map lacks
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("labelmap.txt", labelmap_text({**colours, "lamppost": (9, 9, 9)}))
        zf.writestr("SegmentationClass/good.png", _png_rgb(colour_mask(mask, colours)))
        zf.writestr("SegmentationClass/odd.png", _png_rgb(odd))
        lamp = colour_mask(mask, colours)
        lamp[1, 1] = (9, 9, 9)
        zf.writestr("SegmentationClass/lamp.png", _png_rgb(lamp))
        zf.writestr("SegmentationClass/broken.png", b"\x89PNG not really")
    results, problems = results_from_zip(path)
    assert [r.sample_id for r in results] == ["good"]
    assert len(problems) == 3
    assert any("odd.png" in p and "(1, 2, 3)" in p for p in problems)
    assert any("lamp.png" in p and "'lamppost'" in p for p in problems)
    assert any("broken.png" in p and "PNG" in p for p in problems)

    no_map = tmp_path / "n.zip"
    with zipfile.ZipFile(no_map, "w") as zf:
        zf.writestr("SegmentationClass/good.png", _png_rgb(colour_mask(mask, colours)))
    with pytest.raises(LabelError, match="labelmap.txt"):
        results_from_zip(no_map)
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(LabelError, match="cannot read the CVAT export"):
        results_from_zip(tmp_path / "x.zip")
    with pytest.raises(LabelError, match="line 2"):
        parse_labelmap("# header\nroad 1,2,3\n")


def test_cli_export_and_import(tmp_path: Path, sqlite_catalog: Catalog, capsys: pytest.CaptureFixture[str]) -> None:
    _mined(tmp_path / "out", sqlite_catalog)
    out = tmp_path / "cvat"
    assert main(["export", "cvat", "--catalog", sqlite_catalog.url, "--out", str(out)]) == 0
    assert len(list((out / "images").iterdir())) == 3
    # Accepting the pre-annotations unchanged in CVAT and exporting gives the same zip layout back.
    assert main(["label", "--catalog", sqlite_catalog.url, "import-cvat", str(out / "annotations.zip")]) == 0
    assert '"imported": 3' in capsys.readouterr().out
    assert sqlite_catalog.stats()["by_state"]["labeled"] == 3
