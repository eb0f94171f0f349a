"""The .avsc files: documented, matching the records, and evolving by the rules in schemas/README.md."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import types
import typing
from pathlib import Path
from typing import Any

import fastavro
import pytest

from avminer.events import codec, records
from avminer.events import schema as schemas

REPO = Path(__file__).resolve().parents[2]
NESTED = {"GpsFix": records.GpsFix, "Conditions": records.Conditions, "RadarDetection": records.RadarDetection}
PRIMITIVE = {str: "string", int: {"int", "long"}, float: "double", bool: "boolean", bytes: "bytes"}


def test_package_finds_the_repo_schemas() -> None:
    assert schemas.SCHEMA_DIR.resolve() == (REPO / "schemas").resolve()
    names = {p.stem for p in (REPO / "schemas").glob("*.avsc")}
    assert set(schemas.schema_names()) == names
    assert {"CameraFrame", "RadarScan", "LabelRequest", "LabelResult", "ModelRelease", "Decision"} <= names


@pytest.mark.parametrize("name", schemas.schema_names())
def test_every_field_is_documented_in_namespace_v1(name: str) -> None:
    src = json.loads((REPO / "schemas" / f"{name}.avsc").read_text())
    assert src["namespace"] == "avminer.v1" and src["doc"] and isinstance(src["version"], int)
    for rec_name, f in schemas.iter_record_fields(schemas.current(name).source):
        assert f.get("doc"), f"{rec_name}.{f['name']} has no doc"


def test_timestamps_are_timestamp_micros() -> None:
    for name in schemas.RECORD_CLASSES:
        for _, f in schemas.iter_record_fields(schemas.current(name).source):
            if f["name"].endswith("_us"):
                assert f["type"] == {"type": "long", "logicalType": "timestamp-micros"}, f["name"]


def _avro_matches(tp: Any, avro: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return isinstance(avro, list) and avro[0] == "null" and len(avro) == 2 and _avro_matches(inner[0], avro[1])
    if origin is list:
        return isinstance(avro, dict) and avro["type"] == "array" and _avro_matches(args[0], avro["items"])
    if origin is dict:
        return isinstance(avro, dict) and avro["type"] == "map" and _avro_matches(args[1], avro["values"])
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return isinstance(avro, dict) and avro["type"] == "record" and avro["name"] == tp.__name__
    if isinstance(avro, dict) and "logicalType" in avro:
        avro = avro["type"]
    expected = PRIMITIVE[tp]
    return avro in expected if isinstance(expected, set) else avro == expected


def _check_record(cls: type, avro: dict[str, Any]) -> None:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    assert [f.name for f in fields] == [f["name"] for f in avro["fields"]], cls.__name__
    for f, af in zip(fields, avro["fields"], strict=True):
        assert _avro_matches(hints[f.name], af["type"]), f"{cls.__name__}.{f.name}: {af['type']}"
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        assert has_default == ("default" in af), f"{cls.__name__}.{f.name}: default mismatch"
        if f.default is not dataclasses.MISSING:
            assert af["default"] == f.default, f"{cls.__name__}.{f.name}"
        if isinstance(af["type"], list):
            branch = af["type"][1]
            if isinstance(branch, dict) and branch.get("type") == "record":
                _check_record(NESTED[branch["name"]], branch)
        elif isinstance(af["type"], dict) and af["type"].get("type") == "array":
            items = af["type"]["items"]
            if isinstance(items, dict):
                _check_record(NESTED[items["name"]], items)


@pytest.mark.parametrize("cls", records.RECORD_TYPES, ids=lambda c: c.__name__)
def test_schema_matches_record_field_for_field(cls: type) -> None:
    _check_record(cls, schemas.current(cls.__name__).source)


@pytest.mark.parametrize("name", schemas.RECORD_CLASSES)
def test_every_frozen_version_evolves_by_the_rules(name: str) -> None:
    ordered = [schemas.versions(name)[v] for v in sorted(schemas.versions(name))]
    for old, new in zip(ordered, ordered[1:], strict=False):
        assert schemas.compatibility_problems(old.source, new.source) == [], f"{name} v{old.version}->v{new.version}"


def test_camera_frame_has_a_frozen_v1() -> None:
    assert sorted(schemas.versions("CameraFrame")) == [1, 2]
    v1 = schemas.versions("CameraFrame")[1].source
    assert "metadata" not in {f["name"] for f in v1["fields"]}


def test_the_rule_checker_catches_breaking_changes() -> None:
    base = schemas.current("CameraFrame").source
    bumped = copy.deepcopy(base)
    bumped["version"] += 1
    no_default = copy.deepcopy(bumped)
    no_default["fields"].append({"name": "lens", "type": "string", "doc": "x"})
    removed = copy.deepcopy(bumped)
    removed["fields"] = [f for f in removed["fields"] if f["name"] != "width"]
    retyped = copy.deepcopy(bumped)
    next(f for f in retyped["fields"] if f["name"] == "width")["type"] = "long"
    nested = copy.deepcopy(bumped)
    gps = next(f for f in nested["fields"] if f["name"] == "gps")["type"][1]
    gps["fields"].append({"name": "hdop", "type": "double", "doc": "x"})
    assert schemas.compatibility_problems(base, bumped) == []
    assert schemas.compatibility_problems(base, base) == ["version must grow: 2 -> 2"]
    assert schemas.compatibility_problems(base, no_default) == ["CameraFrame.lens was added without a default"]
    assert schemas.compatibility_problems(base, removed) == ["CameraFrame.width was removed but has no default"]
    assert schemas.compatibility_problems(base, retyped) == ["CameraFrame.width changed type"]
    assert schemas.compatibility_problems(base, nested) == ["GpsFix.hdop was added without a default"]


def _v1_v2() -> tuple[Any, Any]:
    versions = schemas.versions("CameraFrame")
    return fastavro.parse_schema(versions[1].source), fastavro.parse_schema(versions[2].source)


NEW_RECORD = {
    "vehicle_id": "v", "camera_id": "front", "timestamp_us": 1_000_000, "frame_id": "f", "width": 480,
    "height": 360, "image": b"\xff\xd8jpeg", "image_uri": None, "encoding": "jpeg",
    "gps": {"lat": 52.2, "lon": 0.12, "alt_m": 15.0, "heading_deg": 90.0, "speed_mps": 5.0},
    "conditions": {"time_of_day": "day", "weather": "fog", "road_type": None, "region": "cambridge_uk"},
    "metadata": {"fog_beta": "0.02"},
}


def test_new_reader_reads_old_records() -> None:
    v1, v2 = _v1_v2()
    old = {k: v for k, v in NEW_RECORD.items() if k != "metadata"}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, v1, old)
    buf.seek(0)
    read: Any = fastavro.schemaless_reader(buf, v1, v2)
    assert read["metadata"] == {}  # the new field's default
    assert read["frame_id"] == "f" and read["gps"]["lat"] == 52.2


def test_old_reader_reads_new_records() -> None:
    v1, v2 = _v1_v2()
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, v2, NEW_RECORD)
    buf.seek(0)
    read: Any = fastavro.schemaless_reader(buf, v2, v1)
    assert "metadata" not in read  # skipped by the old reader
    assert read["conditions"]["weather"] == "fog" and read["image"] == b"\xff\xd8jpeg"


def test_codec_reads_both_versions_into_the_current_record() -> None:
    frame = records.CameraFrame("v", "front", 1, "f", 480, 360, metadata={"k": "v"})
    assert codec.decode(codec.encode(frame)) == frame
    assert codec.decode(codec.encode(frame, version=1)) == dataclasses.replace(frame, metadata={})
