"""The event codec: round trips, the header, clear errors, and no crash on any bytes."""

from __future__ import annotations

import contextlib
import io
import os
import random
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avminer.errors import EventDecodeError, EventEncodeError
from avminer.events import codec
from avminer.events import schema as schemas
from avminer.events.records import (
    CameraFrame,
    Conditions,
    Decision,
    GpsFix,
    LabelRequest,
    RadarDetection,
    RadarScan,
)
from tests.events import strategies

FRAME = CameraFrame(
    vehicle_id="camvid-0001TP", camera_id="front", timestamp_us=1_212_436_800_000_000, frame_id="0001TP_006690",
    width=480, height=360, image=os.urandom(40_000), gps=GpsFix(52.2, 0.12, 15.0, 90.0, 6.0),
    conditions=Conditions("dusk", "clear", "urban", "cambridge_uk"), metadata={"fog_beta": "0.02"},
)
SCAN = RadarScan("camvid-0001TP", "front_radar", 1_212_436_800_001_000,
                 [RadarDetection(12.5, 0.1, 0.02, -5.0, 10.0)], simulated=True)
DECISION = Decision("abc", "0001TP_006690", "camvid-0001TP", "front", 1, "m-1", "dusk/clear/cambridge_uk",
                    True, {"mi": 0.3}, ["uncertainty"], "avminer.frames", 2, 17, 5)
SMALL: list[codec.Event] = [SCAN, DECISION]


@given(strategies.records)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_every_record_round_trips(record: object) -> None:
    data = codec.encode(record)  # type: ignore[arg-type]
    assert codec.decode(data) == record
    assert codec.decode_as(data, type(record)) == record


def test_nested_records_come_back_typed() -> None:
    frame = codec.decode_as(codec.encode(FRAME), CameraFrame)
    assert isinstance(frame.gps, GpsFix) and isinstance(frame.conditions, Conditions)
    scan = codec.decode_as(codec.encode(SCAN), RadarScan)
    assert isinstance(scan.detections[0], RadarDetection)
    assert isinstance(frame.timestamp_us, int)  # timestamp-micros read as plain integers


def test_header_layout_is_as_documented() -> None:
    data = codec.encode(FRAME)
    assert data[:3] == b"AV\x01"
    n = data[3]
    assert data[4:4 + n] == b"CameraFrame"
    assert int.from_bytes(data[4 + n:6 + n], "big") == schemas.current("CameraFrame").version == 2
    assert codec.read_header(data) == ("CameraFrame", 2, 6 + n)
    body: Any = fastavro.schemaless_reader(io.BytesIO(data[6 + n:]), schemas.current("CameraFrame").parsed, None)
    assert body["frame_id"] == FRAME.frame_id


def test_old_version_messages_decode_into_todays_record() -> None:
    old = codec.encode(FRAME, version=1)
    assert codec.read_header(old)[:2] == ("CameraFrame", 1)
    frame = codec.decode_as(old, CameraFrame)
    assert frame.metadata == {}  # v1 had no metadata: the default
    assert frame.image == FRAME.image and frame.gps == FRAME.gps


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty message"),
        (b"XY\x01\x0bCameraFrame\x00\x02", "no b'AV' magic"),
        (b"AV\x07\x0bCameraFrame\x00\x02", "unknown header format 7"),
        (b"AV", "truncated"),
        (b"AV\x01", "truncated"),
        (b"AV\x01\x0bCamera", "truncated"),
        (b"AV\x01\x00\x00\x01", "name length 0"),
        (b"AV\x01\x04Nope\x00\x01\x00", "unknown schema 'Nope'"),
        (b"AV\x01\x04a b!\x00\x01\x00", "not an identifier"),
        (b"AV\x01\x0bCameraFrame\x00\x09", "unknown version 9 of schema CameraFrame"),
        (b"AV\x01\x0bCameraFrame\x00\x00", "unknown version 0"),
    ],
)
def test_bad_headers_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(EventDecodeError, match=message):
        codec.decode(data)


def test_newer_version_asks_for_an_upgrade() -> None:
    with pytest.raises(EventDecodeError, match="upgrade avminer"):
        codec.decode(b"AV\x01\x0bCameraFrame\x00\x09" + b"\x00" * 20)


