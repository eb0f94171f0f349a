"""The shared camera geometry: one projection and its inverse, components with either connectivity."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from avminer.geometry import CameraModel, Pinhole, connected_blobs


def _flood(mask: np.ndarray, diagonal: bool) -> list[tuple[int, int, int, int, int]]:
    """(area, row_min, row_max, col_min, col_max) per component, by breadth-first flood fill."""
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy or dx) and (diagonal or not (dy and dx))]
    seen = np.zeros_like(mask)
    out = []
    for r, c in zip(*np.nonzero(mask), strict=True):
        if seen[r, c]:
            continue
        seen[r, c] = True
        queue, cells = deque([(int(r), int(c))]), []
        while queue:
            y, x = queue.popleft()
            cells.append((y, x))
            for dy, dx in steps:
                ny, nx = y + dy, x + dx
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        ys, xs = zip(*cells, strict=True)
        out.append((len(cells), min(ys), max(ys), min(xs), max(xs)))
    return sorted(out)


@given(hnp.arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))), st.booleans())
@settings(max_examples=300)
def test_components_match_a_flood_fill_with_either_connectivity(mask: np.ndarray, diagonal: bool) -> None:
    blobs = connected_blobs(mask, diagonal=diagonal)
    assert sorted((b.area, b.row_min, b.row_max, b.col_min, b.col_max) for b in blobs) == _flood(mask, diagonal)


def test_diagonal_neighbours_join_only_when_asked() -> None:
    mask = np.eye(3, dtype=bool)
    assert len(connected_blobs(mask)) == 1 and len(connected_blobs(mask, diagonal=False)) == 3


@given(st.floats(190.0, 359.0), st.floats(0.0, 479.0))
def test_ground_point_and_projection_are_inverse(row: float, col: float) -> None:
    cam = CameraModel()
    point = cam.ground_point(row, col, 360, 480)
    assert point is not None
    uv, forward = cam.pinhole(360, 480).project(np.array([point[0]]), np.array([point[1]]), np.zeros(1))
    np.testing.assert_allclose(uv[0], [col, row], atol=1e-6)
    assert forward[0] > 0


def test_the_scene_camera_is_the_pinhole_at_its_resolution() -> None:
    cam = CameraModel(hfov_deg=60.0, horizon_frac=0.5)
    pin = cam.pinhole(360, 480)
    assert pin == Pinhole.from_fov(480, 360)
    assert math.isclose(cam.focal_px(480), (480 / 2) / math.tan(math.radians(30)))
    assert cam.horizon_row(360) == 180.0 and cam.ground_point(150.0, 240.0, 360, 480) is None
    assert pin.scaled(0.5, 0.5) == Pinhole.from_fov(240, 180)
