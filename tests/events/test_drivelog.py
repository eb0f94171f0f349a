"""Drive logs and their ground-truth side files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from avminer.datasets import sample_drive_path
from avminer.errors import DriveLogError
from avminer.events import schema as schemas
from avminer.events.drivelog import (
    DriveLogWriter,
    GroundTruthWriter,
    drive_log_info,
    ground_truth_classes,
    ground_truth_path,
    read_drive_log,
    read_ground_truth,
)
from avminer.events.records import CameraFrame, Conditions, GpsFix, RadarDetection, RadarScan


def _events(n: int = 10) -> list[CameraFrame | RadarScan]:
    out: list[CameraFrame | RadarScan] = []
    for i in range(n):
        vehicle = f"v{i % 3}"
        out.append(CameraFrame(vehicle, "front", 1_000_000 * i, f"f{i}", 4, 3, image=bytes([i]) * 50,
                               gps=GpsFix(52.2, 0.12), conditions=Conditions("day", "clear"), metadata={"i": str(i)}))
        out.append(RadarScan(vehicle, "front_radar", 1_000_000 * i + 2000,
                             [RadarDetection(10.0 + i, 0.1, 0.0, -3.0, 5.0)], simulated=True))
    return out


def _write(path: Path, events: list[CameraFrame | RadarScan], **kw: object) -> None:
    with DriveLogWriter(path, **kw) as log:  # type: ignore[arg-type]
        for e in events:
            log.write(e)


def test_round_trip_in_order_with_header(tmp_path: Path) -> None:
    path = tmp_path / "drive.avro"
    events = _events()
    _write(path, events, source="test", metadata={"note": "x"})
    assert list(read_drive_log(path)) == events
    info = drive_log_info(path)
    assert (info.frames, info.radar_scans, info.vehicles) == (10, 10, ["v0", "v1", "v2"])
    assert (info.drive, info.source, info.metadata["avminer.note"]) == ("drive", "test", "x")
    assert info.start_us == 0 and info.end_us == 9_002_000 and info.created.endswith("Z")
    # A standard Avro container file: any Avro reader sees DriveEvent records with real timestamps.
    with open(path, "rb") as fh:
        first: Any = next(iter(fastavro.reader(fh)))
    assert first["event"]["frame_id"] == "f0"


def test_reading_streams(tmp_path: Path) -> None:
    path = tmp_path / "drive.avro"
    _write(path, _events(200))
    it = read_drive_log(path)
    assert isinstance(next(it), CameraFrame)  # a generator: nothing read beyond what was asked
    it.close()


def test_writer_refuses_out_of_order_and_foreign_records(tmp_path: Path) -> None:
    events = _events(3)
    with pytest.raises(DriveLogError, match="time order"), DriveLogWriter(tmp_path / "a.avro") as log:
        log.write(events[2])
        log.write(events[0])
    assert not (tmp_path / "a.avro").exists()  # a failed write leaves nothing behind
    assert not list(tmp_path.iterdir())
    with pytest.raises(DriveLogError, match="not GpsFix"), DriveLogWriter(tmp_path / "b.avro") as log:
        log.write(GpsFix(1.0, 2.0))  # type: ignore[arg-type]
    with pytest.raises(DriveLogError, match="width: expected int"), DriveLogWriter(tmp_path / "c.avro") as log:
        log.write(CameraFrame("v", "c", 1, "f", "wide", 1))  # type: ignore[arg-type]


def test_unordered_writer_when_asked(tmp_path: Path) -> None:
    events = _events(3)
    _write(tmp_path / "u.avro", events[::-1], check_order=False)
    assert list(read_drive_log(tmp_path / "u.avro")) == events[::-1]


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(DriveLogError, match="does not exist"):
        list(read_drive_log(tmp_path / "nope.avro"))
    (tmp_path / "junk.avro").write_bytes(b"not avro at all")
    with pytest.raises(DriveLogError, match="not an Avro container file"):
        list(read_drive_log(tmp_path / "junk.avro"))
    other = tmp_path / "other.avro"
    with open(other, "wb") as fh:
        fastavro.writer(fh, {"type": "record", "name": "X", "fields": [{"name": "a", "type": "int"}]}, [{"a": 1}])
    with pytest.raises(DriveLogError, match="holds X records"):
        list(read_drive_log(other))
    good = tmp_path / "good.avro"
    _write(good, _events(50))
    data = good.read_bytes()
    (tmp_path / "cut.avro").write_bytes(data[: len(data) // 2])
    with pytest.raises(DriveLogError, match="corrupt"):
        list(read_drive_log(tmp_path / "cut.avro"))
    flipped = bytearray(data)
    flipped[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    (tmp_path / "flip.avro").write_bytes(bytes(flipped))
    with pytest.raises(DriveLogError):
        list(read_drive_log(tmp_path / "flip.avro"))


def test_old_logs_read_into_todays_records(tmp_path: Path) -> None:
    """A log written with CameraFrame v1 (no metadata) reads back with the default."""
    v1 = schemas.versions("CameraFrame")[1].source
    old_event = json.loads(json.dumps(schemas.current("DriveEvent").source))
    old_event["fields"][0]["type"][0] = v1
    path = tmp_path / "old.avro"
    frame = {"vehicle_id": "v", "camera_id": "front", "timestamp_us": 5, "frame_id": "f", "width": 4, "height": 3,
             "image": None, "image_uri": "s3://b/k", "encoding": "jpeg", "gps": None, "conditions": None}
    with open(path, "wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(old_event), [{"event": ("avminer.v1.CameraFrame", frame)}])
    (record,) = list(read_drive_log(path))
    assert record == CameraFrame("v", "front", 5, "f", 4, 3, image_uri="s3://b/k", metadata={})


def test_ground_truth_side_file(tmp_path: Path) -> None:
    log = tmp_path / "drive.avro"
    assert ground_truth_path(log) == tmp_path / "drive.gt.avro"
    assert ground_truth_path(tmp_path / "drive") == tmp_path / "drive.gt.avro"
    with GroundTruthWriter(ground_truth_path(log), classes=["sky", "road"], void=11, drive="drive") as gt:
        gt.write("f1", b"\x89PNG1")
        gt.write("f2", b"\x89PNG2")
        with pytest.raises(DriveLogError, match="already has a label"):
            gt.write("f1", b"again")
    assert read_ground_truth(log) == {"f1": b"\x89PNG1", "f2": b"\x89PNG2"}
    assert read_ground_truth(ground_truth_path(log)) == read_ground_truth(log)
    assert ground_truth_classes(log) == (["sky", "road"], 11)
    with pytest.raises(DriveLogError, match="no ground-truth side file"):
        read_ground_truth(tmp_path / "other.avro")
    with pytest.raises(DriveLogError, match="holds avminer.v1.GroundTruthLabel records"):
        list(read_drive_log(ground_truth_path(log)))


def test_reproducible_files(tmp_path: Path) -> None:
    marker = bytes(range(16))
    paths = [tmp_path / "a" / "drive.avro", tmp_path / "b" / "drive.avro"]
    for path in paths:
        _write(path, _events(5), created="2008-06-02T10:00:00Z", sync_marker=marker)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes().count(marker) >= 2


def test_sample_drive(sample_drive: Path) -> None:
    assert sample_drive_path() == sample_drive
    events = list(read_drive_log(sample_drive))
    frames = [e for e in events if isinstance(e, CameraFrame)]
    scans = [e for e in events if isinstance(e, RadarScan)]
    assert len(frames) == len(scans) == 48
    assert [e.timestamp_us for e in events] == sorted(e.timestamp_us for e in events)
    tod = [f.conditions.time_of_day for f in frames if f.conditions]
    assert tod.count("day") == 24 and tod.count("dusk") == 24
    assert {f.vehicle_id for f in frames} == {"camvid-0001TP", "camvid-0006R0", "camvid-0016E5"}
    assert all((f.width, f.height, f.encoding) == (480, 360, "jpeg") and f.image for f in frames)
    assert all(s.simulated for s in scans) and sum(len(s.detections) for s in scans) > 48
    labels = read_ground_truth(sample_drive)
    assert set(labels) == {f.frame_id for f in frames}
    assert all(png.startswith(b"\x89PNG") for png in labels.values())
    size = sample_drive.stat().st_size + ground_truth_path(sample_drive).stat().st_size
    assert size < 3_200_000
