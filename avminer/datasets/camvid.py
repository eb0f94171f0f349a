"""CamVid layout -> drive log: frames with GPS and conditions, simulated radar, ground-truth side file.

A CamVid-layout folder holds ``manifest.csv`` (columns ``image``, ``label``, ``sequence``,
``time_of_day``; optional ``frame_id``, ``split``, ``frame_index``, ``location``), the JPEG frames and
the PNG labels (8-bit class ids, void = 11) at the paths the manifest names, relative to the folder,
and optionally ``classes.json``. Every row is used whatever its split.

How a row becomes events (:func:`write_drive`):

- one vehicle per sequence (``camvid-<sequence>``, plus ``+fog<beta>`` / ``+night`` for synthetic
  variants so their sample ids never collide with the clear frames), camera ``front``;
- time: CamVid frames are indices into 30 fps video, so ``t = frame_index / 30`` s after a base time
  that matches the time of day (day 10:00, dusk 20:15, night 22:30 UTC on 2008-06-02); vehicles of
  the same time of day drive at the same time and interleave in the log;
- GPS: a deterministic, smooth track per sequence around Cambridge, UK (start point, heading and
  speed profile drawn from a hash of the sequence name);
- conditions: time of day from the manifest (``night`` with ``--night``), weather ``fog`` when fogged
  else ``clear``, road type ``urban``, region from ``--region`` or the manifest's location;
- one simulated radar scan per frame (see :func:`simulate_radar`) within a few ms of the frame;
- the label PNG goes to the ground-truth side file ``<stem>.gt.avro``, keyed by frame id.

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

Condition models, with their parameters written into each frame's ``metadata``:

- fog (:func:`apply_fog`): Koschmieder's atmospheric scattering model as used by Foggy Cityscapes,
  ``I = J * t + A * (1 - t)``, transmittance ``t = exp(-beta * d)`` with the ground-plane depth ``d``
  above (``beta`` in 1/m; 0.02 gives a visibility of ~150 m), airlight ``A`` estimated from the
  brightest dark-channel pixels (He et al. 2009) unless given;
- night (:func:`apply_night`): sRGB -> linear (``gamma``), scene illumination scaled by
  ``illumination``, photon shot noise (Poisson, ``full_well_e`` electrons at full scale), Gaussian read
  noise (``read_noise_e``), digital gain (``exposure_gain``), back to sRGB; seeded per frame.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import json
import math
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import numpy as np

from avminer.errors import DatasetError
from avminer.events.drivelog import DriveLogWriter, GroundTruthWriter, ground_truth_path
from avminer.events.records import CameraFrame, Conditions, GpsFix, RadarDetection, RadarScan

FPS = 30.0
CAMVID_CLASSES: tuple[str, ...] = (
    "sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
)
"""The CamVid 11-class set by id (the starter bundle's classes); id 11 (:data:`CAMVID_VOID`) is void."""
CAMVID_VOID = 11
REQUIRED_COLUMNS = ("image", "label", "sequence", "time_of_day")
CAMBRIDGE_UK = (52.2053, 0.1218)
_BASE_TIME_UTC = {
    "day": datetime(2008, 6, 2, 10, 0, tzinfo=UTC),
    "dusk": datetime(2008, 6, 2, 20, 15, tzinfo=UTC),
    "night": datetime(2008, 6, 2, 22, 30, tzinfo=UTC),
}
_M_PER_DEG_LAT = 111_320.0


@dataclass(frozen=True)
class CamvidRow:
    """One row of ``manifest.csv`` with paths resolved against the dataset folder."""

    frame_id: str
    split: str
    sequence: str
    frame_index: int
    time_of_day: str
    location: str
    image_path: Path
    label_path: Path


def _trailing_int(text: str) -> int | None:
    digits = ""
    for ch in reversed(text):
        if not ch.isdigit():
            break
        digits = ch + digits
    return int(digits) if digits else None


def read_layout(directory: str | Path) -> list[CamvidRow]:
    """Read a CamVid-layout folder's ``manifest.csv`` (every row, any split).

    Missing optional columns get defaults: ``frame_id`` from the image file name, ``frame_index``
    from the trailing digits of the frame id (else the row number), ``split`` empty, ``location``
    ``cambridge_uk``.

    Raises:
        DatasetError: no manifest, missing columns, bad frame indices, missing image or label files.
    """
    root = Path(directory)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise DatasetError(f"{manifest} not found; a CamVid-layout folder needs manifest.csv "
                           f"with columns {', '.join(REQUIRED_COLUMNS)}")
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or ())
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DatasetError(f"{manifest} lacks column(s) {', '.join(missing)}; it has {', '.join(sorted(columns))}")
        raw_rows = list(reader)
    rows: list[CamvidRow] = []
    seen: set[str] = set()
    for n, raw in enumerate(raw_rows, start=2):  # line 1 is the header
        image, label = root / raw["image"], root / raw["label"]
        frame_id = raw.get("frame_id") or Path(raw["image"]).stem
        index_text = raw.get("frame_index")
        try:
            frame_index = int(index_text) if index_text else (_trailing_int(frame_id) or n - 2)
        except ValueError:
            raise DatasetError(f"{manifest}:{n}: frame_index {index_text!r} is not an integer") from None
        if frame_id in seen:
            raise DatasetError(f"{manifest}:{n}: frame_id {frame_id} appears twice")
        seen.add(frame_id)
        for kind, path in (("image", image), ("label", label)):
            if not path.is_file():
                raise DatasetError(f"{manifest}:{n}: {kind} file {path} does not exist")
        rows.append(CamvidRow(
            frame_id=frame_id, split=raw.get("split") or "", sequence=raw["sequence"], frame_index=frame_index,
            time_of_day=raw["time_of_day"], location=raw.get("location") or "cambridge_uk",
            image_path=image, label_path=label,
        ))
    if not rows:
        raise DatasetError(f"{manifest} has no rows")
    return rows


