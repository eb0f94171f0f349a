"""Radar projection (ground plane, as the CamVid radar simulator) and camera-radar disagreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from avminer.errors import ScoringError
from avminer.events.records import RadarDetection
from avminer.geometry import Pinhole
from avminer.scoring.radar import cell_counts, object_mask, project, radar_disagreement, radar_disagreements
from avminer.taxonomy import CAMVID

ROAD, CAR = CAMVID.classes.index("road"), CAMVID.classes.index("car")
W, H = 240, 176
CAM = Pinhole.from_fov(W, H)


def _det(u: float, depth: float, speed: float, ego: float = 0.0) -> RadarDetection:
    """A return from the road point at forward distance ``depth`` under column ``u``."""
    y = (CAM.cx - u) * depth / CAM.fx
    az = math.atan2(y, depth)
    return RadarDetection(math.hypot(depth, y), az, 0.02, speed - ego * math.cos(az), 10.0)


def _row(depth: float) -> float:
    return CAM.cy + CAM.fy * CAM.height_m / depth


def test_projection_is_the_ground_plane_pinhole() -> None:
    uv, fwd = project([_det(30.0, 20.0, 0.0), _det(200.0, 7.0, 0.0)], CAM)
    np.testing.assert_allclose(uv, [[30.0, _row(20.0)], [200.0, _row(7.0)]], atol=1e-6)
    np.testing.assert_allclose(fwd, [20.0, 7.0])
    behind, _ = project([RadarDetection(5.0, math.pi, 0.0, 0.0, 0.0)], CAM)
    assert np.isnan(behind).all()


def test_matches_the_camvid_simulator_geometry() -> None:
    from avminer import geometry

    cam = geometry.CameraModel()
    rng_m, az = cam.ground_point(300.0, 100.0, 360, 480)  # a road pixel of a 480x360 frame
    ours = Pinhole.from_fov(480, 360)
    uv, _ = project([RadarDetection(rng_m, az, 0.0, 0.0, 0.0)], ours)
    np.testing.assert_allclose(uv[0], [100.0, 300.0], atol=1e-6)


def _scene() -> np.ndarray:
    pred = np.full((H, W), ROAD, dtype=np.uint8)
    bottom = int(_row(15.0))
    pred[bottom - 30: bottom + 1, 100:160] = CAR  # one car blob standing 15 m ahead
    return pred


def test_agreement_scores_zero() -> None:
    assert radar_disagreement(_scene(), [_det(130, 15, 5.0)], (W, H), CAM) == 0.0


def test_missed_moving_object_and_ghost_blob() -> None:
    # moving return on empty road: missed object; and the car has no return: ghost
    assert radar_disagreement(_scene(), [_det(30, 10, 6.0)], (W, H), CAM) == 1.0
    # a static return on the car supports the blob; the moving one on the road is still missed
    score = radar_disagreement(_scene(), [_det(30, 10, 6.0), _det(130, 15, 0.0)], (W, H), CAM)
    assert score == pytest.approx(0.5)
    # static clutter seen from a moving vehicle is not a moving object once ego motion is removed
    empty = np.full((H, W), ROAD, np.uint8)
    assert radar_disagreement(empty, [_det(30, 10, 0.0, ego=12.0)], (W, H), CAM, ego_speed_mps=12.0) == 0.0
    assert radar_disagreement(empty, [_det(30, 10, 0.0, ego=12.0)], (W, H), CAM, ego_speed_mps=0.0) == 1.0


def test_no_radar_and_rescaling() -> None:
    assert radar_disagreement(_scene(), None, (W, H), CAM) == 0.0
    assert radar_disagreement(_scene(), [], (W, H), CAM) == 0.0
    # the camera model refers to a 2x larger native frame: projections are rescaled to pred's size
    big = Pinhole(CAM.fx * 2, CAM.fy * 2, CAM.cx * 2, CAM.cy * 2)
    assert radar_disagreement(_scene(), [_det(130, 15, 5.0)], (2 * W, 2 * H), big) == 0.0
    with pytest.raises(ScoringError):
        radar_disagreement(np.zeros((2, 3, 4)), [], (W, H), CAM)


@pytest.mark.parametrize("ids", [[8, 9, 10], [0, 3, 4, 255], [2], [], [5, 7, 9], [10, 9, 8, 8]])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_object_mask_is_membership_in_the_ids(ids: list[int], dtype: type) -> None:
    """Runs of consecutive ids are one range test (uint8: one wrapped subtraction); the result is np.isin."""
    pred = np.random.default_rng(len(ids)).integers(0, 256, (37, 53)).astype(dtype)
    mask = object_mask(pred, ids)
    assert mask.dtype == np.uint8 and mask.shape == pred.shape
    np.testing.assert_array_equal(mask, np.isin(pred, ids).astype(np.uint8))
    out = np.full(pred.shape, 7, dtype=np.uint8)  # written into a caller's array (a batch row): every byte set
    assert object_mask(pred, ids, out=out) is out
    np.testing.assert_array_equal(out, np.isin(pred, ids).astype(np.uint8))


@pytest.mark.parametrize(("h", "w", "cell"), [(360, 480, 8), (361, 487, 8), (176, 240, 8), (100, 77, 5), (7, 7, 8),
                                              (64, 64, 16), (9, 3, 8)])
def test_cell_counts_are_the_ones_per_grid_cell(h: int, w: int, cell: int) -> None:
    masks = (np.random.default_rng(h * w).random((3, h, w)) < 0.4).astype(np.uint8)
    masks[0] = 1  # full cells: 64 ones, the most an 8-bit lane may hold
    gh, gw = h // cell, w // cell
    want = masks[:, : gh * cell, : gw * cell].reshape(3, gh, cell, gw, cell).sum(axis=(2, 4))
    np.testing.assert_array_equal(cell_counts(masks, cell), want)
    np.testing.assert_array_equal(cell_counts(masks[1], cell), want[1])


def test_a_batch_scores_each_frame_as_alone() -> None:
    """radar_disagreements over frames of mixed sizes, with and without radar, equals the per-frame score."""
    rng = np.random.default_rng(5)
    preds, scans, sizes, egos = [], [], [], []
    for k in range(12):
        pred = _scene() if k % 3 else np.full((H, W), ROAD, np.uint8)
        if k % 4 == 1:
            pred = np.where(rng.random((H, W)) < 0.5, CAR, ROAD).astype(np.uint8)  # speckle: many small blobs
        if k == 5:
            pred = np.repeat(np.repeat(pred, 2, axis=0), 2, axis=1)  # another size in the same batch
        dets = [_det(float(rng.uniform(0, W)), float(rng.uniform(4, 40)), float(rng.uniform(-8, 8)), ego=3.0)
                for _ in range(int(rng.integers(0, 6)))]
        preds.append(pred)
        scans.append(None if k == 7 else dets)
        sizes.append((W, H) if k != 5 else (2 * W, 2 * H))
        egos.append(3.0 if k % 2 else 0.0)
    batch = radar_disagreements(preds, scans, sizes, None, CAMVID.classes, egos)
    alone = [radar_disagreement(p, s, size, None, CAMVID.classes, e)
             for p, s, size, e in zip(preds, scans, sizes, egos, strict=True)]
    assert batch.tolist() == alone
    assert any(0 < v < 1 for v in alone) and alone[7] == 0.0
    with pytest.raises(ScoringError):
        radar_disagreements(preds, scans[:-1], sizes, None)
