"""Camera-radar disagreement: radar detections projected into the image and checked against the ensemble.

Geometry (:class:`avminer.geometry.Pinhole`, the same as the radar simulator of
:mod:`avminer.datasets.radar`): a pinhole camera
``height_m`` = 1.2 m above a flat road, horizontal field of view 60 degrees, principal point (and
horizon) at the image centre, and the radar co-located with the camera, same boresight. Automotive
radars resolve elevation poorly, so by default a detection is placed **on the road**: at range ``r``
and azimuth ``az`` (positive left) it is ``x = r cos(az)`` forward and ``y = r sin(az)`` left, and
projects to ``u = cx - fx * y / x``, ``v = cy + fy * height_m / x`` — the row where the object touches
the ground (``use_elevation=True`` uses the reported elevation instead: ``v = cy - fy * z / x``).

Radial velocities include the ego motion (a static wall approaches at ``-v_ego cos(az)``); a detection
is a *moving object* when its ego-compensated radial speed ``|v_r + v_ego cos(az)|`` exceeds
``min_speed_mps`` (``v_ego`` from the frame's GPS fix).

Two kinds of disagreement count:

- **missed object**: a moving detection whose object-sized window (standing on its ground contact
  point) holds almost no object pixels (car, pedestrian, bicyclist): the ensemble sees background;
- **ghost object**: a large connected object blob with no radar return (moving or not) near its box.

The score is ``(missed + ghosts) / (moving detections + blobs)`` in [0, 1]; 0 without radar.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from avminer.errors import ScoringError
from avminer.geometry import Blob, Pinhole, connected_blobs
from avminer.scoring.inputs import RadarReturn
from avminer.taxonomy import CAMVID

OBJECT_CLASSES = ("car", "pedestrian", "bicyclist")
"""Classes radar is expected to see (moving or not)."""



def project(detections: Sequence[RadarReturn], camera: Pinhole) -> tuple[np.ndarray, np.ndarray]:
    """Project detections to pixels (:meth:`avminer.geometry.Pinhole.project`: on the road unless
    ``camera.use_elevation``; ``camera.sensor_offset_m`` is the radar's position).

    Returns:
        ``(uv [M, 2] float64, forward [M] float64)``; detections behind the camera get NaN pixels.
    """
    if not detections:
        return np.zeros((0, 2)), np.zeros(0)
    a = np.array([(d.range_m, d.azimuth_rad, d.elevation_rad) for d in detections], dtype=np.float64)  # [M, 3]
    return camera.project(a[:, 0], a[:, 1], a[:, 2])


def object_mask(pred: np.ndarray, ids: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
    """uint8 of ``pred``'s shape: 1 where ``pred`` is one of the class ``ids``, else 0.

    Args:
        out: uint8 array of ``pred``'s shape to write into (a row of a batch), else a new one.
    """
    ids = sorted(set(ids))
    runs: list[tuple[int, int]] = []  # each run of consecutive ids is one range test
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    mask = np.empty(pred.shape, dtype=np.uint8) if out is None else out
    flags = mask.view(bool)
    if not runs:
        flags[...] = False
    for k, (lo, hi) in enumerate(runs):
        if pred.dtype == np.uint8 and 0 <= lo <= hi <= 255:
            # ids below lo wrap around to large values; the difference is computed in the output's memory
            diff = np.subtract(pred, np.uint8(lo), out=mask if k == 0 else None)
            hit = np.less_equal(diff, np.uint8(hi - lo), out=flags if k == 0 else None)
        else:
            hit = np.logical_and(pred >= lo, pred <= hi, out=flags if k == 0 else None)
        if k:
            flags |= hit
    return mask


def cell_counts(mask: np.ndarray, cell: int) -> np.ndarray:
    """Ones per ``cell`` x ``cell`` grid cell of 0/1 uint8 masks ``[..., H, W]``: ``[..., H // cell, W // cell]``.

    ``cell == 8`` (the default grid) reads each row of a cell as one 64-bit word: adding a cell's 8
    words adds its bytes lane by lane (at most 8 each, no carry), and multiplying by ``0x0101...01``
    sums a word's 8 bytes into its top byte (at most 64) — 2 passes over an eighth of the elements
    instead of two byte-wise reductions (58 -> 16 µs a 480x360 frame). Other cells: rows first, then
    columns.
    """
    h, w = mask.shape[-2:]
    gh, gw = h // cell, w // cell
    lead = mask.shape[:-2]
    part = mask[..., : gh * cell, : gw * cell]
    if cell == 8 and gh and gw:
        words = part.view(np.uint64).reshape(*lead, gh, cell, gw)  # [..., gh, 8 rows, gw] 8 pixels a word
        lanes = words.sum(axis=-2, dtype=np.uint64)  # [..., gh, gw] per-byte column counts (<= 8)
        counts: np.ndarray = ((lanes * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.uint16)
        return counts
    rows = part.reshape(*lead, gh, cell, gw * cell).sum(axis=-2, dtype=np.uint16)
    return np.add.reduceat(rows, np.arange(0, gw * cell, cell), axis=-1) if gw else rows[..., :0]


def radar_disagreement(
    pred: np.ndarray,
    detections: Sequence[RadarReturn] | None,
    image_size: tuple[int, int],
    camera: Pinhole | None = None,
    classes: Sequence[str] = CAMVID.classes,
    ego_speed_mps: float = 0.0,
    min_speed_mps: float = 0.8,
    cell: int = 8,
    min_blob_cells: int = 6,
    object_width_m: float = 1.5,
    object_height_m: float = 1.6,
) -> float:
    """Disagreement between the ensemble's prediction and one radar scan, in [0, 1].

    One frame of :func:`radar_disagreements` (the scoring stage calls that once per batch).

    Args:
        pred: class ids ``[H, W]`` (argmax of the mean probabilities), at the engine's input size.
        detections: the scan's detections (None or empty: no radar, score 0).
        image_size: ``(width, height)`` of the image the camera model refers to; projections are
            rescaled to ``pred``'s size.
        camera: intrinsics at ``image_size``; None derives them from ``image_size`` (60 degree HFOV).
        classes: class names by id.
        ego_speed_mps: the vehicle's speed, to remove ego motion from radial velocities.
        min_speed_mps: ego-compensated |radial velocity| above which a detection is a moving object.
        cell: grid cell (pixels) for blob finding; blobs are connected cells that are mostly objects.
        min_blob_cells: smaller blobs are too small (far) to expect a radar return.
        object_width_m: width of the window searched for object pixels around a detection.
        object_height_m: height of that window, upwards from the ground contact point.
    """
    return float(radar_disagreements(
        [pred], [detections], [image_size], camera, classes, [ego_speed_mps], min_speed_mps=min_speed_mps,
        cell=cell, min_blob_cells=min_blob_cells, object_width_m=object_width_m, object_height_m=object_height_m,
    )[0])


def radar_disagreements(
    preds: Sequence[np.ndarray],
    detections: Sequence[Sequence[RadarReturn] | None],
    image_sizes: Sequence[tuple[int, int]],
    camera: Pinhole | None = None,
    classes: Sequence[str] = CAMVID.classes,
    ego_speeds_mps: Sequence[float] | None = None,
    *,
    min_speed_mps: float = 0.8,
    cell: int = 8,
    min_blob_cells: int = 6,
    object_width_m: float = 1.5,
    object_height_m: float = 1.6,
) -> np.ndarray:
    """:func:`radar_disagreement` of N frames at once: float64 ``[N]``, the same value for each frame.

    The per-pixel work (object mask, object pixels per grid cell) and the projection run once over
    all frames of the same size (``[N, H, W]``, all detections concatenated) rather than as a dozen
    small numpy calls per frame; only the moving detections' windows and the blobs are visited one
    by one. Arguments are per frame where :func:`radar_disagreement` takes one value.
    """
    n = len(preds)
    if len(detections) != n or len(image_sizes) != n or (ego_speeds_mps is not None and len(ego_speeds_mps) != n):
        raise ScoringError(f"radar batch sizes differ: {n} predictions, {len(detections)} scans, "
                           f"{len(image_sizes)} image sizes")
    ego = [0.0] * n if ego_speeds_mps is None else list(ego_speeds_mps)
    out = np.zeros(n, dtype=np.float64)
    ids = [i for i, name in enumerate(classes) if name in OBJECT_CLASSES]
    groups: dict[tuple[tuple[int, ...], tuple[int, int]], list[int]] = {}
    for i, pred in enumerate(preds):
        p = np.asarray(pred)
        if p.ndim != 2:
            raise ScoringError(f"pred must be [H, W] class ids, got shape {p.shape}")
        if detections[i]:  # no radar: score 0
            groups.setdefault((p.shape, tuple(image_sizes[i])), []).append(i)  # type: ignore[arg-type]
    for ((h, w), (width, height)), rows in groups.items():
        cam = (camera or Pinhole.from_fov(width, height)).scaled(w / width, h / height)
        # Radar runs on every radar-joined frame at full resolution: a few vectorised compares per pixel
        # (one for a run of consecutive object ids) instead of a table lookup, whose uint8 -> intp index
        # cast made it 6x slower at 480x360; integer counts instead of float means.
        is_obj = np.empty((len(rows), h, w), dtype=np.uint8)  # [G, H, W] 0/1
        for g, i in enumerate(rows):
            object_mask(np.asarray(preds[i]), ids, out=is_obj[g])
        dets = [d for i in rows for d in detections[i] or ()]
        per_frame = [len(detections[i] or ()) for i in rows]
        owner = np.repeat(np.arange(len(rows)), per_frame)  # [M] the frame (row of is_obj) of each detection
        uv, depth = project(dets, cam)  # [M, 2], [M]
        # a near object's ground contact can lie just below the frame: keep it, its body is in view
        inside = (np.isfinite(uv).all(axis=1) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0)
                  & (uv[:, 1] < 1.25 * h))
        radial = np.array([d.radial_velocity_mps for d in dets], dtype=np.float64)
        az = np.array([d.azimuth_rad for d in dets], dtype=np.float64)
        ego_speed = np.repeat(np.array([ego[i] for i in rows], dtype=np.float64), per_frame)  # [M]
        speed = np.abs(radial + ego_speed * np.cos(az))  # the object's own radial speed

        missed = [0] * len(rows)
        moving = np.nonzero(inside & (speed > min_speed_mps))[0]
        for j in moving:
            g = int(owner[j])
            # builtin min/max: np.clip on scalars costs ~20 µs a call
            half = int(min(max(cam.fx * object_width_m / 2.0 / max(depth[j], 0.1), 2), max(h, w) // 4))
            tall = int(min(max(cam.fy * object_height_m / max(depth[j], 0.1), 3), h // 2))
            u, v = int(uv[j, 0]), min(int(uv[j, 1]), h - 1)
            window = is_obj[g, max(0, v - tall): v + 3, max(0, u - half): u + half + 1]  # standing on (u, v)
            if window.size == 0 or np.count_nonzero(window) < 0.1 * window.size:
                missed[g] += 1
        n_moving = np.bincount(owner[moving], minlength=len(rows))

        gh, gw = h // cell, w // cell
        big: np.ndarray = np.zeros((len(rows), gh, gw), dtype=bool)
        if gh and gw:
            big = cell_counts(is_obj, cell) * 2 >= cell * cell  # [G, gh, gw] cells mostly of object pixels
        any_big = np.asarray(big.reshape(len(rows), -1).any(axis=1), dtype=bool).tolist()
        for g, i in enumerate(rows):
            blobs: list[Blob] = []
            if any_big[g]:
                blobs = [b for b in connected_blobs(big[g], diagonal=False) if b.area >= min_blob_cells]
            ghosts = 0
            pts = uv[inside & (owner == g)]  # [M', 2]
            for b in blobs:
                r0, c0 = b.row_min - 1, b.col_min - 1  # grow the box by one cell
                r1, c1 = b.row_max + 2, b.col_max + 2
                hit = ((pts[:, 0] >= c0 * cell) & (pts[:, 0] < c1 * cell) & (pts[:, 1] >= r0 * cell)
                       & (pts[:, 1] < r1 * cell))
                if not hit.any():
                    ghosts += 1
            total = int(n_moving[g]) + len(blobs)
            out[i] = 0.0 if total == 0 else float((missed[g] + ghosts) / total)
    return out
