"""Bytes on the wire <-> typed records: Avro binary per message behind a small self-describing header.

Byte layout of one message (all events on every topic)::

    offset   size  field
    0        2     magic b"AV"
    2        1     header format, 0x01
    3        1     n: length of the schema name, 1..64
    4        n     schema name, ASCII: the short record name in namespace avminer.v1 (b"CameraFrame")
    4+n      2     schema version, unsigned big-endian (the .avsc "version" attribute)
    6+n      ...   the record, Avro binary encoding ("schemaless"), written with that schema version

A 40 KB CameraFrame costs 17 header bytes. The header lets a consumer route or dead-letter a message
without decoding it (:func:`read_header`) and lets readers decode every version they know: a message
written with an older version is read into today's record (new fields take their defaults); a message
from a newer version than this install knows is refused with a clear error ("upgrade avminer").
Producers in a rolling upgrade can keep writing the old version with ``encode(record, version=N)``.

:func:`decode` raises :class:`~avminer.errors.EventDecodeError` and nothing else, whatever the bytes:
truncated messages, unknown schemas or versions, bodies that do not match their schema, trailing
bytes, oversized messages (``MAX_MESSAGE_BYTES``) and invalid UTF-8 all end up there.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import fastavro

from avminer.errors import EventDecodeError, EventEncodeError
from avminer.events import schema as schemas
from avminer.events.records import CameraFrame, Decision, LabelRequest, LabelResult, ModelRelease, RadarScan

MAGIC = b"AV"
HEADER_FORMAT = 1
MAX_NAME_BYTES = 64
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest message accepted by encode and decode (far above the 8 MiB image limit of the decoder)."""

Event = CameraFrame | RadarScan | LabelRequest | LabelResult | ModelRelease | Decision
T = TypeVar("T")

_PREFIX = MAGIC + bytes([HEADER_FORMAT])


@dataclass(frozen=True)
class _Codec:
    """Everything needed to encode or decode one (schema, version), compiled once."""

    cls: type
    name: str
    version: int
    header: bytes
    writer: Any  # parsed schema of this version
    check: schemas.Check  # type check of a record dict against ``writer``
    reader: Any  # parsed current schema, or None when this is the current version (no resolution)
    to_avro: schemas.ToAvro
    from_avro: schemas.FromAvro


def _header(name: str, version: int) -> bytes:
    raw = name.encode("ascii")
    return _PREFIX + bytes([len(raw)]) + raw + version.to_bytes(2, "big")


@cache
def _tables() -> tuple[dict[type, _Codec], dict[tuple[bytes, int], _Codec]]:
    by_class: dict[type, _Codec] = {}
    by_header: dict[tuple[bytes, int], _Codec] = {}
    for name, cls in schemas.RECORD_CLASSES.items():
        cur = schemas.current(name)
        for version, sch in schemas.versions(name).items():
            codec = _Codec(
                cls=cls, name=name, version=version, header=_header(name, version), writer=sch.parsed,
                check=schemas.compile_check(sch.parsed),
                reader=None if version == cur.version else cur.parsed,
                to_avro=schemas.to_avro_converter(cls), from_avro=schemas.from_avro_converter(cls),
            )
            by_header[(name.encode("ascii"), version)] = codec
            if version == cur.version:
                by_class[cls] = codec
    return by_class, by_header


def encode(record: Event, version: int | None = None, validate: bool = True) -> bytes:
    """Encode a record (with its header) to bytes.

    Args:
        record: one of the records of :mod:`avminer.events.records`.
        version: schema version to write; default the current one. Older versions drop the fields
            they do not have (for producers in a rolling upgrade).
        validate: check every field's type against the schema first (a clear error naming the
            field instead of silently wrong bytes); a few microseconds per record.

    Raises:
        EventEncodeError: not an event record, a field of the wrong type, or a message too large.
    """
    by_class, by_header = _tables()
    codec = by_class.get(type(record))
    if codec is None:
        raise EventEncodeError(
            f"cannot encode a {type(record).__name__}: not an avminer event; expected one of "
            f"{', '.join(sorted(c.__name__ for c in by_class))}"
        )
    if version is not None and version != codec.version:
        older = by_header.get((codec.name.encode("ascii"), version))
        if older is None:
            raise EventEncodeError(f"{codec.name} has no schema version {version}; known: "
                                   f"{sorted(schemas.versions(codec.name))}")
        codec = older
    data = codec.to_avro(record)
    problem = codec.check(data) if validate else None
    if problem is not None:
        raise EventEncodeError(f"cannot encode {codec.name}: {problem}")
    try:
        out = io.BytesIO()
        out.write(codec.header)
        fastavro.schemaless_writer(out, codec.writer, data)
    except Exception as exc:  # unvalidated records: TypeError, ValueError, OverflowError, ...
        raise EventEncodeError(f"cannot encode {codec.name}: {_describe(exc)}") from exc
    body = out.getvalue()
    if len(body) > MAX_MESSAGE_BYTES:
        raise EventEncodeError(
            f"{codec.name} encodes to {len(body)} bytes, above MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}; "
            "store the image in an object store and send image_uri instead"
        )
    return body


