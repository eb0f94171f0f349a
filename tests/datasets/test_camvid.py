"""CamVid layout -> drive log: layout reading, condition models, radar simulation, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from avminer import geometry, taxonomy
from avminer.cli.main import main
from avminer.datasets import conditions, drive
from avminer.datasets import layout as camvid_layout
from avminer.datasets import radar as sim_radar
from avminer.errors import DatasetError
from avminer.events.drivelog import drive_log_info, read_drive_log, read_ground_truth
from avminer.events.records import CameraFrame, RadarScan
from tests.datasets.support import LayoutFrame, write_layout

SHARED_CAMVID = Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid"
H, W = 72, 96


def _label(car_row: int) -> np.ndarray:
    label = np.full((H, W), 3, np.uint8)  # road
    label[: H // 2] = 1  # building above the horizon
    label[:8] = 0  # sky
    label[car_row - 8:car_row, 40:60] = 8  # a car standing on the road
    return label


def _make_layout(root: Path, sequences: dict[str, tuple[str, list[int]]]) -> Path:
    rng = np.random.default_rng(0)
    return write_layout(root, [
        LayoutFrame(f"{seq}_{idx:06d}", "train", seq, idx, tod, rng.integers(0, 255, (H, W, 3), dtype=np.uint8),
                    _label(60))
        for seq, (tod, indices) in sequences.items() for idx in indices
    ])


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return _make_layout(tmp_path / "camvid", {"SEQA": ("day", [30, 60, 90]), "SEQB": ("dusk", [300, 330])})


def test_read_layout(layout: Path) -> None:
    rows = camvid_layout.read_layout(layout)
    assert [r.frame_id for r in rows] == ["SEQA_000030", "SEQA_000060", "SEQA_000090", "SEQB_000300", "SEQB_000330"]
    assert rows[0].image_path == layout / "train" / "SEQA_000030.jpg" and rows[3].time_of_day == "dusk"
    assert camvid_layout.load_image(rows[0].image_path).shape == (H, W, 3)
    assert camvid_layout.load_label(rows[0].label_path).shape == (H, W)
    assert camvid_layout.read_classes(layout) == (list(taxonomy.CAMVID.classes), 11)


def test_minimal_manifest_columns(tmp_path: Path, layout: Path) -> None:
    text = (layout / "manifest.csv").read_text().splitlines()
    header = text[0].split(",")
    keep = [header.index(c) for c in ("image", "label", "sequence", "time_of_day")]
    (layout / "manifest.csv").write_text(
        "\n".join(",".join(line.split(",")[i] for i in keep) for line in text) + "\n")
    rows = camvid_layout.read_layout(layout)
    assert rows[1].frame_id == "SEQA_000060" and rows[1].frame_index == 60 and rows[1].location == "cambridge_uk"


def test_bad_layouts_fail_clearly(tmp_path: Path, layout: Path) -> None:
    with pytest.raises(DatasetError, match="manifest.csv not found"):
        camvid_layout.read_layout(tmp_path / "empty")
    (layout / "train" / "SEQA_000060.jpg").unlink()
    with pytest.raises(DatasetError, match="image file .*SEQA_000060.jpg does not exist"):
        camvid_layout.read_layout(layout)
    (layout / "manifest.csv").write_text("image,label\nx.jpg,y.png\n")
    with pytest.raises(DatasetError, match="lacks column"):
        camvid_layout.read_layout(layout)


def test_cli_writes_frames_radar_and_ground_truth(layout: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "drive.avro"
    assert main(["dataset", "camvid", str(layout), "--out", str(out), "--no-progress"]) == 0
    assert "5 frames" in capsys.readouterr().out
    events = list(read_drive_log(out))
    frames = [e for e in events if isinstance(e, CameraFrame)]
    scans = [e for e in events if isinstance(e, RadarScan)]
    assert len(frames) == len(scans) == 5
    assert [e.timestamp_us for e in events] == sorted(e.timestamp_us for e in events)
    a = [f for f in frames if f.vehicle_id == "camvid-SEQA"]
    assert [f.timestamp_us - a[0].timestamp_us for f in a] == [0, 1_000_000, 2_000_000]  # 30 fps indices
    assert all(f.camera_id == "front" and (f.width, f.height) == (W, H) for f in frames)
    assert {f.conditions.time_of_day for f in frames if f.conditions} == {"day", "dusk"}
    assert all(f.conditions and f.conditions.weather == "clear" and f.conditions.region == "cambridge_uk"
               for f in frames)
    for f in frames:
        assert f.gps is not None and abs(f.gps.lat - 52.2) < 0.05 and abs(f.gps.lon - 0.12) < 0.08
        scan = next(s for s in scans if s.vehicle_id == f.vehicle_id and abs(s.timestamp_us - f.timestamp_us) <= 3000)
        assert scan.simulated
    assert set(read_ground_truth(out)) == {f.frame_id for f in frames}
    # The image bytes are the source JPEG, untouched, when no variant is asked for.
    assert frames[0].image == (layout / "train" / f"{frames[0].frame_id}.jpg").read_bytes()
    assert drive_log_info(out).source == f"camvid:{layout}"


def test_cli_variants_and_selection(layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "fog.avro"
    assert main(["dataset", "camvid", str(layout), "--out", str(out), "--fog", "0.02", "--night",
                 "--region", "oxford_uk", "--sequences", "SEQA", "--limit", "2", "--no-progress"]) == 0
    frames = [e for e in read_drive_log(out) if isinstance(e, CameraFrame)]
    assert [f.frame_id for f in frames] == ["SEQA_000030", "SEQA_000060"]
    f = frames[0]
    assert f.vehicle_id == "camvid-SEQA+fog0.02+night"
    assert f.conditions is not None
    assert (f.conditions.time_of_day, f.conditions.weather, f.conditions.region) == ("night", "fog", "oxford_uk")
    assert f.metadata["fog_beta"] == "0.02" and float(f.metadata["fog_airlight"]) > 0
    assert {"night_gamma", "night_seed", "fog_horizon_row", "fog_focal_px", "region_override"} <= set(f.metadata)
    assert main(["dataset", "camvid", str(layout), "--out", str(out), "--sequences", "NOPE"]) == 2


def test_fog_follows_the_scattering_model() -> None:
    black = np.zeros((H, W, 3), np.uint8)
    cam = geometry.DEFAULT_CAMERA
    fogged = conditions.apply_fog(black, 0.02, airlight=1.0)
    t = np.exp(-0.02 * cam.row_depth(H, W))  # [H]
    expected = np.round(255 * (1 - t))
    assert np.abs(fogged[:, 0, 0].astype(float) - expected).max() <= 1
    below = fogged[H // 2 + 1:, 0, 0].astype(int)
    assert np.all(np.diff(below) <= 0)  # hazier towards the horizon (farther), clearer near the car
    assert np.array_equal(conditions.apply_fog(black, 0.0, airlight=1.0), black)
    with pytest.raises(DatasetError):
        conditions.apply_fog(black, -1.0)


def test_fog_depth_pops_objects_up_from_the_ground() -> None:
    label = _label(60)
    depth = geometry.DEFAULT_CAMERA.depth_map(H, W, label)
    rows = geometry.DEFAULT_CAMERA.row_depth(H, W)
    assert np.all(depth[52:60, 50] == rows[60])  # the car stands at the depth of the road under it
    assert depth[2, 50] == geometry.DEFAULT_CAMERA.max_depth_m  # sky is far
    assert np.allclose(depth[40:, 10], rows[40:])  # road keeps the ground-plane depth


def test_night_is_darker_noisy_and_seeded() -> None:
    image = np.full((H, W, 3), 128, np.uint8)
    a, b, c = (conditions.apply_night(image, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.mean() < image.mean() and a.std() > 1


def test_radar_sees_the_car_where_the_ground_plane_says() -> None:
    rng = np.random.default_rng(0)
    model = sim_radar.RadarModel(clutter_rate=0.0, min_area_px=10)
    label = _label(60)
    detections = sim_radar.simulate_radar(label, ego_speed_mps=0.0, rng=rng, model=model)
    assert len(detections) == 1
    expected_range, expected_az = geometry.DEFAULT_CAMERA.ground_point(60.0, 40 + 19 / 2, H, W)  # type: ignore[misc]
    d = detections[0]
    assert abs(d.range_m - expected_range) < 1.0 and abs(d.azimuth_rad - expected_az) < math.radians(2)
    clutter = sim_radar.simulate_radar(np.zeros((H, W), np.uint8), ego_speed_mps=5.0,
                                    rng=np.random.default_rng(1), model=sim_radar.RadarModel(clutter_rate=50.0))
    assert len(clutter) > 20
    assert all(-0.6 < c.azimuth_rad < 0.6 and c.radial_velocity_mps < 0 for c in clutter)


def test_gps_track_is_deterministic_smooth_and_near_cambridge() -> None:
    a = [drive.gps_track("0001TP", i) for i in range(6690, 6990, 30)]
    assert a == [drive.gps_track("0001TP", i) for i in range(6690, 6990, 30)]
    for p, q in zip(a, a[1:], strict=False):
        step = math.hypot((q.lat - p.lat) * 111_320, (q.lon - p.lon) * 111_320 * math.cos(math.radians(52.2)))
        assert step <= 12.0  # one second at urban speed
    assert drive.gps_track("0006R0", 930) != drive.gps_track("0001TP", 930)


@pytest.mark.skipif(not SHARED_CAMVID.exists(), reason=f"needs the CamVid data at {SHARED_CAMVID}")
def test_shared_camvid_has_468_usable_rows() -> None:
    rows = camvid_layout.read_layout(SHARED_CAMVID)
    assert len(rows) == 468
    assert {r.sequence for r in rows} == {"0001TP", "0006R0", "0016E5"}


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CAMVID.exists(), reason=f"needs the CamVid data at {SHARED_CAMVID}")
def test_whole_shared_camvid_converts(tmp_path: Path) -> None:
    out = tmp_path / "d.avro"
    assert main(["dataset", "camvid", str(SHARED_CAMVID), "--out", str(out), "--no-progress"]) == 0
    info = drive_log_info(out)
    assert (info.frames, info.radar_scans) == (468, 468)
    assert len(read_ground_truth(out)) == 468
