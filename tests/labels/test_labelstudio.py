"""Label Studio export (checked against the documented task/prediction JSON shape) and import."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from avminer.catalog.catalog import Catalog
from avminer.cli.main import main
from avminer.labels.consumer import LabelApplier
from avminer.labels.labelstudio import ImageUrls, export_tasks, label_config, results_from_export
from avminer.labels.masks import CLASS_NAMES, decode_mask_png
from avminer.sinks.base import MinedSampleWriter
from avminer.sinks.local import LocalDecisionSink, LocalRequestSink
from avminer.storage.local import LocalFrameStore
from tests.sinks import factories as f


def _mined(out: Path, catalog: Catalog, n: int = 3) -> LocalFrameStore:
    store = LocalFrameStore(out)
    writer = MinedSampleWriter(store, LocalRequestSink(out), LocalDecisionSink(out), catalog)
    writer.write_batch([f.sample(i) for i in range(n)] + [f.sample(99, mined=False)])
    writer.close()
    return store


def check_task_shape(task: dict[str, Any], config_xml: str) -> None:
    """The documented shape: https://labelstud.io/guide/predictions and /tags/brushlabels."""
    cfg = ET.fromstring(config_xml)
    image = cfg.find("Image")
    brush = cfg.find("BrushLabels")
    assert image is not None and brush is not None
    labels = {lab.get("value") for lab in brush.findall("Label")}
    assert set(task) <= {"data", "predictions", "annotations", "meta"}
    data = task["data"]
    assert isinstance(data[str(image.get("value")).lstrip("$")], str)  # $image -> data.image
    assert all(isinstance(v, (str, int, float, bool)) for v in data.values())  # flat, sortable columns
    for pred in task["predictions"]:
        assert isinstance(pred["model_version"], str) and isinstance(pred["score"], float)
        for r in pred["result"]:
            assert r["from_name"] == brush.get("name") and r["to_name"] == image.get("name")
            assert brush.get("toName") == image.get("name")
            assert r["type"] == "brushlabels"
            assert isinstance(r["original_width"], int) and isinstance(r["original_height"], int)
            assert r["image_rotation"] == 0
            value = r["value"]
            assert value["format"] == "rle"
            assert all(isinstance(b, int) and 0 <= b <= 255 for b in value["rle"])
            assert len(value["brushlabels"]) == 1 and value["brushlabels"][0] in labels


def test_export_one_task_per_mined_frame_with_pre_annotations(tmp_path: Path, sqlite_catalog: Catalog) -> None:
    out = tmp_path / "out"
    store = _mined(out, sqlite_catalog)
    samples = sqlite_catalog.query_samples(states=["requested"])
    tasks = export_tasks(samples, store.get, ImageUrls(local_files_root=out))
    json.dumps(tasks)  # serialisable as-is
    assert len(tasks) == 3  # one per mined frame, none for the unmined one
    config = label_config()
    for task in tasks:
        check_task_shape(task, config)
        assert task["data"]["image"].startswith("/data/local-files/?d=frames/frame/")
        assert task["data"]["slice"] == "dusk/clear/cambridge_uk"
        assert {"score_mi", "score_shift"} <= set(task["data"])
    # The pre-annotation paints exactly the prediction back.
    task = next(t for t in tasks if t["data"]["sample_id"] == "s0001")
    from avminer.labels.labelstudio import mask_from_results

    painted = mask_from_results(task["predictions"][0]["result"])
    assert painted is not None and np.array_equal(painted, f.class_mask(1))


def test_import_annotations_back_into_the_catalog(tmp_path: Path, sqlite_catalog: Catalog) -> None:
    out = tmp_path / "out"
    store = _mined(out, sqlite_catalog)
    tasks = export_tasks(sqlite_catalog.query_samples(), store.get, ImageUrls())
    # What Label Studio exports after annotators accept (task 0) or repaint (task 1) the pre-annotation.
    export = []
    for tid, task in enumerate(tasks):
        result = task["predictions"][0]["result"]
        if tid == 1:
            result = [dict(r, value=dict(r["value"], brushlabels=["road"])) for r in result]
        export.append({"id": tid, "data": task["data"], "annotations": [
            {"id": 1, "completed_by": {"email": "ann@example.com"}, "was_cancelled": False,
             "updated_at": "2025-01-01T10:00:00Z", "result": result},
            {"id": 2, "completed_by": 3, "was_cancelled": True, "updated_at": "2025-01-02T10:00:00Z", "result": []},
        ]})
    export.append({"id": 9, "data": {"image": "x"}, "annotations": []})
    results, problems = results_from_export(export)
    assert len(results) == 3 and len(problems) == 1
    by_id = {r.sample_id: r for r in results}
    sid1 = tasks[1]["data"]["sample_id"]
    mask1 = decode_mask_png(by_id[sid1].mask_png)  # type: ignore[arg-type]
    expected = np.where(f.class_mask(int(sid1[1:])) == 11, 11, CLASS_NAMES.index("road"))
    assert np.array_equal(mask1, expected)
    applier = LabelApplier(sqlite_catalog, store)
    for r in results:
        applier.apply(r)
    row = sqlite_catalog.get_sample(sid1)
    assert row is not None and row.state == "labeled" and row.labeler == "labelstudio:ann@example.com#annotation-1"


def test_cli_export_writes_tasks_and_config(tmp_path: Path, sqlite_catalog: Catalog, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    _mined(out, sqlite_catalog)
    tasks_file, cfg_file = tmp_path / "tasks.json", tmp_path / "config.xml"
    rc = main(["export", "labelstudio", "--catalog", sqlite_catalog.url, "--out", str(tasks_file),
               "--config-out", str(cfg_file), "--local-files-root", str(out)])
    assert rc == 0
    tasks = json.loads(tasks_file.read_text())
    assert len(tasks) == 3
    for t in tasks:
        check_task_shape(t, cfg_file.read_text())


def test_pre_annotation_is_at_the_frames_size_not_the_engines(tmp_path: Path, sqlite_catalog: Catalog) -> None:
    """The miner stores predictions at the engine's input size; brush RLE is read at the image's size."""
    out = tmp_path / "out"
    store = LocalFrameStore(out)
    writer = MinedSampleWriter(store, LocalRequestSink(out), LocalDecisionSink(out), sqlite_catalog)
    small = f.class_mask(2, width=f.W // 2, height=f.H // 2)  # [H/2, W/2] as an engine would predict it
    writer.write_batch([dataclasses.replace(f.sample(2), prediction_png=f.png(small))])
    writer.close()
    (task,) = export_tasks(sqlite_catalog.query_samples(), store.get, ImageUrls())
    results = task["predictions"][0]["result"]
    assert {(r["original_width"], r["original_height"]) for r in results} == {(f.W, f.H)}
    from avminer.labels.labelstudio import mask_from_results

    painted = mask_from_results(results)
    assert painted is not None and np.array_equal(painted, np.repeat(np.repeat(small, 2, axis=0), 2, axis=1))
