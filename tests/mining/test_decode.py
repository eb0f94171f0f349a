"""Decoding keeps poison out: undecodable events, unknown schemas, corrupt and oversize images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from avminer.config import DecodeSettings
from avminer.events import codec
from avminer.events.records import CameraFrame, LabelResult, RadarScan
from avminer.mining import decode
from avminer.mining.decode import PoisonError, decode_event, decode_image, image_bytes
from avminer.sources.base import SourceMessage

RNG = np.random.default_rng(0)


def jpeg(h: int = 90, w: int = 120) -> bytes:
    return bytes(simplejpeg.encode_jpeg(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8), quality=85))


def frame(image: bytes | None = None, **kw: object) -> CameraFrame:
    return CameraFrame(vehicle_id="v1", camera_id="front", timestamp_us=1, frame_id="f1", width=120, height=90,
                       image=image if image is not None else jpeg(), **kw)  # type: ignore[arg-type]


def msg(value: bytes) -> SourceMessage:
    return SourceMessage(topic="frames", partition=0, offset=7, value=value)


def test_decodes_frames_and_radar_from_bytes() -> None:
    f = frame()
    assert decode_event(msg(codec.encode(f))) == f
    r = RadarScan(vehicle_id="v1", sensor_id="front", timestamp_us=5)
    assert decode_event(msg(codec.encode(r))) == r


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", decode.UNDECODABLE),
        (b"\x00garbage" * 10, decode.UNDECODABLE),
        (b"AV\x01\x07Unknown\x00\x01rest", decode.UNKNOWN_SCHEMA),
    ],
)
def test_undecodable_events_are_poison(value: bytes, reason: str) -> None:
    with pytest.raises(PoisonError) as info:
        decode_event(msg(value))
    assert info.value.reason == reason


def test_other_records_on_the_frames_topic_are_poison() -> None:
    lr = LabelResult(sample_id="s", labeler="x", labeled_at_us=1)
    with pytest.raises(PoisonError) as info:
        decode_event(msg(codec.encode(lr)))
    assert info.value.reason == decode.UNEXPECTED_RECORD


def test_jpeg_decodes_and_scales_to_the_engine_size() -> None:
    img = decode_image(jpeg(360, 480), DecodeSettings(), target_hw=(176, 240))
    assert img.shape == (176, 240, 3) and img.dtype == np.uint8
    assert decode_image(jpeg(90, 120), DecodeSettings()).shape == (90, 120, 3)


def test_png_decodes() -> None:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buf, format="PNG")
    assert decode_image(buf.getvalue(), DecodeSettings(), encoding="png").shape == (30, 40, 3)


@pytest.mark.parametrize(
    "data",
    [
        jpeg()[: len(jpeg()) // 2],  # truncated
        b"\xff\xd8\xff" + b"\x00" * 200,  # JPEG magic, garbage after
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 50,  # PNG magic, garbage after
        b"not an image at all",
    ],
)
def test_corrupt_images_are_poison(data: bytes) -> None:
    with pytest.raises(PoisonError) as info:
        decode_image(data, DecodeSettings())
    assert info.value.reason == decode.CORRUPT_IMAGE


def test_oversize_images_are_refused_before_decoding() -> None:
    data = jpeg(90, 120)
    with pytest.raises(PoisonError) as info:
        decode_image(data, DecodeSettings(max_bytes=len(data) - 1))
    assert info.value.reason == decode.OVERSIZE_IMAGE
    with pytest.raises(PoisonError) as info:
        decode_image(data, DecodeSettings(max_pixels=120 * 90 - 1))
    assert info.value.reason == decode.OVERSIZE_IMAGE
    assert "max_pixels" in str(info.value)


def test_image_uri_frames_are_fetched(tmp_path: object) -> None:
    import pathlib

    p = pathlib.Path(str(tmp_path)) / "f.jpg"
    p.write_bytes(jpeg())
    f = frame(image=None)
    f.image = None
    f.image_uri = p.as_uri()
    limits = DecodeSettings(image_roots=[str(tmp_path)])
    assert image_bytes(f, limits=limits) == p.read_bytes()
    f.image_uri = (pathlib.Path(str(tmp_path)) / "missing.jpg").as_uri()
    with pytest.raises(PoisonError) as info:
        image_bytes(f, limits=limits)
    assert info.value.reason == decode.MISSING_IMAGE