def read_classes(directory: str | Path) -> tuple[list[str], int]:
    """Class names and void id from ``classes.json``, else CamVid's 11 classes with void 11."""
    path = Path(directory) / "classes.json"
    if not path.exists():
        return list(CAMVID_CLASSES), CAMVID_VOID
    try:
        data = json.loads(path.read_text())
        return [str(c) for c in data["classes"]], int(data.get("void", CAMVID_VOID))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path} is not a valid classes file ({{'classes': [...], 'void': 11}}): {exc}") from exc


# --- images ------------------------------------------------------------------------------------------


def decode_image(data: bytes) -> np.ndarray:
    """Decode JPEG (simplejpeg) or PNG and other formats (Pillow) to uint8 RGB ``[H, W, 3]``."""
    try:
        if data[:2] == b"\xff\xd8":
            import simplejpeg

            return np.asarray(simplejpeg.decode_jpeg(data, colorspace="RGB"))
        from PIL import Image

        with Image.open(BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:  # simplejpeg ValueError, PIL.UnidentifiedImageError, OSError
        raise DatasetError(f"cannot decode image ({len(data)} bytes): {exc}") from exc


def load_image(path: str | Path) -> np.ndarray:
    """Load an image file as uint8 RGB ``[H, W, 3]``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc.strerror}") from exc
    return decode_image(data)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Encode uint8 RGB ``[H, W, 3]`` as JPEG (simplejpeg)."""
    import simplejpeg

    return bytes(simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality, colorspace="RGB"))


def decode_label(data: bytes) -> np.ndarray:
    """Decode a label PNG of class ids to uint8 ``[H, W]``."""
    from PIL import Image

    try:
        with Image.open(BytesIO(data)) as im:
            if im.mode not in ("L", "P"):
                raise DatasetError(f"label PNG has mode {im.mode}; expected 8-bit class ids (L or P)")
            return np.asarray(im)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"cannot decode label PNG ({len(data)} bytes): {exc}") from exc