def test_truncated_and_trailing_bytes() -> None:
    data = codec.encode(FRAME)
    for cut in (17, 18, 100, len(data) // 2, len(data) - 1):
        with pytest.raises(EventDecodeError, match="truncated|corrupt"):
            codec.decode(data[:cut])
    with pytest.raises(EventDecodeError, match="trailing bytes"):
        codec.decode(data + b"\x00")


def test_wrong_record_type() -> None:
    with pytest.raises(EventDecodeError, match="expected a CameraFrame, got a RadarScan"):
        codec.decode_as(codec.encode(SCAN), CameraFrame)


def test_not_bytes_and_oversized() -> None:
    with pytest.raises(EventDecodeError, match="expected bytes"):
        codec.decode("AV")  # type: ignore[arg-type]
    with pytest.raises(EventDecodeError, match="MAX_MESSAGE_BYTES"):
        codec.decode(b"AV\x01" + bytes(codec.MAX_MESSAGE_BYTES))


def test_crafted_lengths_do_not_allocate() -> None:
    header = b"AV\x01\x09RadarScan\x00\x01"
    huge = b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01"  # zigzag varint near 2**63
    for body in (huge, b"\x02v" + huge, b"\x02v\x02s\x00" + huge, b"\x02v\x02s\x00\x01" + huge + b"\x00" * 8):
        with pytest.raises(EventDecodeError):
            codec.decode(header + body)


def test_memoryview_and_bytearray_inputs() -> None:
    data = codec.encode(SCAN)
    assert codec.decode(bytearray(data)) == SCAN
    assert codec.decode(memoryview(data)) == SCAN


def test_thousand_random_byte_strings_only_raise_decode_errors() -> None:
    rng = random.Random(1234)
    # Half purely random, half behind a valid-looking header so the Avro body parser is exercised too.
    prefixes = [b"", b"AV", b"AV\x01", codec.encode(SCAN)[:16], codec.encode(FRAME)[:17]]
    errors = 0
    for i in range(1000):
        data = rng.choice(prefixes) + rng.randbytes(rng.randint(0, 300)) if i % 2 else rng.randbytes(rng.randint(0, 64))
        with pytest.raises(EventDecodeError):
            codec.decode(data)
        errors += 1
    assert errors == 1000


@given(st.binary(max_size=400))
@settings(max_examples=500)
def test_arbitrary_bytes_decode_or_raise_event_decode_error(data: bytes) -> None:
    try:
        record = codec.decode(data)
    except EventDecodeError:
        return
    assert type(record).__name__ in schemas.RECORD_CLASSES


@given(st.sampled_from(SMALL + [FRAME]), st.data())
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_flipped_and_truncated_valid_messages(record: codec.Event, data: st.DataObject) -> None:
    message = bytearray(codec.encode(record))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(message) - 1))
        message[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(message)))
    with contextlib.suppress(EventDecodeError):
        codec.decode(bytes(message[:cut]))


def test_every_truncation_of_small_messages() -> None:
    for record in SMALL:
        data = codec.encode(record)
        for cut in range(len(data)):
            with pytest.raises(EventDecodeError):
                codec.decode(data[:cut])


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (CameraFrame("v", 1, 2, "f", 1, 1), "camera_id: expected string, got int"),  # type: ignore[arg-type]
        (CameraFrame("v", "c", 2**70, "f", 1, 1), "timestamp_us: .* outside the long range"),
        (CameraFrame("v", "c", 1, "f", 1.5, 1), "width: expected int, got float"),  # type: ignore[arg-type]
        (CameraFrame("v", "c", 1, "f", True, 1), "width: expected int, got bool"),
        (CameraFrame("v", "c", 1, "f", 1, 1, image="jpeg"), "image: "),  # type: ignore[arg-type]
        (CameraFrame("v", "c", 1, "f", 1, 1, metadata={"a": 1}), r"metadata: \['a'\]"),  # type: ignore[dict-item]
        (RadarScan("v", "s", 1, [RadarDetection(1, 2, 3, 4, "x")]),  # type: ignore[arg-type]
         r"detections: \[0\]: rcs_dbsm: expected double"),
        (LabelRequest("s", "f", "u", "v", "c", 1, "x", "m", reasons="mi"), "reasons: expected array"),  # type: ignore[arg-type]
    ],
)
def test_encode_names_the_bad_field(record: object, message: str) -> None:
    with pytest.raises(EventEncodeError, match=message):
        codec.encode(record)  # type: ignore[arg-type]


def test_encode_refuses_non_events_and_unknown_versions() -> None:
    with pytest.raises(EventEncodeError, match="not an avminer event"):
        codec.encode(GpsFix(1.0, 2.0))  # type: ignore[arg-type]
    with pytest.raises(EventEncodeError, match="no schema version 7"):
        codec.encode(FRAME, version=7)
