"""Camera geometry shared by the dataset simulators and the radar check: a pinhole over a flat road.

Camera model (:class:`CameraModel`), shared by the fog depth and the radar simulation: a pinhole
camera at ``height_m`` = 1.2 m above a flat road, horizontal field of view 60 deg (focal length
``f = (W/2) / tan(30 deg)`` = 416 px at 480 px width), principal point at the image centre, and the
horizon at row ``horizon_frac * H`` = 180 of 360 (CamVid's vanishing points lie at rows ~175-200). A
pixel row ``v`` below the horizon sees the road at forward distance ``d = f * h / (v - v_h)``
(row 270 -> 5.5 m, row 200 -> 25 m, row 185 -> 100 m). Above the horizon a pure ground plane has
no answer (everything there would sit at ``max_depth_m`` = 1000 m and vanish in the fog, near
buildings included), so rows above it see a "street canyon" ceiling plane ``canyon_height_m`` = 12 m
above the camera, ``d = f * 12 / (v_h - v)`` (row 0 -> 28 m, row 100 -> 62 m, row 170 -> 500 m):
facades and trees fade with height as they recede. ``canyon_height_m=None`` gives the plain
ground-plane model (max depth above the horizon). Depths are capped at ``max_depth_m``. When the
labels are known (always, for CamVid) the fog uses them (:meth:`CameraModel.depth_map`): a pixel that
is neither road/sidewalk nor sky stands on the ground where its column meets it (photo pop-up), so a
facade or a bus has one depth from bottom to top instead of a white band at the horizon, and sky is
at ``max_depth_m``.

The projection itself (:class:`Pinhole`: intrinsics at one resolution, ground-plane or elevation
placement, a sensor offset) is shared with the radar check of :mod:`avminer.scoring.radar`, which
projects radar detections into the prediction with it.

Connected components (:func:`connected_blobs`): 8- or 4-connected components of a boolean mask by
run-length labelling (no scipy), used to turn class masks into objects (the radar simulator) and
object grids into blobs (the radar check).

Ground floor: pure numpy, imports nothing of avminer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pinhole:
    """Pinhole intrinsics at one resolution and the sensor's mount: the one projection avminer uses.

    Attributes:
        fx, fy: focal lengths in pixels.
        cx, cy: principal point in pixels (``cy`` is also the horizon row of a level camera).
        height_m: camera height above the road (ground-plane placement).
        use_elevation: :meth:`project` places points by their elevation instead of on the road.
        sensor_offset_m: position of the projected sensor (a radar) in the camera frame (forward, left,
            up), metres.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    height_m: float = 1.2
    use_elevation: bool = False
    sensor_offset_m: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def from_fov(
        cls, width: int, height: int, hfov_deg: float = 60.0, height_m: float = 1.2, horizon_frac: float = 0.5
    ) -> Pinhole:
        """Square pixels, principal point at the centre column and row ``horizon_frac * height``."""
        f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        return cls(fx=f, fy=f, cx=width / 2.0, cy=horizon_frac * height, height_m=height_m)

    def scaled(self, sx: float, sy: float) -> Pinhole:
        """The same camera at a resized resolution (``sx = new_width / old_width``)."""
        return dataclasses.replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy)

    def project(self, range_m: np.ndarray, azimuth_rad: np.ndarray, elevation_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels of points seen by the sensor at (range, azimuth positive left, elevation), ``[M]`` each.

        On the road (``z = -height_m``) unless :attr:`use_elevation`.

        Returns:
            ``(uv [M, 2] float64, forward distance [M] float64)``; points behind the camera get NaN pixels.
        """
        r, az, el = (np.asarray(v, dtype=np.float64) for v in (range_m, azimuth_rad, elevation_rad))
        ox, oy, oz = self.sensor_offset_m
        if self.use_elevation:
            x = r * np.cos(el) * np.cos(az) + ox  # forward
            y = r * np.cos(el) * np.sin(az) + oy  # left
            z = r * np.sin(el) + oz  # up
        else:
            x = r * np.cos(az) + ox
            y = r * np.sin(az) + oy
            z = np.full_like(x, -self.height_m)  # on the road
        ok = x > 0.1
        safe = np.where(ok, x, 1.0)
        uv = np.stack([self.cx - self.fx * y / safe, self.cy - self.fy * z / safe], axis=1)  # [M, 2]
        uv[~ok] = np.nan
        return uv, x

    def ground_point(self, row: float, col: float) -> tuple[float, float] | None:
        """(range m, azimuth rad, positive left) of the road point under pixel (row, col); None above the horizon.

        The inverse of :meth:`project` on the road.
        """
        below = row - self.cy
        if below <= 0.5:
            return None
        forward = self.fy * self.height_m / below
        lateral = forward * (self.cx - col) / self.fx  # positive to the left
        return math.hypot(forward, lateral), math.atan2(lateral, forward)


@dataclass(frozen=True)
class CameraModel:
    """Pinhole camera over a flat road (see the module docstring)."""

    height_m: float = 1.2
    hfov_deg: float = 60.0
    horizon_frac: float = 0.5
    max_depth_m: float = 1000.0
    canyon_height_m: float | None = 12.0

    def pinhole(self, height: int, width: int) -> Pinhole:
        """The intrinsics of this camera at ``height x width`` pixels."""
        return Pinhole.from_fov(width, height, self.hfov_deg, self.height_m, self.horizon_frac)

    def focal_px(self, width: int) -> float:
        return self.pinhole(1, width).fx

    def horizon_row(self, height: int) -> float:
        return self.pinhole(height, 1).cy

    def row_depth(self, height: int, width: int) -> np.ndarray:
        """Distance seen by each pixel row, float32 ``[H]``: road below the horizon, canyon (or max) above."""
        rows = np.arange(height, dtype=np.float64) + 0.5  # pixel centres
        offset = rows - self.horizon_row(height)  # > 0 below the horizon
        f = self.focal_px(width)
        above = self.canyon_height_m if self.canyon_height_m is not None else math.inf
        distance = np.maximum(np.abs(offset), 1e-6)  # [H] pixels from the horizon
        depth = np.where(offset > 0, f * self.height_m / distance, f * above / distance)
        depth_m: np.ndarray = np.minimum(depth, self.max_depth_m).astype(np.float32)
        return depth_m

    def depth_map(
        self,
        height: int,
        width: int,
        label: np.ndarray | None = None,
        *,
        ground_classes: Sequence[int] = (3, 4),
        sky_class: int = 0,
    ) -> np.ndarray:
        """Depth per pixel, float32 ``[H, W]``.

        Without a label map: :meth:`row_depth` for every column. With one (class ids ``[H, W]``),
        vertical things stand where they meet the ground ("photo pop-up", Hoiem et al. 2005): a pixel
        that is neither ground (road, sidewalk) nor sky takes the depth of the nearest ground pixel
        below it in its column (the row model where there is none), and sky takes ``max_depth_m``.
        """
        rows = self.row_depth(height, width)  # [H]
        depth = np.broadcast_to(rows[:, None], (height, width))  # [H, W]
        if label is None:
            return np.array(depth)
        below_horizon = (np.arange(height) + 0.5 > self.horizon_row(height))[:, None]  # [H, 1]
        is_ground = np.zeros(256, dtype=bool)
        is_ground[list(ground_classes)] = True
        ground = is_ground[label] & below_horizon  # [H, W]
        # Row of the nearest ground pixel at or below each pixel: running min from the bottom up.
        row_ids = np.where(ground, np.arange(height)[:, None], height)  # [H, W], height = none
        contact = np.minimum.accumulate(row_ids[::-1], axis=0)[::-1]  # [H, W]
        rows_ext = np.append(rows, np.float32(np.nan))  # [H+1]: index `height` -> no contact
        popped = rows_ext[contact]  # [H, W]
        out = np.where(np.isnan(popped) | ground, depth, popped)
        out = np.where(label == sky_class, np.float32(self.max_depth_m), out)
        return out.astype(np.float32)

    def ground_point(self, row: float, col: float, height: int, width: int) -> tuple[float, float] | None:
        """(range m, azimuth rad, positive left) of the road point under pixel (row, col); None above the horizon."""
        return self.pinhole(height, width).ground_point(row, col)

    def metadata(self, prefix: str, height: int, width: int) -> dict[str, str]:
        return {
            f"{prefix}camera_height_m": f"{self.height_m:g}",
            f"{prefix}hfov_deg": f"{self.hfov_deg:g}",
            f"{prefix}focal_px": f"{self.focal_px(width):.1f}",
            f"{prefix}horizon_row": f"{self.horizon_row(height):g}",
            f"{prefix}max_depth_m": f"{self.max_depth_m:g}",
            f"{prefix}canyon_height_m": "none" if self.canyon_height_m is None else f"{self.canyon_height_m:g}",
        }


DEFAULT_CAMERA = CameraModel()


@dataclass(frozen=True)
class Blob:
    """One 8-connected component of a class mask (pixel coordinates, bounds inclusive)."""

    area: int
    row_min: int
    row_max: int
    col_min: int
    col_max: int


def connected_blobs(mask: np.ndarray, *, diagonal: bool = True) -> list[Blob]:
    """Connected components of a boolean mask ``[H, W]`` (run-length labelling, no scipy).

    Args:
        mask: the pixels (or grid cells) to group.
        diagonal: 8-connected (pixels touching at a corner join); False: 4-connected.
    """
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)  # [H, W+1]: +1 where a run starts, -1 one past its end
    starts_r, starts_c = np.nonzero(step == 1)
    _, ends_c = np.nonzero(step == -1)  # row-major order: ends pair with starts
    ends_c = ends_c - 1  # inclusive
    n = len(starts_r)
    if n == 0:
        return []
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    touch = 1 if diagonal else 0
    row_start = np.searchsorted(starts_r, np.arange(h + 1)).tolist()
    sc, ec = starts_c.tolist(), ends_c.tolist()
    for r in range(1, h):
        i, i_end, j, j_end = row_start[r - 1], row_start[r], row_start[r], row_start[r + 1]
        while i < i_end and j < j_end:
            if sc[i] <= ec[j] + touch and sc[j] <= ec[i] + touch:  # overlap (or diagonal touch)
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
            if ec[i] < ec[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(i) for i in range(n)])
    labels, inverse = np.unique(roots, return_inverse=True)
    lengths = ends_c - starts_c + 1
    area = np.bincount(inverse, weights=lengths, minlength=len(labels))
    rmin = np.full(len(labels), h)
    rmax = np.full(len(labels), -1)
    cmin = np.full(len(labels), w)
    cmax = np.full(len(labels), -1)
    np.minimum.at(rmin, inverse, starts_r)
    np.maximum.at(rmax, inverse, starts_r)
    np.minimum.at(cmin, inverse, starts_c)
    np.maximum.at(cmax, inverse, ends_c)
    return [Blob(int(area[k]), int(rmin[k]), int(rmax[k]), int(cmin[k]), int(cmax[k])) for k in range(len(labels))]

