"""The fleet stream builder: shares, standstills, taxonomies, a split that never leaks, determinism."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avminer.datasets.fleet import FleetSpec, build_fleet, load_index
from avminer.errors import DatasetError
from avminer.events.drivelog import ground_truth_taxonomies, read_drive_log, read_ground_truth
from avminer.events.records import CameraFrame
from avminer.taxonomy import CAMVID, IDD_LEVEL1


def make_folder(root: Path, tax, rows: list[tuple[str, str, str, str]], location: str, weather: bool = False,
                size: tuple[int, int] = (48, 64)) -> Path:
    """A small CamVid-layout folder of (sequence, frame_index, time_of_day, split) rows with random pixels."""
    root.mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"classes": list(tax.classes), "void": tax.void}))
    rng = np.random.default_rng(abs(hash(root.name)) % 2**32)
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame_id", "split", "sequence", "frame_index", "time_of_day", "location",
                    *(["weather"] if weather else []), "image", "label"])
        for seq, idx, tod, split in rows:
            fid = f"{seq}_{idx}"
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / f"{fid}.jpg")
            label = rng.integers(0, tax.num_classes, size, dtype=np.uint8)
            Image.fromarray(label).save(root / f"{fid}_label.png")
            w.writerow([fid, split, seq, idx, tod, location, *(["clear"] if weather else []),
                        f"{fid}.jpg", f"{fid}_label.png"])
    return root


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, Path]:
    day = [("D1", str(i), "day", "train") for i in range(12)] + [("D2", str(i), "day", "val") for i in range(4)]
    dusk = [("K1", str(i), "dusk", "train") for i in range(8)]
    camvid = make_folder(tmp_path / "camvid", CAMVID, day + dusk, "cambridge_uk")
    region = make_folder(tmp_path / "idd", IDD_LEVEL1,
                         [(str(s), str(i), "day", "train") for s in range(8) for i in range(3)], "india", weather=True)
    return camvid, region


SPEC = FleetSpec(frames=120, shares={"dusk": 0.1, "fog": 0.1, "night": 0.05, "new_region": 0.1}, seed=3,
                 eval_region_frames=5)


def _frames(path: Path) -> list[CameraFrame]:
    return [r for r in read_drive_log(path) if isinstance(r, CameraFrame)]


def test_shares_taxonomies_and_ground_truth(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    camvid, region = sources
    summary = build_fleet(camvid, tmp_path / "out", SPEC, region=region)
    assert summary.by_condition == {"day": 78, "dusk": 12, "fog": 12, "night": 6, "new_region": 12}
    frames = _frames(summary.stream)
    assert len(frames) == 120
    assert [f.timestamp_us for f in frames] == sorted(f.timestamp_us for f in frames)
    truth = read_ground_truth(summary.stream)
    assert set(truth) == {f.frame_id for f in frames}
    taxonomies = ground_truth_taxonomies(summary.stream)
    region_frames = {f.frame_id for f in frames if f.metadata["fleet_condition"] == "new_region"}
    assert taxonomies == {fid: IDD_LEVEL1.name for fid in region_frames}
    by_cond = {f.frame_id: f for f in frames}
    fog = [f for f in frames if f.metadata["fleet_condition"] == "fog"]
    assert {f.conditions.weather for f in fog} == {"fog"} and all("fog_beta" in f.metadata for f in fog)
    assert {f.conditions.time_of_day for f in frames if f.metadata["fleet_condition"] == "night"} == {"night"}
    assert {f.conditions.region for f in by_cond.values() if f.frame_id in region_frames} == {"india"}
    # GPS follows the region: India's frames are near Hyderabad, the rest near Cambridge.
    assert all(abs(f.gps.lat - 17.4) < 1 for f in frames if f.frame_id in region_frames)
    assert all(abs(f.gps.lat - 52.2) < 1 for f in frames if f.frame_id not in region_frames)
    assert len({(f.vehicle_id, f.camera_id) for f in frames}) > 2
    # standstills: repeated source frames with different pixels (sensor noise), the same label
    repeats = [f for f in frames if f.metadata["standstill_repeat"] == "true"]
    assert repeats
    r = repeats[0]
    first = next(f for f in frames if f.metadata["source_frame"] == r.metadata["source_frame"]
                 and f.metadata["fleet_condition"] == r.metadata["fleet_condition"])
    assert first.image != r.image and truth[first.frame_id] == truth[r.frame_id]


def test_split_never_leaks(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    camvid, region = sources
    summary = build_fleet(camvid, tmp_path / "out", SPEC, region=region)
    streamed = {f.metadata["source_frame"] for f in _frames(summary.stream)}
    for folder in summary.eval_folders:
        with open(folder / "manifest.csv", newline="") as fh:
            held = {row["frame_id"] for row in csv.DictReader(fh)}
        assert held and not held & streamed, folder
    with open(summary.base / "manifest.csv", newline="") as fh:
        base = {row["frame_id"] for row in csv.DictReader(fh)}
    assert base == {f"D1_{i}" for i in range(12)}  # the day rows outside val: what the model knows
    assert (summary.eval_folders[1] / "classes.json").exists()
    index = load_index(tmp_path / "out")
    assert index["by_condition"] == summary.by_condition and len(index["index"]) == 120


def test_deterministic_by_seed(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    camvid, region = sources

    def digest(out: Path, spec: FleetSpec) -> str:
        build_fleet(camvid, out, spec, region=region)
        h = hashlib.sha256()
        for f in _frames(out / "stream.avro"):
            h.update(f.frame_id.encode() + f.vehicle_id.encode() + f.image)
        return h.hexdigest()

    a = digest(tmp_path / "a", SPEC)
    assert a == digest(tmp_path / "b", SPEC)
    from dataclasses import replace

    assert a != digest(tmp_path / "c", replace(SPEC, seed=4))


def test_bad_specs_name_the_field(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    camvid, _ = sources
    with pytest.raises(DatasetError, match="shares: unknown"):
        FleetSpec(shares={"rain": 0.1}).validate()
    with pytest.raises(DatasetError, match="shares"):
        FleetSpec(shares={"dusk": 0.6, "fog": 0.5}).validate()
    with pytest.raises(DatasetError, match="new_region.*--region"):
        build_fleet(camvid, tmp_path / "x", SPEC)  # a new-region share but no region folder
