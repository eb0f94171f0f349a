"""The Avro schemas of avminer's events: where they live, their versions, and record <-> Avro mapping.

The ``.avsc`` files live in the repository's ``schemas/`` folder (``avminer/schemas`` is a link to it,
and a real folder in an installed wheel). Each top-level schema carries an integer ``"version"``
attribute; frozen copies of older versions live in ``schemas/history/<Name>.v<N>.avsc`` and are never
edited. Evolution rules (see ``schemas/README.md``): a new field carries a default, a field without a
default is never removed, a field's type never changes, and every change bumps the version.
:func:`compatibility_problems` checks them; the tests run it over every frozen version.

Timestamps are ``long`` with ``logicalType: timestamp-micros`` in the files, for other consumers. The
codec reads them with the logical type stripped (identical bytes), so records carry plain integer
microseconds and never pay for ``datetime`` conversions.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

from avminer.errors import AvminerError
from avminer.events import records

NAMESPACE = "avminer.v1"
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
"""Folder of the ``.avsc`` files (``avminer/schemas``; the repo's ``schemas/`` through a link)."""

_HISTORY_NAME = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>[0-9]+)\.avsc$")

Json = dict[str, Any]
ToAvro = Callable[[Any], Json]
FromAvro = Callable[[Mapping[str, Any]], Any]


class SchemaError(AvminerError):
    """The schema files are missing, unreadable or inconsistent with the records (an install problem)."""


@dataclass(frozen=True)
class EventSchema:
    """One version of one top-level schema.

    Attributes:
        name: short record name (``CameraFrame``); the full name is ``avminer.v1.<name>``.
        version: the schema's ``"version"`` attribute.
        source: the schema as written in its ``.avsc`` file (logical types kept).
        parsed: fastavro-parsed schema with logical types stripped (what the codec reads and writes with).
    """

    name: str
    version: int
    source: Json
    parsed: Any


