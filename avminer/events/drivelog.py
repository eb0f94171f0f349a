"""Recorded drives: Avro object container files of camera frames and radar scans in time order.

A drive log is a standard Avro object container file (readable by any Avro tool) whose schema is
``avminer.v1.DriveEvent`` (``schemas/DriveEvent.avsc``): a record with one field ``event``, a union of
``CameraFrame`` and ``RadarScan``. The wrapper leaves room for later per-entry fields (added with
defaults, like any schema change). Entries are in non-decreasing ``timestamp_us`` order across the
whole file (all vehicles interleaved), which :class:`DriveLogWriter` enforces. The file embeds its
writer schema, so logs written by older versions are read into today's records.

The file header's metadata (``avro.*`` keys are Avro's own) carries::

    avminer.format    drive-log format version ("1")
    avminer.drive     drive name (default: the file name without .avro)
    avminer.created   creation time, ISO 8601 UTC
    avminer.source    where the events came from ("camvid:<dir>", "kafka:<topics>", ...)
    avminer.<key>     any extra metadata given to the writer

Ground-truth labels never travel inside the frame events. They live in a side file next to the log,
``<stem>.gt.avro`` (:func:`ground_truth_path`): an object container file of ``GroundTruthLabel``
records (frame id -> label PNG), with the class names in its header (``avminer.classes``, JSON).

Timestamps are written with their ``timestamp-micros`` logical type (Avro tools show dates) and read
back into integer microseconds. Every failure to open or read a log raises
:class:`~avminer.errors.DriveLogError`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import fastavro

from avminer.errors import DriveLogError
from avminer.events import schema as schemas
from avminer.events.records import CameraFrame, RadarScan

DRIVE_LOG_FORMAT = "1"
DRIVE_EVENT = f"{schemas.NAMESPACE}.DriveEvent"
GROUND_TRUTH_LABEL = f"{schemas.NAMESPACE}.GroundTruthLabel"
_CAMERA = f"{schemas.NAMESPACE}.CameraFrame"
_RADAR = f"{schemas.NAMESPACE}.RadarScan"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_US = dt.timedelta(microseconds=1)

DriveRecord = CameraFrame | RadarScan


def ground_truth_path(drive_log_path: str | os.PathLike[str]) -> Path:
    """Side file of a drive log: ``drive.avro`` -> ``drive.gt.avro`` (same folder)."""
    path = Path(drive_log_path)
    stem = path.name[: -len(".avro")] if path.name.endswith(".avro") else path.name
    return path.with_name(f"{stem}.gt.avro")


def _utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class _AtomicOcfWriter:
    """An Avro container file written to ``<path>.tmp`` and renamed into place on a clean close."""

    def __init__(
        self,
        path: Path,
        source_schema: Mapping[str, Any],
        metadata: dict[str, str],
        codec: str,
        sync_marker: bytes | None = None,
    ) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh: IO[bytes] = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        except OSError as exc:
            raise DriveLogError(f"cannot create {path}: {exc.strerror}") from exc
        try:
            self._writer = fastavro.write.Writer(
                self._fh, fastavro.parse_schema(dict(source_schema)), codec=codec, metadata=metadata,
                sync_marker=sync_marker or os.urandom(16),
            )
        except Exception as exc:  # unknown codec (ValueError), bad schema
            self.abort()
            raise DriveLogError(f"cannot start {path}: {exc}") from exc

    def write(self, datum: Any) -> None:
        try:
            self._writer.write(datum)
        except OSError as exc:
            raise DriveLogError(f"cannot write {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        try:
            self._writer.flush()
            self._fh.close()
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self.abort()
            raise DriveLogError(f"cannot finish {self.path}: {exc.strerror}") from exc

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()


class _FileWriter:
    """Lifecycle shared by the drive-log writers: a clean close publishes the file, an error discards it."""

    _out: _AtomicOcfWriter | None

    def close(self) -> None:
        """Finish the file and move it into place (idempotent)."""
        if self._out is not None:
            out, self._out = self._out, None
            out.close()

    def abort(self) -> None:
        """Discard the file being written."""
        if self._out is not None:
            out, self._out = self._out, None
            out.abort()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class DriveLogWriter(_FileWriter):
    """Write camera frames and radar scans, in time order, to a drive log.

    The file appears at ``path`` only when the writer is closed cleanly (written to ``path.tmp``
    first); leaving the ``with`` block on an exception discards it.

    Example::

        with DriveLogWriter("drive.avro", source="camvid:/data/camvid") as log:
            for record in records_in_time_order:
                log.write(record)

    Args:
        path: output file (conventionally ``*.avro``).
        drive: drive name for the header; default the file name without ``.avro``.
        source: where the events came from, for the header.
        metadata: extra header entries, stored as ``avminer.<key>``.
        codec: Avro block codec: ``null`` (default; JPEG does not compress) or ``deflate``.
        check_order: refuse a record older than the previous one (the drive-log contract).
        created: the header's creation time (default now); with ``sync_marker`` (16 bytes, default
            random) it makes the file byte-for-byte reproducible.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        drive: str | None = None,
        source: str = "",
        metadata: Mapping[str, str] | None = None,
        codec: str = "null",
        check_order: bool = True,
        created: str | None = None,
        sync_marker: bytes | None = None,
    ) -> None:
        self.path = Path(path)
        header = {
            "avminer.format": DRIVE_LOG_FORMAT,
            "avminer.drive": drive or ground_truth_path(self.path).name[: -len(".gt.avro")],
            "avminer.created": created or _utc_now_iso(),
            "avminer.source": source,
        }
        header.update({f"avminer.{k}": str(v) for k, v in (metadata or {}).items()})
        event = schemas.current("DriveEvent")
        self._check = schemas.compile_check(event.parsed)
        self._to_camera = schemas.to_avro_converter(CameraFrame)
        self._to_radar = schemas.to_avro_converter(RadarScan)
        self._check_order = check_order
        self._last_us: int | None = None
        self.frames = 0
        self.radar_scans = 0
        self._out: _AtomicOcfWriter | None = _AtomicOcfWriter(self.path, event.source, header, codec, sync_marker)

    def write(self, record: DriveRecord) -> None:
        """Append one record.

        Raises:
            DriveLogError: not a CameraFrame/RadarScan, a field of the wrong type, out of time
                order, or the writer is closed.
        """
        if self._out is None:
            raise DriveLogError(f"{self.path} is closed")
        if isinstance(record, CameraFrame):
            datum = {"event": (_CAMERA, self._to_camera(record))}
        elif isinstance(record, RadarScan):
            datum = {"event": (_RADAR, self._to_radar(record))}
        else:
            raise DriveLogError(f"a drive log holds CameraFrame and RadarScan records, not {type(record).__name__}")
        problem = self._check({"event": datum["event"][1]})
        if problem is not None:
            raise DriveLogError(f"cannot write {type(record).__name__} to {self.path}: {problem}")
        if self._check_order and self._last_us is not None and record.timestamp_us < self._last_us:
            raise DriveLogError(
                f"{type(record).__name__} at {record.timestamp_us} us is older than the previous record "
                f"({self._last_us} us); drive logs are in time order: sort before writing"
            )
        self._last_us = record.timestamp_us
        self._out.write(datum)
        if isinstance(record, CameraFrame):
            self.frames += 1
        else:
            self.radar_scans += 1