def read_header(data: bytes | bytearray | memoryview) -> tuple[str, int, int]:
    """Parse only the header: (schema name, version, offset of the Avro body).

    Raises:
        EventDecodeError: not bytes, too large, bad magic or format, truncated header.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EventDecodeError(f"expected bytes, got {type(data).__name__}")
    size = len(data) if not isinstance(data, memoryview) else data.nbytes
    if size > MAX_MESSAGE_BYTES:
        raise EventDecodeError(f"message of {size} bytes is above MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}")
    if size < 3 or bytes(data[:3]) != _PREFIX:
        if size >= 2 and bytes(data[:2]) == MAGIC:
            raise EventDecodeError(f"unknown header format {data[2]}; this avminer reads format {HEADER_FORMAT}"
                                   if size > 2 else "truncated message: header cut after the magic bytes")
        raise EventDecodeError(f"not an avminer event: no b'AV' magic at the start ({bytes(data[:8])!r}...)"
                               if size else "empty message")
    if size < 4:
        raise EventDecodeError("truncated message: header cut before the schema name")
    n = data[3]
    if not 1 <= n <= MAX_NAME_BYTES:
        raise EventDecodeError(f"corrupt header: schema name length {n} outside 1..{MAX_NAME_BYTES}")
    if size < 6 + n:
        raise EventDecodeError(f"truncated message: {size} bytes, the header alone needs {6 + n}")
    raw = bytes(data[4:4 + n])
    if not raw.isascii() or not raw.replace(b"_", b"").isalnum():
        raise EventDecodeError(f"corrupt header: schema name {raw!r} is not an identifier")
    return raw.decode("ascii"), int.from_bytes(data[4 + n:6 + n], "big"), 6 + n


def decode(data: bytes | bytearray | memoryview) -> Event:
    """Decode one message into its typed record (read into the current schema version).

    Raises:
        EventDecodeError: for any bytes that are not a complete, valid message; never anything else.
    """
    try:
        return _decode(data)
    except EventDecodeError:
        raise
    except Exception as exc:  # a last net: MemoryError, RecursionError, anything fastavro may throw
        raise EventDecodeError(f"cannot decode message: {_describe(exc)}") from exc


def _decode(data: bytes | bytearray | memoryview) -> Event:
    name, version, offset = read_header(data)
    codec = _tables()[1].get((name.encode("ascii"), version))
    if codec is None:
        if name not in schemas.RECORD_CLASSES:
            raise EventDecodeError(f"unknown schema {name!r}; known: {', '.join(sorted(schemas.RECORD_CLASSES))}")
        known = sorted(schemas.versions(name))
        hint = "upgrade avminer to read it" if version > known[-1] else "it was never released"
        raise EventDecodeError(f"unknown version {version} of schema {name}; this install reads {known} ({hint})")
    buf = io.BytesIO(data)
    buf.seek(offset)
    try:
        body = fastavro.schemaless_reader(buf, codec.writer, codec.reader)
    except (EOFError, StopIteration) as exc:
        raise EventDecodeError(f"truncated message: {name} v{version} body ends early") from exc
    except UnicodeDecodeError as exc:
        raise EventDecodeError(f"corrupt {name} v{version}: a string is not valid UTF-8") from exc
    except Exception as exc:  # IndexError (bad union branch), ValueError, MemoryError, OverflowError, ...
        raise EventDecodeError(f"corrupt {name} v{version}: body does not match the schema ({_describe(exc)})") from exc
    end = buf.tell()
    total = len(data) if not isinstance(data, memoryview) else data.nbytes
    if end != total:
        if end > total:  # some readers pad short reads instead of raising
            raise EventDecodeError(f"truncated message: {name} v{version} body ends early")
        raise EventDecodeError(f"{total - end} trailing bytes after a {name} v{version} body; corrupt or concatenated")
    if not isinstance(body, dict):
        raise EventDecodeError(f"corrupt {name} v{version}: body is not a record")
    try:
        record: Event = codec.from_avro(body)
    except Exception as exc:
        raise EventDecodeError(f"{name} v{version} does not map onto its record: {_describe(exc)}") from exc
    return record


def decode_as(data: bytes | bytearray | memoryview, cls: type[T]) -> T:
    """Decode a message that must hold a record of type ``cls``.

    Raises:
        EventDecodeError: the bytes are not a valid message, or hold another record type.
    """
    record = decode(data)
    if not isinstance(record, cls):
        raise EventDecodeError(f"expected a {cls.__name__}, got a {type(record).__name__}; wrong topic?")
    return record


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
