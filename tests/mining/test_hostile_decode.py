"""Hostile camera frames: every one becomes a dead letter with a reason, none stops the decode stage."""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from avminer.config import DecodeSettings
from avminer.events import codec
from avminer.events.records import CameraFrame, Conditions, RadarScan
from avminer.mining import decode
from avminer.mining.decode import PoisonError, as_poison, decode_event, decode_image, image_bytes
from avminer.sources.base import SourceMessage

RNG = np.random.default_rng(3)


def jpeg(h: int = 90, w: int = 120) -> bytes:
    return bytes(simplejpeg.encode_jpeg(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8), quality=85))


def frame(**kw: object) -> CameraFrame:
    base = CameraFrame(vehicle_id="v1", camera_id="front", timestamp_us=1, frame_id="f1", width=120, height=90,
                       image=jpeg())
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bomb(width: int = 20000, height: int = 20000, rows: int = 64, rgb: bool = False) -> bytes:
    """A PNG whose header declares ``width x height`` grey (or RGB) pixels; the IDAT holds ``rows`` zero rows."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2 if rgb else 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * ((width * (3 if rgb else 1) + 1) * rows), 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def gif_bomb(width: int = 65535, height: int = 65535) -> bytes:
    """A GIF whose logical screen and single image declare ``width x height``."""
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, format="GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    at = data.index(b",")  # image descriptor: x, y, w, h
    data[at + 5:at + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def reason_of(fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(PoisonError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value.reason


@pytest.mark.parametrize(
    ("data", "encoding"),
    [(png_bomb(), "png"), (png_bomb(40000, 40000), "png"), (gif_bomb(), "gif"), (png_bomb(5000, 5000), "png")],
)
def test_image_bombs_are_oversize_not_corrupt(data: bytes, encoding: str) -> None:
    assert len(data) < 5000  # a few hundred bytes claim gigapixels
    assert reason_of(decode_image, data, DecodeSettings(), encoding=encoding) == decode.OVERSIZE_IMAGE


@pytest.mark.parametrize(
    ("make", "encoding"),
    [("PNG", "jpeg"), ("GIF", "png"), ("BMP", "png"), ("PNG", "tiff"), ("PNG", "no-such-codec"), ("PNG", "")],
)
def test_the_declared_encoding_must_match_the_bytes(make: str, encoding: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (120, 90)).save(buf, format=make)
    assert reason_of(decode_image, buf.getvalue(), DecodeSettings(), encoding=encoding) == decode.CORRUPT_IMAGE


def test_a_frame_must_be_the_size_it_declares() -> None:
    assert reason_of(decode_image, jpeg(90, 120), DecodeSettings(), declared_wh=(640, 480)) == decode.INVALID_FIELD
    buf = io.BytesIO()
    Image.new("RGB", (120, 90)).save(buf, format="PNG")
    assert reason_of(decode_image, buf.getvalue(), DecodeSettings(), encoding="png",
                     declared_wh=(121, 90)) == decode.INVALID_FIELD
    assert decode_image(jpeg(90, 120), DecodeSettings(), declared_wh=(120, 90)).shape == (90, 120, 3)


def msg(record: object) -> SourceMessage:
    return SourceMessage(topic="frames", partition=0, offset=1, value=codec.encode(record))


@pytest.mark.parametrize(
    "bad",
    [
        {"vehicle_id": "v\x001"}, {"camera_id": "front\x00"}, {"frame_id": "\x1b[31mforged\nline"},
        {"frame_id": ""}, {"vehicle_id": "v" * 5000}, {"encoding": "png\x00"},
        {"metadata": {"k": "v\x00"}}, {"metadata": {"k\x00": "v"}}, {"image_uri": "file:///x\x00y", "image": None},
        {"conditions": Conditions(time_of_day="day\x00")}, {"conditions": Conditions(weather="\x1b[2Jfog")},
        {"conditions": Conditions(region="r" * 65)}, {"width": 0}, {"height": -5},
    ],
)
def test_strings_no_sink_can_hold_are_invalid_fields(bad: dict[str, object]) -> None:
    assert reason_of(decode_event, msg(frame(**bad))) == decode.INVALID_FIELD


def test_radar_ids_are_checked_too() -> None:
    assert reason_of(decode_event, msg(RadarScan(vehicle_id="v\x00", sensor_id="r", timestamp_us=1))) == \
        decode.INVALID_FIELD


def uri_frame(uri: str) -> CameraFrame:
    return frame(image=None, image_uri=uri)


def test_image_uris_outside_the_allow_list_are_never_read(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    good = root / "f.jpg"
    good.write_bytes(jpeg())
    limits = DecodeSettings(image_roots=[str(root)])
    assert image_bytes(uri_frame(good.as_uri()), limits=limits) == good.read_bytes()
    (root / "link").symlink_to("/etc/hostname")
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg())
    hostile = [
        "file:///etc/hostname", "file:///dev/zero", "file:///dev/urandom", "file:///proc/self/environ",
        secret.as_uri(), (root / "link").as_uri(), f"file://{root}/../secret.jpg", "file://evil.example/etc/passwd",
        "http://127.0.0.1:1/x.jpg", "s3://bucket/key", "file:relative.jpg", "ftp://x/y", "file://" + "/a" * 3000,
    ]
    for uri in hostile:
        assert reason_of(image_bytes, uri_frame(uri), limits=limits) == decode.MISSING_IMAGE, uri
    # No roots configured: even the good file is refused.
    assert reason_of(image_bytes, uri_frame(good.as_uri()), limits=DecodeSettings()) == decode.MISSING_IMAGE


def test_devices_and_fifos_under_a_root_are_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # nobody ever writes: an open() without O_NONBLOCK would hang the stage forever
    limits = DecodeSettings(image_roots=[str(tmp_path), "/dev"])
    assert reason_of(image_bytes, uri_frame(fifo.as_uri()), limits=limits) == decode.MISSING_IMAGE
    assert reason_of(image_bytes, uri_frame("file:///dev/zero"), limits=limits) == decode.MISSING_IMAGE
    assert reason_of(image_bytes, uri_frame(tmp_path.as_uri()), limits=limits) == decode.MISSING_IMAGE  # a dir


def test_image_files_over_max_bytes_are_oversize(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + b"\x00" * 5000)
    limits = DecodeSettings(image_roots=[str(tmp_path)], max_bytes=4096)
    assert reason_of(image_bytes, uri_frame(big.as_uri()), limits=limits) == decode.OVERSIZE_IMAGE


def test_any_unforeseen_failure_becomes_poison() -> None:
    assert as_poison(MemoryError()).reason == decode.OVERSIZE_IMAGE
    assert as_poison(ZeroDivisionError("\x1b[2Jboom")).reason == decode.CORRUPT_IMAGE
    assert "\x1b" not in str(as_poison(ZeroDivisionError("\x1b[2Jboom")))
    poison = PoisonError(decode.MISSING_IMAGE, "x")
    assert as_poison(poison) is poison