@contextlib.contextmanager
def _open_container(
    path: str | os.PathLike[str], expect: str, what: str, resolve: bool = False
) -> Iterator[Any]:
    """Open an Avro container file and check its schema is ``expect``; yields a fastavro reader.

    With ``resolve``, records are read into today's schema whatever version wrote the file.
    """
    p = Path(path)
    try:
        fh = open(p, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError as exc:
        raise DriveLogError(f"{what} {p} does not exist") from exc
    except OSError as exc:
        raise DriveLogError(f"cannot open {what} {p}: {exc.strerror}") from exc
    with fh:
        try:
            reader = fastavro.reader(fh, return_record_name=True, return_record_name_override=True)
        except Exception as exc:  # ValueError "cannot read header", EOFError, ...
            raise DriveLogError(f"{p} is not an Avro container file ({exc}); is it a {what}?") from exc
        name = reader.writer_schema.get("name") if isinstance(reader.writer_schema, dict) else None
        if name != expect:
            raise DriveLogError(f"{p} holds {name or 'unnamed'} records, not {expect}; is it a {what}?")
        if resolve:
            fh.seek(0)
            try:
                reader = fastavro.reader(
                    fh, reader_schema=schemas.current(expect.rsplit(".", 1)[-1]).parsed, return_record_name=True,
                    return_record_name_override=True,
                )
            except Exception as exc:  # SchemaResolutionError: written with an incompatible schema
                raise DriveLogError(f"{p} was written with a schema this avminer cannot read: {exc}") from exc
        yield reader


def _micros(value: Any) -> Any:
    return (value - _EPOCH) // _ONE_US if isinstance(value, dt.datetime) else value


def read_drive_log(path: str | os.PathLike[str]) -> Generator[DriveRecord, None, None]:
    """Stream the records of a drive log in file (time) order, one block in memory at a time.

    Raises:
        DriveLogError: missing file, not a drive log, or a corrupt block (raised when reached).
    """
    to_camera = schemas.from_avro_converter(CameraFrame)
    to_radar = schemas.from_avro_converter(RadarScan)
    index = 0
    with _open_container(path, DRIVE_EVENT, "drive log", resolve=True) as reader:
        entries = iter(reader)
        while True:
            try:
                entry = next(entries)
                name, body = entry["event"]
                body["timestamp_us"] = _micros(body["timestamp_us"])
                record: DriveRecord = to_camera(body) if name == _CAMERA else to_radar(body)
            except StopIteration:
                return
            except DriveLogError:
                raise
            except Exception as exc:  # corrupt block: EOFError, ValueError, zlib.error, ...
                raise DriveLogError(f"{path} is corrupt at record {index}: {type(exc).__name__}: {exc}") from exc
            index += 1
            yield record


@dataclass
class DriveLogInfo:
    """What a drive log holds (:func:`drive_log_info`)."""

    path: Path
    drive: str
    created: str
    source: str
    metadata: dict[str, str]
    frames: int = 0
    radar_scans: int = 0
    vehicles: list[str] = field(default_factory=list)
    start_us: int | None = None
    end_us: int | None = None
    size_bytes: int = 0

    @property
    def duration_s(self) -> float:
        """Seconds between the first and the last record."""
        return 0.0 if self.start_us is None or self.end_us is None else (self.end_us - self.start_us) / 1e6


def read_header_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``avminer.*`` header entries of a drive log (without reading its records)."""
    with _open_container(path, DRIVE_EVENT, "drive log") as reader:
        return {k: _text(v) for k, v in reader.metadata.items() if k.startswith("avminer.")}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def drive_log_info(path: str | os.PathLike[str]) -> DriveLogInfo:
    """Header metadata and counts of a drive log (streams the whole file once).

    Raises:
        DriveLogError: as :func:`read_drive_log`.
    """
    meta = read_header_metadata(path)
    info = DriveLogInfo(
        path=Path(path), drive=meta.get("avminer.drive", ""), created=meta.get("avminer.created", ""),
        source=meta.get("avminer.source", ""), metadata=meta, size_bytes=Path(path).stat().st_size,
    )
    vehicles: set[str] = set()
    for record in read_drive_log(path):
        if isinstance(record, CameraFrame):
            info.frames += 1
        else:
            info.radar_scans += 1
        vehicles.add(record.vehicle_id)
        info.start_us = record.timestamp_us if info.start_us is None else min(info.start_us, record.timestamp_us)
        info.end_us = record.timestamp_us if info.end_us is None else max(info.end_us, record.timestamp_us)
    info.vehicles = sorted(vehicles)
    return info


# --- ground truth side file ------------------------------------------------------------------------


class GroundTruthWriter(_FileWriter):
    """Write the ground-truth side file of a drive log: frame id -> label PNG.

    Args:
        path: the side file (use :func:`ground_truth_path` of the drive log).
        classes: class names by id, stored in the header as JSON (``avminer.classes``).
        void: the ignore id of the labels (``avminer.void``), if any.
        drive: drive name for the header.
        created, sync_marker: as for :class:`DriveLogWriter` (reproducible files).
        metadata: extra header entries, stored as ``avminer.<key>`` (e.g. ``frame_taxonomies``, see
            :func:`ground_truth_taxonomies`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        classes: Sequence[str] = (),
        void: int | None = None,
        drive: str = "",
        created: str | None = None,
        sync_marker: bytes | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        header = {
            "avminer.format": DRIVE_LOG_FORMAT,
            "avminer.drive": drive,
            "avminer.created": created or _utc_now_iso(),
            "avminer.classes": json.dumps(list(classes)),
        }
        if void is not None:
            header["avminer.void"] = str(void)
        header.update({f"avminer.{k}": str(v) for k, v in (metadata or {}).items()})
        self.count = 0
        self._seen: set[str] = set()
        self._out: _AtomicOcfWriter | None = _AtomicOcfWriter(
            self.path, schemas.current("GroundTruthLabel").source, header, "null", sync_marker
        )

    def write(self, frame_id: str, label_png: bytes) -> None:
        """Add the label of one frame (each frame id once)."""
        if self._out is None:
            raise DriveLogError(f"{self.path} is closed")
        if not isinstance(frame_id, str) or not isinstance(label_png, (bytes, bytearray)):
            raise DriveLogError("ground truth needs a str frame id and PNG bytes")
        if frame_id in self._seen:
            raise DriveLogError(f"frame {frame_id} already has a label in {self.path}")
        self._seen.add(frame_id)
        self._out.write({"frame_id": frame_id, "label_png": bytes(label_png)})
        self.count += 1



def _side_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p if p.name.endswith(".gt.avro") else ground_truth_path(p)


def read_ground_truth(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """Labels by frame id, from a side file or from the drive log it belongs to.

    Args:
        path: ``<stem>.gt.avro``, or the drive log ``<stem>.avro`` (its side file is used).

    Raises:
        DriveLogError: the side file is missing or corrupt.
    """
    labels: dict[str, bytes] = {}
    gt = _side_file(path)
    if not gt.exists():
        raise DriveLogError(
            f"no ground-truth side file {gt}; logs made by `avminer dataset camvid` have one, recorded ones do not"
        )
    with _open_container(gt, GROUND_TRUTH_LABEL, "ground-truth side file") as reader:
        try:
            for entry in reader:
                labels[entry["frame_id"]] = entry["label_png"]
        except Exception as exc:
            raise DriveLogError(f"{gt} is corrupt after {len(labels)} labels: {type(exc).__name__}: {exc}") from exc
    return labels


def ground_truth_classes(path: str | os.PathLike[str]) -> tuple[list[str], int | None]:
    """(class names by id, void id) from the header of a ground-truth side file (or its drive log's)."""
    with _open_container(_side_file(path), GROUND_TRUTH_LABEL, "ground-truth side file") as reader:
        meta = {k: _text(v) for k, v in reader.metadata.items()}
    try:
        classes = [str(c) for c in json.loads(meta.get("avminer.classes", "[]"))]
        void = int(meta["avminer.void"]) if "avminer.void" in meta else None
    except (ValueError, TypeError) as exc:
        raise DriveLogError(f"{path}: bad class metadata in the header: {exc}") from exc
    return classes, void


def ground_truth_taxonomies(path: str | os.PathLike[str]) -> dict[str, str]:
    """Frame id -> taxonomy name, for frames labeled in another taxonomy than the side file's header classes.

    Read from the header entry ``avminer.frame_taxonomies`` (a JSON object; absent: every frame is in the
    header's taxonomy, an empty dict).

    Raises:
        DriveLogError: the side file is unreadable or the entry is not a JSON object of strings.
    """
    with _open_container(_side_file(path), GROUND_TRUTH_LABEL, "ground-truth side file") as reader:
        raw = _text(reader.metadata.get("avminer.frame_taxonomies", "{}"))
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise DriveLogError(f"{path}: header avminer.frame_taxonomies is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise DriveLogError(f"{path}: header avminer.frame_taxonomies must map frame ids to taxonomy names")
    return data
