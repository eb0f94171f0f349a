"""CamVid layout -> drive log: frames with GPS and conditions, simulated radar, ground-truth side file.

Rows come from :mod:`avminer.datasets.layout`; fog and night from :mod:`avminer.datasets.conditions`;
radar from :mod:`avminer.datasets.radar`.

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
"""

from __future__ import annotations

import hashlib
import heapq
import math
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from avminer import images
from avminer.datasets.conditions import NightModel, apply_fog, apply_night, estimate_airlight
from avminer.datasets.layout import CamvidRow, decode_label
from avminer.datasets.radar import RadarModel, simulate_radar
from avminer.errors import DatasetError
from avminer.events.drivelog import DriveLogWriter, GroundTruthWriter, ground_truth_path
from avminer.events.records import CameraFrame, Conditions, GpsFix, RadarScan
from avminer.geometry import DEFAULT_CAMERA, CameraModel
from avminer.taxonomy import CAMVID

FPS = 30.0
CAMBRIDGE_UK = (52.2053, 0.1218)
_BASE_TIME_UTC = {
    "day": datetime(2008, 6, 2, 10, 0, tzinfo=UTC),
    "dusk": datetime(2008, 6, 2, 20, 15, tzinfo=UTC),
    "night": datetime(2008, 6, 2, 22, 30, tzinfo=UTC),
}
_M_PER_DEG_LAT = 111_320.0

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
        try:
            image = images.decode_image(image_bytes)
        except images.ImageDecodeError as exc:
            raise DatasetError(f"frame {row.frame_id}: {exc}") from exc
        if options.fog_beta is not None:
            airlight = estimate_airlight(image) if options.fog_airlight is None else options.fog_airlight
            image = apply_fog(image, options.fog_beta, camera=options.camera, airlight=airlight, label=label)
            metadata.update({"fog_model": "I=J*t+A*(1-t); t=exp(-beta*d); d=ground plane, objects popped up on it, sky far",
                             "fog_beta": f"{options.fog_beta:g}", "fog_airlight": f"{airlight:.3f}"})
            metadata.update(options.camera.metadata("fog_", *image.shape[:2]))
        if options.night:
            image = apply_night(image, model=options.night_model, seed=frame_seed)
            metadata.update(options.night_model.metadata(frame_seed))
        image_bytes = images.encode_jpeg(image, options.jpeg_quality)
        metadata["jpeg_quality"] = str(options.jpeg_quality)
        height, width = image.shape[:2]
    else:
        try:
            width, height = images.image_size(image_bytes)  # header only
        except images.ImageDecodeError as exc:
            raise DatasetError(f"frame {row.frame_id}: {exc}") from exc
    if options.region:
        metadata["region_override"] = options.region
    vehicle = options.vehicle_id(row.sequence)
    encoding = "jpeg" if images.is_jpeg(image_bytes) else "png"
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
    classes: Sequence[str] = CAMVID.classes,
    void: int = CAMVID.void,
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