def _read_json(path: Path) -> Json:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SchemaError(f"cannot read schema {path}: {exc.strerror}; is avminer installed with its schemas?") from exc
    except ValueError as exc:
        raise SchemaError(f"schema {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("type") != "record" or not isinstance(data.get("version"), int):
        raise SchemaError(f"schema {path} must be a record with an integer 'version' attribute")
    return data


def strip_logical_types(schema: Any) -> Any:
    """Copy of ``schema`` with every ``logicalType`` removed (same binary encoding, plain values)."""
    if isinstance(schema, dict):
        if "logicalType" in schema and schema.get("type") in {"int", "long", "bytes", "string", "fixed"}:
            if schema["type"] == "fixed":
                return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
            return schema["type"]
        return {k: strip_logical_types(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    return schema


def _inline_references(schema: Any, known: Mapping[str, Json], seen: set[str]) -> Any:
    """Replace references to other top-level schemas (``avminer.v1.CameraFrame``) by their definitions."""
    if isinstance(schema, str):
        full = schema if "." in schema else f"{NAMESPACE}.{schema}"
        short = full.rsplit(".", 1)[-1]
        if full.startswith(NAMESPACE + ".") and short in known and full not in seen:
            seen.add(full)
            return _inline_references(known[short], known, seen)
        return schema
    if isinstance(schema, dict):
        return {k: _inline_references(v, known, seen) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline_references(s, known, seen) for s in schema]
    return schema


def _parse(source: Json) -> Any:
    try:
        return fastavro.parse_schema(strip_logical_types(source))
    except Exception as exc:  # fastavro raises SchemaParseError, ValueError, KeyError, ...
        raise SchemaError(f"schema {source.get('name')} does not parse: {exc}") from exc


@cache
def _current_sources() -> dict[str, Json]:
    if not SCHEMA_DIR.is_dir():
        raise SchemaError(f"schema folder {SCHEMA_DIR} is missing; reinstall avminer (pip install -e .)")
    raw = {path.stem: _read_json(path) for path in sorted(SCHEMA_DIR.glob("*.avsc"))}
    # Resolve cross-file references (DriveEvent names CameraFrame and RadarScan) once, here.
    return {name: _inline_references(src, {k: v for k, v in raw.items() if k != name}, set()) for name, src in raw.items()}


@cache
def current(name: str) -> EventSchema:
    """The current version of the top-level schema ``name`` (e.g. ``"CameraFrame"``).

    Raises:
        SchemaError: no such schema file.
    """
    sources = _current_sources()
    if name not in sources:
        raise SchemaError(f"no schema named {name!r} in {SCHEMA_DIR}; known: {', '.join(sorted(sources))}")
    src = sources[name]
    return EventSchema(name, int(src["version"]), src, _parse(src))


@cache
def versions(name: str) -> dict[int, EventSchema]:
    """Every known version of schema ``name``: the frozen history plus the current one."""
    out = {}
    for path in sorted((SCHEMA_DIR / "history").glob(f"{name}.v*.avsc")):
        match = _HISTORY_NAME.match(path.name)
        if match is None:
            continue
        src = _read_json(path)
        if src["version"] != int(match["version"]):
            raise SchemaError(f"{path} declares version {src['version']}, its file name says {match['version']}")
        out[src["version"]] = EventSchema(name, src["version"], src, _parse(src))
    cur = current(name)
    out[cur.version] = cur
    return out


def schema_names() -> list[str]:
    """Names of every current top-level schema."""
    return sorted(_current_sources())


# --- evolution rules -------------------------------------------------------------------------------


def _named_types(schema: Any, out: dict[str, Json]) -> dict[str, Json]:
    if isinstance(schema, dict):
        kind = schema.get("type")
        if isinstance(kind, str) and kind in {"record", "enum", "fixed"} and "name" in schema:
            out[schema["name"].rsplit(".", 1)[-1]] = schema
        for value in schema.values():
            _named_types(value, out)
    elif isinstance(schema, list):
        for item in schema:
            _named_types(item, out)
    return out


def _type_signature(schema: Any) -> Any:
    """A comparable form of a field type: named records reduce to their name (checked separately)."""
    if isinstance(schema, str):
        return schema.rsplit(".", 1)[-1]
    if isinstance(schema, list):
        return [_type_signature(s) for s in schema]
    if schema.get("type") in {"record", "enum", "fixed"}:
        return schema["name"].rsplit(".", 1)[-1]
    if schema.get("type") == "array":
        return ["array", _type_signature(schema["items"])]
    if schema.get("type") == "map":
        return ["map", _type_signature(schema["values"])]
    return [schema["type"], schema.get("logicalType")]


def compatibility_problems(old: Json, new: Json) -> list[str]:
    """Check the evolution rules from schema version ``old`` to ``new``; empty list when they hold.

    Rules: the version grows; every field added (also in nested records) has a default; no field
    without a default disappears; no field changes its type.
    """
    problems: list[str] = []
    if int(new["version"]) <= int(old["version"]):
        problems.append(f"version must grow: {old['version']} -> {new['version']}")
    old_types, new_types = _named_types(old, {}), _named_types(new, {})
    for rec_name, old_rec in old_types.items():
        new_rec = new_types.get(rec_name)
        if new_rec is None:
            problems.append(f"record {rec_name} was removed")
            continue
        if old_rec.get("type") != "record":
            continue
        old_fields = {f["name"]: f for f in old_rec["fields"]}
        new_fields = {f["name"]: f for f in new_rec["fields"]}
        for fname, f in old_fields.items():
            if fname not in new_fields:
                if "default" not in f:
                    problems.append(f"{rec_name}.{fname} was removed but has no default")
            elif _type_signature(f["type"]) != _type_signature(new_fields[fname]["type"]):
                problems.append(f"{rec_name}.{fname} changed type")
        for fname, f in new_fields.items():
            if fname not in old_fields and "default" not in f:
                problems.append(f"{rec_name}.{fname} was added without a default")
    return problems


# --- records <-> Avro dicts ------------------------------------------------------------------------


def _dataclass_in(tp: Any) -> tuple[str, type | None]:
    """Classify a field annotation: ('record'|'optional'|'list', dataclass) or ('plain', None)."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return "record", tp
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]) and isinstance(inner[0], type):
            return "optional", inner[0]
    if origin is list and args and dataclasses.is_dataclass(args[0]) and isinstance(args[0], type):
        return "list", args[0]
    return "plain", None


@cache
def to_avro_converter(cls: type) -> ToAvro:
    """A fast function turning a record of type ``cls`` (and its nested records) into an Avro dict."""
    names = [f.name for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls)
    nested: dict[str, tuple[str, ToAvro]] = {}
    for name in names:
        kind, inner = _dataclass_in(hints[name])
        if inner is not None:
            nested[name] = (kind, to_avro_converter(inner))
    if not nested:
        return lambda rec: {n: getattr(rec, n) for n in names}

    def convert(rec: Any) -> Json:
        out = {n: getattr(rec, n) for n in names}
        for name, (kind, conv) in nested.items():
            value = out[name]
            if kind == "list":
                out[name] = [conv(v) for v in value]
            elif value is not None:
                out[name] = conv(value)
        return out

    return convert


@cache
def from_avro_converter(cls: type) -> FromAvro:
    """A fast function turning an Avro dict (as read with the current schema) into a ``cls`` record."""
    hints = typing.get_type_hints(cls)
    nested: dict[str, tuple[str, FromAvro]] = {}
    for f in dataclasses.fields(cls):
        kind, inner = _dataclass_in(hints[f.name])
        if inner is not None:
            nested[f.name] = (kind, from_avro_converter(inner))
    if not nested:
        return lambda data: cls(**data)

    def convert(data: Mapping[str, Any]) -> Any:
        kwargs = dict(data)
        for name, (kind, conv) in nested.items():
            value = kwargs.get(name)
            if kind == "list":
                kwargs[name] = [conv(v) for v in value or ()]
            elif value is not None:
                kwargs[name] = conv(value)
        return cls(**kwargs)

    return convert


RECORD_CLASSES: dict[str, type] = {cls.__name__: cls for cls in records.RECORD_TYPES}
"""Top-level record classes by schema name."""


def iter_record_fields(schema: Json) -> Iterator[tuple[str, Json]]:
    """(record name, field) for every field of every record in ``schema`` (nested ones too)."""
    for rec_name, rec in _named_types(schema, {}).items():
        if rec.get("type") == "record":
            for f in rec["fields"]:
                yield rec_name, f


# --- validation ------------------------------------------------------------------------------------

Check = Callable[[Any], str | None]
"""A compiled type check: None when the value fits the schema, else what is wrong (with a field path)."""

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


def _check_int(bounds: tuple[int, int], kind: str) -> Check:
    lo, hi = bounds

    def check(v: Any) -> str | None:
        if not isinstance(v, int) or isinstance(v, bool):
            return f"expected {kind}, got {type(v).__name__}"
        return None if lo <= v <= hi else f"{v} outside the {kind} range"

    return check


def _check_type(types_: tuple[type, ...], kind: str) -> Check:
    """An isinstance check; bools pass only where the Avro type is boolean."""

    def check(v: Any) -> str | None:
        ok = isinstance(v, types_) and (kind == "boolean" or not isinstance(v, bool))
        return None if ok else f"expected {kind}, got {type(v).__name__}"

    return check


def compile_check(schema: Any, named: dict[str, Check] | None = None) -> Check:
    """Compile a fast type check for values of a (parsed, logical-type-free) Avro schema.

    fastavro's own ``validate`` builds an exception per rejected union branch (and JSON-dumps the
    value into it: ~1 ms per 40 KB image); this check costs microseconds and names the field path.
    """
    named = {} if named is None else named
    if isinstance(schema, str):
        simple: dict[str, Check] = {
            "null": lambda v: None if v is None else f"expected null, got {type(v).__name__}",
            "boolean": _check_type((bool,), "boolean"),
            "int": _check_int(_INT32, "int"),
            "long": _check_int(_INT64, "long"),
            "float": _check_type((int, float), "float"),
            "double": _check_type((int, float), "double"),
            "bytes": _check_type((bytes, bytearray), "bytes"),
            "string": _check_type((str,), "string"),
        }
        if schema in simple:
            return simple[schema]
        if schema in named:
            return lambda v: named[schema](v)  # late-bound: the record may still be compiling
        raise SchemaError(f"cannot check unknown Avro type {schema!r}")
    if isinstance(schema, list):
        branches = [compile_check(s, named) for s in schema]

        def check_union(v: Any) -> str | None:
            errors = [b(v) for b in branches]
            return None if None in errors else "; or ".join(str(e) for e in errors)

        return check_union
    kind = schema["type"]
    if kind == "record":
        full = schema["name"]
        fields: list[tuple[str, Check, bool]] = []

        def check_record(v: Any) -> str | None:
            if not isinstance(v, Mapping):
                return f"expected record {full.rsplit('.', 1)[-1]}, got {type(v).__name__}"
            for fname, fcheck, has_default in fields:
                if fname not in v:
                    if has_default:
                        continue
                    return f"{fname}: missing"
                err = fcheck(v[fname])
                if err is not None:
                    return f"{fname}: {err}"
            return None

        named[full] = check_record
        fields.extend((f["name"], compile_check(f["type"], named), "default" in f) for f in schema["fields"])
        return check_record
    if kind == "array":
        item = compile_check(schema["items"], named)

        def check_array(v: Any) -> str | None:
            if not isinstance(v, (list, tuple)):
                return f"expected array, got {type(v).__name__}"
            for i, x in enumerate(v):
                err = item(x)
                if err is not None:
                    return f"[{i}]: {err}"
            return None

        return check_array
    if kind == "map":
        value = compile_check(schema["values"], named)

        def check_map(v: Any) -> str | None:
            if not isinstance(v, Mapping):
                return f"expected map, got {type(v).__name__}"
            for k, x in v.items():
                if not isinstance(k, str):
                    return f"map key {k!r} is not a string"
                err = value(x)
                if err is not None:
                    return f"[{k!r}]: {err}"
            return None

        return check_map
    if kind in {"enum", "fixed"}:
        raise SchemaError(f"avminer schemas use no {kind} types; extend compile_check first")
    return compile_check(kind, named)
