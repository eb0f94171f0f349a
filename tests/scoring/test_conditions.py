"""Condition tagging: slice keys, luminance time of day, dark-channel fog, GPS regions, geohash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from avminer.config import ScoringSettings
from avminer.errors import ScoringError
from avminer.events.records import Conditions, GpsFix
from avminer.scoring import geohash
from avminer.scoring.conditions import (
    SliceKey,
    haze_score,
    infer_time_of_day,
    infer_weather,
    region_of,
    tag,
)

CAMVID = Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid"


def test_slice_key_round_trip() -> None:
    key = SliceKey("day", "clear", "cambridge_uk")
    assert str(key) == "day/clear/cambridge_uk"
    assert SliceKey.parse(str(key)) == key
    extended = SliceKey("night", "fog", "u120", ("highway",))
    assert SliceKey.parse("night/fog/u120/highway") == extended
    with pytest.raises(ScoringError):
        SliceKey.parse("day/clear")
    with pytest.raises(ScoringError):
        SliceKey("day", "a/b", "x")


def test_geohash_known_values() -> None:
    assert geohash.encode(57.64911, 10.40744, 11) == "u4pruydqqvj"  # the example on geohash.org
    assert geohash.encode(52.2053, 0.1218, 4) == "u120"  # Cambridge, UK


@given(st.floats(-90, 90), st.floats(-180, 180), st.integers(1, 9))
def test_geohash_cell_contains_the_point(lat: float, lon: float, precision: int) -> None:
    code = geohash.encode(lat, lon, precision)
    lat0, lon0, lat1, lon1 = geohash.decode_bounds(code)
    assert len(code) == precision
    assert lat0 <= lat <= lat1 and lon0 <= lon <= lon1


def test_regions_and_geohash_fallback() -> None:
    s = ScoringSettings(regions={"cambridge_uk": [52.1, 0.0, 52.3, 0.3]}, geohash_precision=3)
    assert region_of(GpsFix(52.2, 0.12), s) == "cambridge_uk"
    assert region_of(GpsFix(48.85, 2.35), s) == geohash.encode(48.85, 2.35, 3)
    assert region_of(None, s) == "unknown"
    with pytest.raises(ScoringError, match="scoring.regions.bad"):
        region_of(GpsFix(0, 0), ScoringSettings(regions={"bad": [1.0, 2.0]}))


def _synthetic(luma: float) -> np.ndarray:
    """A smooth clear scene: blocks of colour with one channel near zero (as the dark channel prior says)."""
    rows = np.linspace(-1, 1, 90)[:, None]
    cols = np.linspace(-1, 1, 120)[None, :]
    base = np.clip(luma * (1 + 0.3 * np.sign(np.sin(6 * cols)) * np.cos(3 * rows)), 0, 255)  # [90, 120]
    img = np.stack([base * 0.1, base * 1.2, base * 1.1], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_time_of_day_and_fog_on_synthetic_images() -> None:
    assert infer_time_of_day(_synthetic(140)) == "day"
    assert infer_time_of_day(_synthetic(10)) == "night"
    noisy = np.clip(_synthetic(60) + np.random.default_rng(0).normal(0, 25, (90, 120, 3)), 0, 255).astype(np.uint8)
    assert infer_time_of_day(noisy) == "night"  # high-gain sensor noise
    haze = np.full((90, 120, 3), 200, dtype=np.uint8)
    assert infer_weather(haze) == "fog"
    assert infer_weather(_synthetic(140)) == "clear"
    assert haze_score(haze) > haze_score(_synthetic(140))


def test_metadata_wins_and_missing_fields_are_inferred() -> None:
    s = ScoringSettings()
    key = tag(Conditions(time_of_day="Dusk", weather=None, region="cambridge_uk"), _synthetic(140), None, s)
    assert str(key) == "dusk/clear/cambridge_uk"
    assert str(tag(None, None, None, s)) == "unknown/unknown/unknown"
    key = tag(None, _synthetic(140), GpsFix(52.2053, 0.1218), s)
    assert str(key) == "day/clear/u120"


def test_camvid_time_of_day() -> None:
    """Needs /work/shared/data/camvid: every frame's time of day; fog and night variants of a subset."""
    if not (CAMVID / "manifest.csv").exists():
        pytest.fail(f"{CAMVID}/manifest.csv is missing: this calibration test needs the CamVid data")
    from avminer.datasets.conditions import apply_fog, apply_night
    from avminer.datasets.layout import load_image, load_label, read_layout

    rows = read_layout(CAMVID)
    right = 0
    for i, row in enumerate(rows):
        img = load_image(row.image_path)
        right += infer_time_of_day(img) == row.time_of_day
        assert infer_weather(img) == "clear", row.frame_id
        if i % 20 == 0:  # synthetic variants of every 20th frame
            assert infer_time_of_day(apply_night(img, seed=i)) == "night", row.frame_id
            assert infer_weather(apply_fog(img, 0.05, label=load_label(row.label_path))) == "fog", row.frame_id
    assert right == len(rows), f"{right}/{len(rows)} correct"
