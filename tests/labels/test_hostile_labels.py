"""Hostile labels: bombs, lying sizes and malformed exports end as problems or dead letters, never a crash."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avminer.catalog.catalog import Catalog
from avminer.cli.main import main
from avminer.config import load_settings
from avminer.errors import LabelError
from avminer.events.records import LabelResult
from avminer.labels import bounds
from avminer.labels.brush_rle import decode_values, encode_layer
from avminer.labels.consumer import LabelApplier, LabelResultConsumer
from avminer.labels.cvat import results_from_zip
from avminer.labels.labelstudio import results_from_export
from avminer.labels.masks import InvalidLabelError, validate_mask
from avminer.sinks.kafka_topic import KafkaRecordSink
from tests.labels.test_consumer_and_oracle import FAST
from tests.labels.test_labelstudio import _mined
from tests.mining.test_hostile_decode import png_bomb
from tests.services import KafkaBroker
from tests.sinks import factories as f


def brush(width: object, height: object, rle: object = None, label: object = "Road") -> dict[str, object]:
    return {"type": "brushlabels", "original_width": width, "original_height": height,
            "value": {"format": "rle", "rle": rle if rle is not None else [0, 0, 0, 1], "brushlabels": [label]}}


def task(result: object, sample_id: object = "s0000", **extra: object) -> dict[str, object]:
    return {"id": 1, "data": {"sample_id": sample_id}, "annotations": [{"result": result}], **extra}


HOSTILE_EXPORTS: list[object] = [
    [task([brush(30000, 30000)])],  # 246 bytes declaring 900 M pixels
    [task([brush(2**40, 1)])], [task([brush(-5, 10)])], [task([brush("1e9", 10)])], [task([brush(1.5, 10)])],
    [task([brush(True, 10)])], [task([brush(48, 32, rle="abc")])], [task([brush(48, 32, rle=[1.5])])],
    [task([brush(48, 32, label=["x"])])], [task([brush(48, 32, rle=[0] * 100000)])],
    [task("not a list")], [task(["not an object"])], [task([{"type": "brushlabels", "value": "x"}])],
    [{"id": 1, "data": "not an object"}], [{"id": 1, "data": {"sample_id": ["x"]}}],
    [{"id": 1, "data": {"sample_id": "s"}, "annotations": {"a": 1}}],
    [{"id": 1, "data": {"sample_id": "s"}, "annotations": ["x"]}],
    ["a task that is a string"], [None], [42], [[1, 2]],
]


@pytest.mark.parametrize("export", HOSTILE_EXPORTS)
def test_malformed_labelstudio_exports_become_problem_lines(export: object) -> None:
    results, problems = results_from_export(export)  # type: ignore[arg-type]
    assert results == [] and len(problems) == 1 and "\n" not in problems[0]


@pytest.mark.parametrize("export", [{"tasks": []}, 3, None, {"id": 1}])
def test_an_export_that_is_not_a_list_is_a_one_line_error(export: object) -> None:
    with pytest.raises(LabelError, match="list of tasks"):
        results_from_export(export)  # type: ignore[arg-type]


def test_brush_rle_headers_cannot_declare_huge_arrays() -> None:
    rle = encode_layer(np.ones((4, 4), dtype=bool))
    rle[:4] = [255, 255, 255, 255]  # the first 32 bits are the value count
    with pytest.raises(LabelError, match="declares"):
        decode_values(rle)


def test_labelstudio_export_files_are_read_bounded(tmp_path: Path) -> None:
    for name, data in {"bad.json": b"\xff\xfe not utf-8", "trunc.json": b"[{", "deep.json": b"[" * 100000}.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(LabelError, match="cannot read the Label Studio export"):
            results_from_export(path)
    with pytest.raises(LabelError, match="not a regular file"):
        results_from_export(Path("/dev/zero"))


def rgb_png_header(width: int, height: int) -> bytes:
    """An RGB PNG declaring ``width x height`` (the IDAT is a few zero rows; the rest never arrives)."""
    return png_bomb(width, height, rows=2, rgb=True)


def cvat_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


LABELMAP = b"# label:color_rgb:parts:actions\nbackground:0,0,0::\nRoad:128,64,128::\n"


def test_cvat_zips_are_bounded_before_inflating(tmp_path: Path) -> None:
    bomb = cvat_zip(tmp_path / "bomb.zip", {"labelmap.txt": LABELMAP,
                                            "SegmentationClass/s0000.png": rgb_png_header(10000, 10000)})
    assert bomb.stat().st_size < 2000
    results, problems = results_from_zip(bomb)
    assert results == [] and len(problems) == 1 and "pixels > max_pixels" in problems[0]

    zeros = cvat_zip(tmp_path / "zeros.zip", {"labelmap.txt": LABELMAP,
                                              "SegmentationClass/s0001.png": b"\x00" * (bounds.MAX_ZIP_MEMBER_BYTES + 1)})
    assert zeros.stat().st_size < bounds.MAX_ZIP_MEMBER_BYTES // 100
    results, problems = results_from_zip(zeros)
    assert results == [] and len(problems) == 1 and "bytes" in problems[0]

    big_map = cvat_zip(tmp_path / "map.zip", {"labelmap.txt": b"#" * (bounds.MAX_ZIP_MEMBER_BYTES + 1)})
    with pytest.raises(LabelError, match="limit"):
        results_from_zip(big_map)


def test_cvat_import_refuses_what_is_not_a_zip_file(tmp_path: Path) -> None:
    for path in (Path("/dev/zero"), tmp_path):
        with pytest.raises(LabelError, match="not a regular file"):
            results_from_zip(path)
    (tmp_path / "x.zip").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(LabelError):
        results_from_zip(tmp_path / "x.zip")


def test_mask_bombs_and_hostile_mask_uris_are_refused(tmp_path: Path, sqlite_catalog: Catalog) -> None:
    store = _mined(tmp_path / "out", sqlite_catalog, n=1)
    applier = LabelApplier(sqlite_catalog, store)
    (tmp_path / "out" / "fifo.png").parent.mkdir(exist_ok=True)
    import os

    os.mkfifo(tmp_path / "out" / "fifo.png")
    cases = {
        "mask_too_large": LabelResult("s0000", "x", 1, mask_png=png_bomb(20000, 20000)),
        "mask_size_mismatch": LabelResult("s0000", "x", 1, mask_png=f.png(np.zeros((f.H, f.W + 1), np.uint8))),
    }
    for uri in ("file:///dev/zero", "file:///etc/hostname", (tmp_path / "out" / "fifo.png").as_uri(),
                "file://host/etc/passwd", "http://127.0.0.1:1/m.png"):
        cases[f"mask_unreadable {uri}"] = LabelResult("s0000", "x", 1, mask_uri=uri)
    for want, result in cases.items():
        with pytest.raises(InvalidLabelError) as info:
            applier.apply(result)
        assert info.value.reason == want.split()[0], want
    assert validate_mask(f.png(f.class_mask(0)), f.W, f.H).shape == (f.H, f.W)


def test_hostile_label_results_are_dead_lettered_once_and_committed(
    kafka: KafkaBroker, tmp_path: Path, catalog: Catalog, unique: str
) -> None:
    """A consumer restart after hostile results finds nothing to redo: no crash loop."""
    topics = {name: kafka.topic(name) for name in ("results", "dlq")}
    settings = load_settings(environ={}, overrides={
        "kafka": {"bootstrap_servers": kafka.bootstrap},
        "topics": {"label_results": topics["results"], "dead_letter": topics["dlq"]},
    })
    store = _mined(tmp_path / "out", catalog, n=2)
    sink = KafkaRecordSink(settings.kafka, topics["results"])
    hostile = [
        LabelResult("s0000", "x", 1, mask_png=png_bomb(20000, 20000)),
        LabelResult("s0000", "x", 1, mask_uri="file:///dev/zero"),
        LabelResult("s\x00000", "x", 1, mask_png=f.png(f.class_mask(0))),  # NUL: PostgreSQL text cannot hold it
        LabelResult("s0000", "lab\x00eler", 1, mask_png=f.png(f.class_mask(0))),
        LabelResult("s0001", "oracle", 1, mask_png=f.png(f.class_mask(1))),  # the one valid result
    ]
    for r in hostile:
        sink._send(r)
    sink.flush()
    sink.close()

    def run() -> object:
        consumer = LabelResultConsumer(settings, LabelApplier(catalog, store), group_id=f"labels-{unique}",
                                       consumer_overrides=FAST)
        try:
            return consumer.run(max_messages=len(hostile), idle_timeout_s=8)
        finally:
            consumer.close()

    first = run()
    assert first.ok == 1 and first.invalid == len(hostile) - 1  # type: ignore[attr-defined]
    assert first.reasons == {"mask_too_large": 1, "mask_unreadable": 1, "invalid_result": 2}  # type: ignore[attr-defined]
    again = run()
    assert again.ok == 0 and again.invalid == 0  # type: ignore[attr-defined]
    row = catalog.get_sample("s0001")
    assert row is not None and row.state == "labeled"


def test_cli_imports_print_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "export.json"
    export.write_text(json.dumps({"not": "a list"}))
    db = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["label", "--catalog", db, "import-labelstudio", str(export)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "list of tasks" in err
    assert main(["label", "--catalog", db, "import-cvat", "/dev/zero"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a regular file" in err


def test_png_helper_is_what_it_claims() -> None:
    with Image.open(io.BytesIO(rgb_png_header(300, 200))) as img:
        assert img.size == (300, 200) and img.mode == "RGB"