def load_label(path: str | Path) -> np.ndarray:
    """Load a label PNG of class ids as uint8 ``[H, W]``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read label {path}: {exc.strerror}") from exc
    return decode_label(data)


def encode_label(label: np.ndarray) -> bytes:
    """Encode uint8 class ids ``[H, W]`` as an 8-bit grey PNG."""
    from PIL import Image

    out = BytesIO()
    Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), mode="L").save(out, format="PNG", optimize=True)
    return out.getvalue()


# --- camera geometry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraModel:
    """Pinhole camera over a flat road (see the module docstring)."""

    height_m: float = 1.2
    hfov_deg: float = 60.0
    horizon_frac: float = 0.5
    max_depth_m: float = 1000.0
    canyon_height_m: float | None = 12.0

    def focal_px(self, width: int) -> float:
        return (width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)

    def horizon_row(self, height: int) -> float:
        return self.horizon_frac * height

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
        below = row - self.horizon_row(height)
        if below <= 0.5:
            return None
        f = self.focal_px(width)
        forward = f * self.height_m / below
        lateral = forward * (width / 2.0 - col) / f  # positive to the left
        return math.hypot(forward, lateral), math.atan2(lateral, forward)

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


# --- condition models --------------------------------------------------------------------------------


def estimate_airlight(image: np.ndarray, fraction: float = 0.001) -> float:
    """Airlight A in [0, 1]: mean intensity of the pixels with the brightest dark channel (He et al. 2009).

    Clipped to [0.6, 1.0] so a dark frame still gets a plausible grey fog.
    """
    dark = np.minimum(np.minimum(image[..., 0], image[..., 1]), image[..., 2])  # [H, W] dark channel, uint8
    counts = np.bincount(dark.ravel(), minlength=256)[::-1].cumsum()  # pixels at or above each level, 255 down
    level = 255 - int(np.searchsorted(counts, max(1, int(dark.size * fraction))))
    brightest = image[dark >= level]  # [k, 3]
    return float(np.clip(brightest.mean() / 255.0, 0.6, 1.0))


def apply_fog(
    image: np.ndarray,
    beta: float,
    *,
    camera: CameraModel = DEFAULT_CAMERA,
    airlight: float | None = None,
    label: np.ndarray | None = None,
) -> np.ndarray:
    """Synthetic fog: ``I = J * t + A * (1 - t)``, ``t = exp(-beta * d)``, d from the camera model.

    Args:
        image: uint8 RGB ``[H, W, 3]`` (the clear scene J).
        beta: attenuation coefficient in 1/m (Foggy Cityscapes uses 0.005, 0.01, 0.02).
        camera: geometry for the depth d (:meth:`CameraModel.depth_map`).
        airlight: A in [0, 1]; default :func:`estimate_airlight`.
        label: optional class ids ``[H, W]`` (CamVid ids) refining the depth: objects stand on the
            ground, sky is far (:meth:`CameraModel.depth_map`).

    Returns:
        uint8 RGB ``[H, W, 3]``.
    """
    if not beta >= 0:
        raise DatasetError(f"fog beta must be >= 0 (1/m), got {beta}")
    h, w = image.shape[:2]
    a = estimate_airlight(image) if airlight is None else float(airlight)
    depth = camera.depth_map(h, w, label if label is not None and label.shape == (h, w) else None)  # [H, W]
    t = np.exp(np.float32(-beta) * depth)[:, :, None]  # [H, W, 1] transmittance
    # In 0..255 units: I = J * t + 255 A (1 - t); +0.5 rounds on the cast.
    fogged = image * t  # [H, W, 3] float32
    fogged += np.float32(255.0 * a + 0.5) - np.float32(255.0 * a) * t
    return np.clip(fogged, 0, 255, out=fogged).astype(np.uint8)


@dataclass(frozen=True)
class NightModel:
    """Parameters of :func:`apply_night` (documented in the module docstring)."""

    gamma: float = 2.2
    illumination: float = 0.06
    exposure_gain: float = 4.0
    full_well_e: float = 600.0
    read_noise_e: float = 3.0

    def metadata(self, seed: int) -> dict[str, str]:
        return {
            "night_gamma": f"{self.gamma:g}", "night_illumination": f"{self.illumination:g}",
            "night_exposure_gain": f"{self.exposure_gain:g}", "night_full_well_e": f"{self.full_well_e:g}",
            "night_read_noise_e": f"{self.read_noise_e:g}", "night_seed": str(seed),
        }


def apply_night(image: np.ndarray, *, model: NightModel = NightModel(), seed: int = 0) -> np.ndarray:
    """Synthetic low light: darker linear scene, shot and read noise, digital gain (deterministic per seed).

    Args:
        image: uint8 RGB ``[H, W, 3]``.
        model: gamma, illumination, exposure gain, full-well capacity and read noise.
        seed: noise seed (the same seed gives the same image).

    Returns:
        uint8 RGB ``[H, W, 3]``.
    """
    rng = np.random.default_rng(seed)
    # Expected photo-electrons per sRGB code value: linearise (gamma), dim, scale to the full well.
    expected = (np.arange(256, dtype=np.float64) / 255.0) ** model.gamma * model.illumination * model.full_well_e
    electrons = rng.poisson(expected[image]).astype(np.float32)  # [H, W, 3] shot noise
    electrons += rng.standard_normal(electrons.shape, dtype=np.float32) * np.float32(model.read_noise_e)
    # Digital gain, then back to sRGB through a 12-bit lookup table (a pow per pixel costs more).
    levels = 4095
    code = np.clip(electrons * np.float32(model.exposure_gain * levels / model.full_well_e), 0, levels)
    to_srgb = ((np.arange(levels + 1) / levels) ** (1.0 / model.gamma) * 255.0 + 0.5).astype(np.uint8)
    night: np.ndarray = to_srgb[code.astype(np.int32)]  # [H, W, 3] uint8
    return night


# --- radar simulation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """One 8-connected component of a class mask (pixel coordinates, bounds inclusive)."""

    area: int
    row_min: int
    row_max: int
    col_min: int
    col_max: int


def connected_blobs(mask: np.ndarray) -> list[Blob]:
    """8-connected components of a boolean mask ``[H, W]`` (run-length labelling, no scipy)."""
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

    row_start = np.searchsorted(starts_r, np.arange(h + 1)).tolist()
    sc, ec = starts_c.tolist(), ends_c.tolist()
    for r in range(1, h):
        i, i_end, j, j_end = row_start[r - 1], row_start[r], row_start[r], row_start[r + 1]
        while i < i_end and j < j_end:
            if sc[i] <= ec[j] + 1 and sc[j] <= ec[i] + 1:  # overlap or diagonal touch
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


@dataclass(frozen=True)
class RadarModel:
    """Parameters of :func:`simulate_radar`: per-class RCS (mean, sd) in dBsm and speed spread in m/s."""

    classes: tuple[tuple[int, str, float, float, float], ...] = (
        (8, "car", 10.0, 3.0, 4.0),
        (9, "pedestrian", -8.0, 2.0, 0.8),
        (10, "bicyclist", -3.0, 2.0, 2.5),
    )
    min_area_px: int = 30
    max_range_m: float = 150.0
    range_sd_m: float = 0.15
    azimuth_sd_rad: float = math.radians(0.3)
    clutter_rate: float = 6.0  # mean clutter detections per scan (Poisson)
    clutter_rcs: tuple[float, float] = (-12.0, 4.0)


def simulate_radar(
    label: np.ndarray,
    *,
    ego_speed_mps: float,
    rng: np.random.Generator,
    camera: CameraModel = DEFAULT_CAMERA,
    model: RadarModel = RadarModel(),
) -> list[RadarDetection]:
    """Radar detections from a label map: object blobs on the ground plane plus static clutter.

    Each car / pedestrian / bicyclist blob (8-connected, at least ``min_area_px``) becomes 1 detection
    (cars: up to 3, spread over the blob's width) at the ground point under its bottom row: range and
    azimuth from the pinhole ground-plane model (radar co-located with the camera, same field of
    view). Radial velocity = object speed along the line of sight (parked cars 0, else drawn per class)
    minus the ego speed projected on it; RCS drawn per class. Clutter: Poisson(``clutter_rate``) static
    returns uniform in range 3-100 m over the field of view.

    Args:
        label: uint8 class ids ``[H, W]``.
        ego_speed_mps: the vehicle's speed (static things approach at ``-v * cos(azimuth)``).
        rng: randomness (seed it per frame for reproducible scans).
        camera: shared geometry.
        model: class RCS, noise and clutter parameters.
    """
    h, w = label.shape
    out: list[RadarDetection] = []
    for class_id, name, rcs_mean, rcs_sd, speed_sd in model.classes:
        for blob in connected_blobs(label == class_id):
            if blob.area < model.min_area_px:
                continue
            moving = not (name == "car" and rng.random() < 0.5)  # about half of CamVid's cars are parked
            obj_radial = float(rng.normal(0.0, speed_sd)) if moving else 0.0
            points = 1 if name != "car" else 1 + min(2, blob.area // 3000)
            for k in range(points):
                col = blob.col_min + (blob.col_max - blob.col_min) * (k + 1) / (points + 1)
                ground = camera.ground_point(blob.row_max + 1.0, col, h, w)
                if ground is None or ground[0] > model.max_range_m:
                    continue
                rng_m, az = ground
                out.append(RadarDetection(
                    range_m=float(max(0.5, rng_m + rng.normal(0.0, model.range_sd_m))),
                    azimuth_rad=float(az + rng.normal(0.0, model.azimuth_sd_rad)),
                    elevation_rad=float(rng.normal(0.02, 0.02)),
                    radial_velocity_mps=float(obj_radial - ego_speed_mps * math.cos(az) + rng.normal(0.0, 0.1)),
                    rcs_dbsm=float(rng.normal(rcs_mean, rcs_sd)),
                ))
    half_fov = math.radians(camera.hfov_deg) / 2.0
    for _ in range(int(rng.poisson(model.clutter_rate))):
        az = float(rng.uniform(-half_fov, half_fov))
        out.append(RadarDetection(
            range_m=float(rng.uniform(3.0, 100.0)),
            azimuth_rad=az,
            elevation_rad=float(rng.normal(0.0, 0.05)),
            radial_velocity_mps=float(-ego_speed_mps * math.cos(az) + rng.normal(0.0, 0.2)),
            rcs_dbsm=float(rng.normal(*model.clutter_rcs)),
        ))
    return out


# --- time and place ------------------------------------------------------------------------------------


def _stable_seed(*parts: object) -> int:
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode())


def frame_timestamp_us(frame_index: int, time_of_day: str) -> int:
    """Capture time: the time-of-day base time plus ``frame_index / 30`` s (30 fps video indices)."""
    base = _BASE_TIME_UTC.get(time_of_day, _BASE_TIME_UTC["day"])
    return int(base.timestamp()) * 1_000_000 + round(frame_index * 1_000_000 / FPS)


def gps_track(sequence: str, frame_index: int) -> GpsFix:
    """A deterministic, smooth GPS fix for ``sequence`` at a frame: a drive around Cambridge, UK.

    The start point (within ~1 km of the centre), initial heading, turn rate and speed profile come
    from a hash of the sequence name; the position integrates speed and heading in 1 s steps.
    """
    seed = _stable_seed("gps", sequence)
    rng = np.random.default_rng(seed)
    lat0 = CAMBRIDGE_UK[0] + rng.uniform(-0.008, 0.008)
    lon0 = CAMBRIDGE_UK[1] + rng.uniform(-0.012, 0.012)
    heading0 = rng.uniform(0.0, 360.0)
    turn_amp, turn_period, phase = rng.uniform(20.0, 60.0), rng.uniform(60.0, 180.0), rng.uniform(0, 2 * math.pi)
    speed0 = rng.uniform(4.0, 8.0)
    t_end = frame_index / FPS
    t = np.arange(0.0, math.floor(t_end) + 1.0)  # [T] whole seconds up to the frame
    heading = heading0 + turn_amp * np.sin(2 * math.pi * t / turn_period + phase)  # [T] degrees
    speed = np.maximum(0.0, speed0 + 2.0 * np.sin(2 * math.pi * t / 45.0 + phase))  # [T] m/s
    north = np.concatenate([[0.0], np.cumsum(speed * np.cos(np.radians(heading)))])  # [T+1] m
    east = np.concatenate([[0.0], np.cumsum(speed * np.sin(np.radians(heading)))])
    whole = int(math.floor(t_end))
    frac = t_end - whole
    n = north[whole] + frac * (north[whole + 1] - north[whole])
    e = east[whole] + frac * (east[whole + 1] - east[whole])
    return GpsFix(
        lat=float(lat0 + n / _M_PER_DEG_LAT),
        lon=float(lon0 + e / (_M_PER_DEG_LAT * math.cos(math.radians(lat0)))),
        alt_m=float(15.0 + 3.0 * math.sin(t_end / 50.0)),
        heading_deg=float(heading[whole] % 360.0),
        speed_mps=float(speed[whole]),
    )


# --- drive building -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriveOptions:
    """Condition variants and models of :func:`write_drive`."""

    fog_beta: float | None = None
    fog_airlight: float | None = None
    night: bool = False
    region: str | None = None
    seed: int = 0
    jpeg_quality: int = 90
    camera: CameraModel = DEFAULT_CAMERA
    night_model: NightModel = NightModel()
    radar_model: RadarModel = RadarModel()

    def vehicle_id(self, sequence: str) -> str:
        suffix = (f"+fog{self.fog_beta:g}" if self.fog_beta is not None else "") + ("+night" if self.night else "")
        return f"camvid-{sequence}{suffix}"


@dataclass
class DriveSummary:
    """What :func:`write_drive` wrote."""

    path: Path
    ground_truth: Path
    frames: int = 0
    radar_scans: int = 0
    detections: int = 0
    vehicles: list[str] = field(default_factory=list)
    time_of_day: dict[str, int] = field(default_factory=dict)
    start_us: int | None = None
    end_us: int | None = None
    seconds: float = 0.0


def _frame_events(
    row: CamvidRow, options: DriveOptions, gt: GroundTruthWriter
) -> tuple[CameraFrame, RadarScan]:
    time_of_day = "night" if options.night else row.time_of_day
    ts = frame_timestamp_us(row.frame_index, time_of_day)
    gps = gps_track(row.sequence, row.frame_index)
    frame_seed = _stable_seed(options.seed, row.frame_id)
    rng = np.random.default_rng(frame_seed)
    try:
        image_bytes = row.image_path.read_bytes()
        label_png = row.label_path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read frame {row.frame_id}: {exc}") from exc
    label = decode_label(label_png)
    metadata = {
        "source": "camvid", "camvid_sequence": row.sequence, "camvid_frame_index": str(row.frame_index),
        "camvid_split": row.split, "radar_simulated": "true",
    }
    if options.fog_beta is not None or options.night:
        image = decode_image(image_bytes)
        if options.fog_beta is not None:
            airlight = estimate_airlight(image) if options.fog_airlight is None else options.fog_airlight
            image = apply_fog(image, options.fog_beta, camera=options.camera, airlight=airlight, label=label)
            metadata.update({"fog_model": "I=J*t+A*(1-t); t=exp(-beta*d); d=ground plane, objects popped up on it, sky far",
                             "fog_beta": f"{options.fog_beta:g}", "fog_airlight": f"{airlight:.3f}"})
            metadata.update(options.camera.metadata("fog_", *image.shape[:2]))
        if options.night:
            image = apply_night(image, model=options.night_model, seed=frame_seed)
            metadata.update(options.night_model.metadata(frame_seed))
        image_bytes = encode_jpeg(image, options.jpeg_quality)
        metadata["jpeg_quality"] = str(options.jpeg_quality)
        height, width = image.shape[:2]
    else:
        import simplejpeg

        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(image_bytes)
        except ValueError:  # not a JPEG: decode to learn the size
            height, width = decode_image(image_bytes).shape[:2]
    if options.region:
        metadata["region_override"] = options.region
    vehicle = options.vehicle_id(row.sequence)
    encoding = "jpeg" if image_bytes[:2] == b"\xff\xd8" else "png"
    frame = CameraFrame(
        vehicle_id=vehicle, camera_id="front", timestamp_us=ts, frame_id=row.frame_id,
        width=int(width), height=int(height), image=image_bytes, encoding=encoding, gps=gps,
        conditions=Conditions(
            time_of_day=time_of_day, weather="fog" if options.fog_beta is not None else "clear",
            road_type="urban", region=options.region or row.location,
        ),
        metadata=metadata,
    )
    detections = simulate_radar(label, ego_speed_mps=gps.speed_mps, rng=rng, camera=options.camera,
                                model=options.radar_model)
    scan = RadarScan(vehicle_id=vehicle, sensor_id="front_radar", timestamp_us=ts + int(rng.integers(-3000, 3001)),
                     detections=detections, simulated=True)
    gt.write(row.frame_id, label_png)
    return frame, scan


def _sequence_events(
    rows: Sequence[CamvidRow], options: DriveOptions, gt: GroundTruthWriter
) -> Iterator[tuple[int, int, CameraFrame | RadarScan]]:
    """(timestamp, tiebreak, record) of one sequence in time order, computed lazily."""
    for row in rows:
        frame, scan = _frame_events(row, options, gt)
        events: list[tuple[int, int, CameraFrame | RadarScan]] = [
            (frame.timestamp_us, 0, frame), (scan.timestamp_us, 1, scan)]
        yield from sorted(events, key=lambda e: (e[0], e[1]))


def select_rows(
    rows: Iterable[CamvidRow], *, sequences: Sequence[str] | None = None, limit: int | None = None,
    night: bool = False,
) -> list[CamvidRow]:
    """Rows of the chosen sequences, in time order, at most ``limit`` (the first ones of the drive)."""
    chosen = [r for r in rows if not sequences or r.sequence in sequences]
    if sequences:
        unknown = sorted(set(sequences) - {r.sequence for r in chosen})
        if unknown:
            raise DatasetError(f"unknown sequence(s) {', '.join(unknown)}")
    chosen.sort(key=lambda r: (frame_timestamp_us(r.frame_index, "night" if night else r.time_of_day), r.sequence))
    return chosen[:limit] if limit is not None else chosen


def write_drive(
    rows: Sequence[CamvidRow],
    out: str | Path,
    options: DriveOptions = DriveOptions(),
    *,
    classes: Sequence[str] = CAMVID_CLASSES,
    void: int = CAMVID_VOID,
    source: str = "camvid",
    progress: Callable[[int], None] | None = None,
    reproducible: bool = False,
) -> DriveSummary:
    """Write rows as a drive log (frames + simulated radar, in time order) and its ground-truth side file.

    Sequences are processed lazily and merged by timestamp, so memory stays at a few frames per
    sequence whatever the dataset size.

    Args:
        rows: manifest rows (any order); one vehicle per sequence.
        out: drive log path; the side file goes to :func:`ground_truth_path` of it.
        options: condition variants and models.
        classes, void: label classes for the side file's header.
        source: the log header's source entry.
        progress: called with 1 after each frame.
        reproducible: byte-identical output for identical input (header time = drive start, sync
            markers from the drive name) instead of the creation time and random markers.
    """
    started = time.perf_counter()
    out = Path(out)
    by_sequence: dict[str, list[CamvidRow]] = {}
    for row in sorted(rows, key=lambda r: r.frame_index):
        by_sequence.setdefault(row.sequence, []).append(row)
    summary = DriveSummary(path=out, ground_truth=ground_truth_path(out))
    metadata = {"fog_beta": f"{options.fog_beta:g}"} if options.fog_beta is not None else {}
    if options.night:
        metadata["night"] = "true"
    if options.region:
        metadata["region"] = options.region
    drive = out.name[: -len(".avro")] if out.name.endswith(".avro") else out.name
    created: str | None = None
    markers: tuple[bytes | None, bytes | None] = (None, None)
    if reproducible:
        first = min((frame_timestamp_us(r.frame_index, "night" if options.night else r.time_of_day) for r in rows),
                    default=0)
        created = datetime.fromtimestamp(first // 1_000_000, UTC).isoformat().replace("+00:00", "Z")
        markers = (hashlib.md5(f"log:{drive}".encode()).digest(), hashlib.md5(f"gt:{drive}".encode()).digest())
    with GroundTruthWriter(summary.ground_truth, classes=classes, void=void, drive=drive, created=created,
                           sync_marker=markers[1]) as gt, \
            DriveLogWriter(out, drive=drive, source=source, metadata=metadata, created=created,
                           sync_marker=markers[0]) as log:
        streams = [_sequence_events(seq_rows, options, gt) for seq_rows in by_sequence.values()]
        for ts, _, record in heapq.merge(*streams, key=lambda e: (e[0], e[1])):
            log.write(record)
            summary.start_us = ts if summary.start_us is None else summary.start_us
            summary.end_us = ts
            if isinstance(record, CameraFrame):
                summary.frames += 1
                tod = record.conditions.time_of_day if record.conditions else None
                summary.time_of_day[tod or "?"] = summary.time_of_day.get(tod or "?", 0) + 1
                if progress is not None:
                    progress(1)
            else:
                summary.radar_scans += 1
                summary.detections += len(record.detections)
    summary.vehicles = sorted(options.vehicle_id(s) for s in by_sequence)
    summary.seconds = time.perf_counter() - started
    return summary
