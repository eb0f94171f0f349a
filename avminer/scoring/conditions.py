"""Condition slices: which (time of day, weather, region) a frame belongs to.

Metadata wins when the vehicle sends it (a frame's conditions, :class:`~avminer.scoring.inputs.ConditionTags`); missing fields
are inferred:

- time of day from luminance statistics: the fraction of dark pixels (luma < 30) separates CamVid's
  dusk sequence 0001TP (0.38-0.66) from its day sequences (<= 0.29). Night is told by sensor noise:
  low light means high gain, and the chroma noise of :func:`avminer.datasets.conditions.apply_night`
  frames is >= 21 where clear frames have 0 (plus anything with mean luma < 25). On
  /work/shared/data/camvid (468 frames) the rule tags 468/468 correctly
  (``tests/scoring/test_conditions.py::test_camvid_time_of_day``, which needs the data); night
  variants of every frame are tagged night;
- fog/haze from the dark channel prior (He, Sun & Tang, *Single Image Haze Removal Using Dark Channel
  Prior*, CVPR 2009): in haze-free outdoor images most patches have a channel near zero, and haze
  lifts it towards the airlight. :func:`haze_score` is the median dark channel around the horizon
  over the airlight; above :data:`FOG_HAZE` is fog. Calibrated on CamVid with
  :func:`~avminer.datasets.conditions.apply_fog` (see the test for the measured rates): clear frames
  stay clear, beta >= 0.02 1/m (visibility <= 150 m) is detected in day frames and beta 0.05 in dusk
  frames; lighter fog mostly passes as clear;
- region from GPS: the first configured named region (``settings.scoring.regions``) containing the
  fix, else the geohash prefix of ``settings.scoring.geohash_precision`` characters.

Anything that cannot be known is ``"unknown"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from avminer.config import ScoringSettings
from avminer.errors import ScoringError
from avminer.scoring import geohash
from avminer.scoring.inputs import ConditionTags, Position

UNKNOWN = "unknown"

DARK_LUMA = 30.0
"""Luma (0..255) below which a pixel counts as dark."""
DUSK_DARK_FRACTION = 0.33
"""Frames with at least this fraction of dark pixels are dusk or night (CamVid: day <= 0.29, dusk >= 0.38)."""
NIGHT_MEAN_LUMA = 25.0
"""Frames darker than this (mean luma) are night whatever their noise."""
NIGHT_CHROMA_NOISE = 8.0
"""Chroma noise (:func:`chroma_noise`) above which a not-bright frame is night (clear CamVid: 0, night >= 21)."""
FOG_HAZE = 0.15
"""Haze score (:func:`haze_score`) above which a frame is tagged fog."""

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


@dataclass(frozen=True, order=True)
class SliceKey:
    """Slice of the operating domain; ``str()`` is ``"time_of_day/weather/region[/extra...]"``.

    ``extra`` holds further dimensions (road type, sensor rig, ...) appended in order, so keys with
    extras still match wildcard patterns written for the first three parts followed by ``/*``.
    """

    time_of_day: str = UNKNOWN
    weather: str = UNKNOWN
    region: str = UNKNOWN
    extra: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for part in (self.time_of_day, self.weather, self.region, *self.extra):
            if not part or "/" in part:
                raise ScoringError(f"slice key parts must be non-empty and free of '/', got {part!r}")

    def __str__(self) -> str:
        return "/".join((self.time_of_day, self.weather, self.region, *self.extra))

    @classmethod
    def parse(cls, text: str) -> SliceKey:
        """Inverse of ``str()``.

        Raises:
            ScoringError: fewer than three parts.
        """
        parts = text.split("/")
        if len(parts) < 3:
            raise ScoringError(f"slice key {text!r} must be 'time_of_day/weather/region'")
        return cls(parts[0], parts[1], parts[2], tuple(parts[3:]))


# --------------------------------------------------------------------------------------------------
# Inference from pixels
# --------------------------------------------------------------------------------------------------
def _check_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ScoringError(f"image must be uint8 [H, W, 3], got shape {img.shape}")
    return img


def luma_stats(image: np.ndarray) -> dict[str, float]:
    """Luminance statistics of an RGB image: mean, median, p90 and the dark-pixel fraction."""
    img = _check_image(image)[::2, ::2]  # every other pixel: the statistics do not need full resolution
    y = img.astype(np.float32) @ _LUMA  # [H/2, W/2]
    p50, p90 = np.percentile(y, [50, 90])
    return {"mean": float(y.mean()), "p50": float(p50), "p90": float(p90), "dark": float((y < DARK_LUMA).mean())}


def infer_time_of_day(image: np.ndarray) -> str:
    """``day``, ``dusk`` or ``night`` from luminance and sensor noise (thresholds in the module docstring)."""
    s = luma_stats(image)
    if s["mean"] < NIGHT_MEAN_LUMA or (s["mean"] < 110.0 and chroma_noise(image) > NIGHT_CHROMA_NOISE):
        return "night"
    return "day" if s["dark"] < DUSK_DARK_FRACTION else "dusk"


def dark_channel(image: np.ndarray, block: int = 4, patch: int = 7) -> np.ndarray:
    """Dark channel ``min over a patch of min over RGB`` on a ``block``-times smaller grid.

    Args:
        image: uint8 ``[H, W, 3]``.
        block: block-min downsampling factor (speed: a 480x360 frame becomes 120x90).
        patch: patch side on the downsampled grid (7 at block 4 is He et al.'s 15-ish pixels, doubled).

    Returns:
        ``[H // block, W // block]`` float32 in 0..255.
    """
    img = _check_image(image)
    m = np.minimum(np.minimum(img[..., 0], img[..., 1]), img[..., 2])  # [H, W]
    h, w = (m.shape[0] // block) * block, (m.shape[1] // block) * block
    if h == 0 or w == 0:
        small: np.ndarray = m.astype(np.float32)
        return small
    m = m[:h, :w]
    blocks = m[0::block, 0::block].copy()  # [h / block, w / block]: block minimum, one offset at a time
    for dy in range(block):
        for dx in range(block):
            np.minimum(blocks, m[dy::block, dx::block], out=blocks)
    m = blocks
    r = patch // 2
    padded = np.pad(m, r, mode="edge")  # [h + 2r, w + 2r]
    # separable min filter: the min over a square is the min over rows of the min over columns
    rows = padded[: padded.shape[0] - 2 * r].copy()
    for k in range(1, 2 * r + 1):
        np.minimum(rows, padded[k: k + rows.shape[0]], out=rows)  # [h, w + 2r]
    out = rows[:, : rows.shape[1] - 2 * r].copy()
    for k in range(1, 2 * r + 1):
        np.minimum(out, rows[:, k: k + out.shape[1]], out=out)  # [h, w]
    result: np.ndarray = out.astype(np.float32)
    return result


def _airlight(image: np.ndarray, fraction: float = 0.001) -> float:
    """Airlight estimate (0..255): mean of the pixels with the brightest dark channel (He et al. 2009)."""
    img = image[::2, ::2]  # half resolution is plenty for a mean of the brightest haze
    dark = img.min(axis=2)  # [H/2, W/2] uint8
    counts = np.bincount(dark.ravel(), minlength=256)[::-1].cumsum()  # pixels at or above each level, 255 down
    level = 255 - int(np.searchsorted(counts, max(1, int(dark.size * fraction))))
    return float(max(img[dark >= level].mean(), 1.0))


def haze_score(image: np.ndarray) -> float:
    """Haze in [0, ~1]: median dark channel of the band around the horizon, over the airlight.

    The band (rows 30-55 % of the height) holds the farthest scene points, where fog is thickest;
    dividing by the airlight makes the measure independent of exposure (dusk fog is dark fog).
    """
    img = _check_image(image)
    dc = dark_channel(img)  # [h, w]
    band = dc[int(dc.shape[0] * 0.30): max(int(dc.shape[0] * 0.55), int(dc.shape[0] * 0.30) + 1)]
    return float(np.median(band)) / _airlight(img)


def chroma_noise(image: np.ndarray) -> float:
    """Median absolute horizontal step of R - G (0..255): sensor noise at high gain, ~0 in daylight."""
    img = _check_image(image)[::2]  # every other row is plenty
    rg = img[..., 0].astype(np.int16) - img[..., 1].astype(np.int16)  # [H/2, W]
    return float(np.median(np.abs(np.diff(rg, axis=1))))


def infer_weather(image: np.ndarray) -> str:
    """``fog`` or ``clear`` from the dark channel prior (rain and snow are not inferred)."""
    return "fog" if haze_score(image) > FOG_HAZE else "clear"


# --------------------------------------------------------------------------------------------------
# Region
# --------------------------------------------------------------------------------------------------
def region_of(gps: Position | None, settings: ScoringSettings) -> str:
    """First named region containing the fix, else its geohash prefix; ``unknown`` without a fix."""
    if gps is None or not (np.isfinite(gps.lat) and np.isfinite(gps.lon)):
        return UNKNOWN
    for name, box in settings.regions.items():
        if len(box) != 4:
            raise ScoringError(
                f"scoring.regions.{name} must be [lat_min, lon_min, lat_max, lon_max], got {box!r}"
            )
        lat_min, lon_min, lat_max, lon_max = box
        if lat_min <= gps.lat <= lat_max and lon_min <= gps.lon <= lon_max:
            return name
    try:
        return geohash.encode(gps.lat, gps.lon, settings.geohash_precision)
    except ScoringError:
        return UNKNOWN


def tag(
    conditions: ConditionTags | None,
    image: np.ndarray | None,
    gps: Position | None,
    settings: ScoringSettings,
) -> SliceKey:
    """The frame's slice: metadata where present, inferred from pixels and GPS where missing.

    Args:
        conditions: the frame's condition metadata (any field may be None).
        image: decoded RGB uint8 ``[H, W, 3]`` (None: nothing inferred from pixels).
        gps: the frame's GPS fix.
        settings: ``settings.scoring`` (regions, geohash precision).
    """
    time_of_day = (conditions and conditions.time_of_day) or (infer_time_of_day(image) if image is not None else UNKNOWN)
    weather = (conditions and conditions.weather) or (infer_weather(image) if image is not None else UNKNOWN)
    region = (conditions and conditions.region) or region_of(gps, settings)
    return SliceKey(_clean(time_of_day), _clean(weather), _clean(region))


def _clean(part: str) -> str:
    """Metadata comes from vehicles: keep slice parts short, lower-case and free of '/'."""
    text = part.strip().lower().replace("/", "_")[:48]
    return text or UNKNOWN
