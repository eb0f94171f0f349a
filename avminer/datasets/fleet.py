"""A fleet-like drive log from CamVid-layout sources (``avminer dataset fleet``), with held-out folders.

A real fleet stream is mostly ordinary day driving on roads the model knows, consecutive frames are
near-duplicates (a camera stuck in traffic), and the conditions that break the model are a few percent.
:func:`build_fleet` writes such a stream, deterministically from a seed:

- **conditions and their shares** (:attr:`FleetSpec.shares`, the rest is ``day``): ``dusk`` (CamVid's
  dusk sequence), ``fog`` (clear day frames through :func:`~avminer.datasets.conditions.apply_fog`, cycling
  through :attr:`FleetSpec.fog_betas`), ``night`` (clear day frames through
  :func:`~avminer.datasets.conditions.apply_night`) and ``new_region`` (a second CamVid-layout folder, e.g.
  IDD-lite from India, labeled in its own taxonomy);
- **episodes**: a vehicle drives through one condition for a few frames (consecutive frames of a source
  sequence, 1 s apart); with probability :attr:`FleetSpec.standstill` a frame starts a standstill and is
  repeated a few times with sensor noise (gain and Gaussian noise, labels unchanged);
- **several vehicles and cameras**, GPS tracks around each region's centre;
- **ground truth**: the side file ``<stem>.gt.avro`` holds every frame's label PNG; frames whose labels
  are not in the side file's header taxonomy (CamVid) are listed with their taxonomy in the header entry
  ``avminer.frame_taxonomies`` (:func:`avminer.events.drivelog.ground_truth_taxonomies`).

**Split** (never a frame in both the stream and the evaluation):

- stream day = CamVid ``day`` rows not in split ``val`` (0006R0 and 0016E5-train, the frames the starter
  model was trained on: written as ``base/`` too, the trainer's base data); fog and night are made from them;
- stream dusk = the first half (by frame index) of each dusk sequence; eval dusk = the second half;
- eval day = CamVid ``day`` rows of split ``val`` (0016E5-val; fog/night copies of them are made by
  ``avminer backtest --eval-fog/--eval-night``);
- new region: whole sequences, one in :data:`EVAL_EVERY` (by a hash of the sequence name) held out for
  evaluation (at most :attr:`FleetSpec.eval_region_frames` of them), the rest streamed.

Outputs under ``out``: ``stream.avro`` + ``stream.gt.avro``, ``base/``, ``eval-<location>/`` (CamVid-layout
folders whose ``manifest.csv`` names the source files by absolute path: nothing is copied) and
``fleet.json`` (the spec, counts per condition and each frame's condition, source and taxonomy).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avminer.datasets.conditions import apply_fog, apply_night
from avminer.datasets.drive import gps_track
from avminer.datasets.layout import CamvidRow, decode_label, read_classes, read_layout
from avminer.errors import DatasetError
from avminer.events.drivelog import DriveLogWriter, GroundTruthWriter, ground_truth_path
from avminer.events.records import CameraFrame, Conditions, GpsFix
from avminer.images import decode_image, encode_jpeg

CONDITIONS = ("day", "dusk", "fog", "night", "new_region")
"""Stream conditions; ``day`` takes whatever share the others leave."""
RARE = ("dusk", "fog", "night", "new_region")
EVAL_EVERY = 4
"""One new-region sequence in this many (by name hash) is held out for evaluation."""
REGION_CENTRES = {"cambridge_uk": (52.2053, 0.1218), "india": (17.3850, 78.4867)}
"""GPS centres of known locations; an unknown location is placed by a hash of its name."""
_CAMBRIDGE = REGION_CENTRES["cambridge_uk"]
_START_US = 1_212_400_800_000_000  # 2008-06-02 10:00 UTC: the CamVid drives' day


@dataclass(frozen=True)
class FleetSpec:
    """What :func:`build_fleet` writes.

    Attributes:
        frames: camera frames in the stream.
        shares: fraction of frames per rare condition (``dusk``, ``fog``, ``night``, ``new_region``);
            ``day`` gets the rest. A condition without a source (no dusk rows, no second folder) must be 0.
        fog_betas: fog densities (1/m) the fog episodes cycle through.
        vehicles: vehicles in the fleet.
        cameras: camera ids per vehicle.
        episode_frames: (min, max) frames of one condition episode.
        standstill: probability that a frame starts a standstill.
        standstill_frames: (min, max) repeats of a standstill frame.
        eval_region_frames: at most this many held-out new-region frames (evenly spaced).
        seed: everything random (order, vehicles, noise) follows from it.
        jpeg_quality: quality of re-encoded (fogged, night, jittered) frames.
    """

    frames: int = 3000
    shares: Mapping[str, float] = field(
        default_factory=lambda: {"dusk": 0.02, "fog": 0.02, "night": 0.01, "new_region": 0.02})
    fog_betas: tuple[float, ...] = (0.01, 0.02, 0.05)
    vehicles: int = 4
    cameras: tuple[str, ...] = ("front", "front_wide")
    episode_frames: tuple[int, int] = (4, 16)
    standstill: float = 0.15
    standstill_frames: tuple[int, int] = (2, 10)
    eval_region_frames: int = 150
    seed: int = 0
    jpeg_quality: int = 90

    def validate(self) -> FleetSpec:
        """Raises DatasetError naming the first bad field."""
        unknown = sorted(set(self.shares) - set(RARE))
        if unknown:
            raise DatasetError(f"shares: unknown condition(s) {unknown}; use {', '.join(RARE)}")
        if any(not 0 <= v < 1 for v in self.shares.values()) or sum(self.shares.values()) >= 1:
            raise DatasetError(f"shares: each in [0, 1) and together below 1 (day needs frames), got {dict(self.shares)}")
        if self.frames < 1:
            raise DatasetError(f"frames: must be >= 1, got {self.frames}")
        if self.vehicles < 1 or not self.cameras:
            raise DatasetError("vehicles and cameras: need at least one of each")
        lo, hi = self.episode_frames
        if not 1 <= lo <= hi:
            raise DatasetError(f"episode_frames: need 1 <= min <= max, got {self.episode_frames}")
        lo, hi = self.standstill_frames
        if not 1 <= lo <= hi:
            raise DatasetError(f"standstill_frames: need 1 <= min <= max, got {self.standstill_frames}")
        if not 0 <= self.standstill < 1:
            raise DatasetError(f"standstill: must be in [0, 1), got {self.standstill}")
        if not self.fog_betas or any(b <= 0 for b in self.fog_betas):
            raise DatasetError(f"fog_betas: need positive densities, got {self.fog_betas}")
        return self


@dataclass
class FleetSummary:
    """What :func:`build_fleet` wrote."""

    stream: Path
    ground_truth: Path
    base: Path
    eval_folders: list[Path]
    frames: int
    by_condition: dict[str, int]
    distinct_by_condition: dict[str, int]
    index: Path


@dataclass(frozen=True)
class _Source:
    """Rows a condition draws from, in drive order, and the labels' taxonomy."""

    rows: list[CamvidRow]
    classes_dir: Path


def _stable(*parts: object) -> int:
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


def _drive_order(rows: Sequence[CamvidRow]) -> list[CamvidRow]:
    return sorted(rows, key=lambda r: (r.sequence, r.frame_index))


def split_sources(camvid: str | Path, region: str | Path | None, eval_region_frames: int = 150
                  ) -> tuple[dict[str, _Source], list[CamvidRow], list[CamvidRow], list[CamvidRow]]:
    """(stream sources per condition, base rows, held-out CamVid rows, held-out region rows); see module doc."""
    rows = read_layout(camvid)
    day = [r for r in rows if r.time_of_day == "day"]
    base = _drive_order([r for r in day if r.split != "val"])
    eval_day = _drive_order([r for r in day if r.split == "val"])
    if not base:
        raise DatasetError(f"{camvid}: no clear day rows outside split 'val' to stream")
    dusk_stream: list[CamvidRow] = []
    dusk_eval: list[CamvidRow] = []
    for seq in sorted({r.sequence for r in rows if r.time_of_day == "dusk"}):
        seq_rows = _drive_order([r for r in rows if r.sequence == seq and r.time_of_day == "dusk"])
        half = len(seq_rows) // 2
        dusk_stream += seq_rows[:half]
        dusk_eval += seq_rows[half:]
    sources = {"day": _Source(base, Path(camvid)), "fog": _Source(base, Path(camvid)),
               "night": _Source(base, Path(camvid)), "dusk": _Source(dusk_stream, Path(camvid))}
    region_eval: list[CamvidRow] = []
    if region is not None:
        region_rows = read_layout(region)
        held = [r for r in region_rows if _stable("eval", r.sequence) % EVAL_EVERY == 0]
        streamed = [r for r in region_rows if _stable("eval", r.sequence) % EVAL_EVERY != 0]
        if not held or not streamed:
            raise DatasetError(f"{region}: too few sequences to split into stream and held-out ones")
        held = _drive_order(held)
        if len(held) > eval_region_frames:
            keep = np.linspace(0, len(held) - 1, eval_region_frames).round().astype(int)
            held = [held[i] for i in keep]
        region_eval = held
        sources["new_region"] = _Source(_drive_order(streamed), Path(region))
    return sources, base, eval_day + dusk_eval, region_eval


def _plan(spec: FleetSpec, sources: Mapping[str, _Source]) -> list[tuple[str, int, int]]:
    """Episodes as (condition, count) in stream order, then flattened: (condition, episode, slot)."""
    rng = np.random.default_rng(spec.seed)
    counts = {c: int(round(spec.shares.get(c, 0.0) * spec.frames)) for c in RARE}
    for c, n in counts.items():
        if n and (c not in sources or not sources[c].rows):
            raise DatasetError(f"shares.{c} = {spec.shares[c]} but there are no {c} source frames "
                               f"({'pass --region DIR' if c == 'new_region' else 'check the manifest'})")
    counts["day"] = spec.frames - sum(counts.values())
    left = dict(counts)
    slots: list[tuple[str, int, int]] = []
    episode = 0
    while sum(left.values()):
        names = [c for c in CONDITIONS if left.get(c, 0) > 0]
        weights = np.array([left[c] for c in names], np.float64)
        cond = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        length = min(int(rng.integers(spec.episode_frames[0], spec.episode_frames[1] + 1)), left[cond])
        slots += [(cond, episode, k) for k in range(length)]
        left[cond] -= length
        episode += 1
    return slots


def _region_gps(location: str, sequence: str, frame_index: int) -> GpsFix:
    """:func:`gps_track` moved from Cambridge to the location's centre (same smooth track shape)."""
    fix = gps_track(sequence, frame_index)
    centre = REGION_CENTRES.get(location)
    if centre is None:
        h = _stable("centre", location)
        centre = (-40.0 + (h % 8000) / 100.0, -170.0 + (h // 8000 % 34000) / 100.0)
    lat = fix.lat - _CAMBRIDGE[0] + centre[0]
    east_m = (fix.lon - _CAMBRIDGE[1]) * math.cos(math.radians(_CAMBRIDGE[0]))
    lon = centre[1] + east_m / max(math.cos(math.radians(lat)), 1e-6)
    return GpsFix(lat=lat, lon=lon, alt_m=fix.alt_m, heading_deg=fix.heading_deg, speed_mps=fix.speed_mps)


def _jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A standstill repeat: the same scene with a small gain change and sensor noise."""
    gain = 1.0 + rng.normal(0.0, 0.02)
    noisy = image.astype(np.float32) * gain + rng.normal(0.0, 2.0, image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def build_fleet(
    camvid: str | Path,
    out: str | Path,
    spec: FleetSpec = FleetSpec(),
    *,
    region: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> FleetSummary:
    """Write the fleet stream, its ground truth, ``base/``, the held-out folders and ``fleet.json``.

    Args:
        camvid: CamVid-layout folder (day rows with a ``val`` split, dusk sequences).
        out: output directory (created).
        spec: shares, episodes, vehicles, seed.
        region: CamVid-layout folder of the new geography (its own ``classes.json``; a ``weather``
            column is read if present); required when ``shares['new_region'] > 0``.
        progress: called with 1 after each frame.

    Raises:
        DatasetError: a source is unreadable or lacks the frames a share asks for.
    """
    from avminer.taxonomy import CAMVID, TaxonomyError, taxonomy_for

    spec.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sources, base, eval_camvid, eval_region = split_sources(camvid, region, spec.eval_region_frames)
    if spec.shares.get("new_region", 0.0) == 0.0:
        eval_region = []
    taxonomies: dict[str, str] = {}
    for name, src in sources.items():
        classes, void = read_classes(src.classes_dir)
        try:
            taxonomies[name] = taxonomy_for(classes, void).name
        except TaxonomyError as exc:
            raise DatasetError(f"{src.classes_dir}: {exc}") from exc
    default_tax = taxonomies["day"]
    cam_classes, cam_void = read_classes(camvid)
    slots = _plan(spec, sources)

    rng = np.random.default_rng(spec.seed + 1)
    stream = out / "stream.avro"
    index: dict[str, dict[str, Any]] = {}
    other_tax: dict[str, str] = {}
    # Per condition: where its next episode starts in the source's drive order (a random start each).
    episodes: dict[int, tuple[str, int, str, str, float | None]] = {}
    positions: dict[str, int] = {}
    t_us = _START_US
    n_out = 0
    pending: list[tuple[CameraFrame, bytes, dict[str, Any]]] = []
    distinct: dict[str, set[str]] = {}
    fog_turn = 0
    for cond, episode, _slot in slots:
        src = sources[cond]
        if episode not in episodes:
            start = int(rng.integers(len(src.rows)))
            positions[cond] = start
            vehicle = f"fleet-{int(rng.integers(spec.vehicles)) + 1:02d}"
            camera = spec.cameras[int(rng.integers(len(spec.cameras)))]
            beta = spec.fog_betas[fog_turn % len(spec.fog_betas)] if cond == "fog" else None
            fog_turn += cond == "fog"
            episodes = {episode: (cond, start, vehicle, camera, beta)}
            t_us += 5_000_000  # a gap between episodes
            repeat_left = 0
            row = src.rows[start]
        _, _, vehicle, camera, beta = episodes[episode]
        if repeat_left > 0:  # standing still: the same scene again
            repeat_left -= 1
            repeat = True
        else:
            row = src.rows[positions[cond] % len(src.rows)]
            positions[cond] += 1
            repeat = False
            if rng.random() < spec.standstill:
                repeat_left = int(rng.integers(spec.standstill_frames[0], spec.standstill_frames[1] + 1)) - 1
        t_us += 1_000_000
        frame_id = f"{cond}-{n_out:06d}-{row.frame_id}"
        n_out += 1
        image_bytes = row.image_path.read_bytes()
        label_png = row.label_path.read_bytes()
        meta: dict[str, str] = {"source": str(src.classes_dir.name), "source_frame": row.frame_id,
                                "fleet_condition": cond, "standstill_repeat": str(repeat).lower()}
        if cond in ("fog", "night") or repeat:
            image = decode_image(image_bytes)
            frame_seed = _stable(spec.seed, frame_id)
            if cond == "fog" and beta is not None:
                label = decode_label(label_png) if taxonomies[cond] == CAMVID.name else None
                image = apply_fog(image, beta, label=label)
                meta["fog_beta"] = f"{beta:g}"
            elif cond == "night":
                image = apply_night(image, seed=frame_seed)
            if repeat:
                image = _jitter(image, np.random.default_rng(frame_seed))
            image_bytes = encode_jpeg(image, spec.jpeg_quality)
            height, width = image.shape[:2]
        else:
            height, width = decode_image(image_bytes).shape[:2]
        time_of_day = {"dusk": "dusk", "night": "night"}.get(cond, row.time_of_day if cond != "fog" else "day")
        frame = CameraFrame(
            vehicle_id=vehicle, camera_id=camera, timestamp_us=t_us, frame_id=frame_id, width=int(width),
            height=int(height), image=image_bytes, encoding="jpeg" if image_bytes[:2] == b"\xff\xd8" else "png",
            gps=_region_gps(row.location, row.sequence, row.frame_index),
            conditions=Conditions(time_of_day=time_of_day, weather="fog" if cond == "fog" else "clear",
                                  road_type="urban", region=row.location),
            metadata=meta,
        )
        pending.append((frame, label_png, {"condition": cond, "source": row.frame_id,
                                           "taxonomy": taxonomies[cond], "repeat": repeat,
                                           **({"fog_beta": beta} if beta is not None else {})}))
        index[frame_id] = pending[-1][2]
        distinct.setdefault(cond, set()).add(row.frame_id)
        if taxonomies[cond] != default_tax:
            other_tax[frame_id] = taxonomies[cond]

    gt_path = ground_truth_path(stream)
    with GroundTruthWriter(gt_path, classes=cam_classes, void=cam_void, drive="fleet",
                           metadata={"frame_taxonomies": json.dumps(other_tax, sort_keys=True),
                                     "taxonomy": default_tax}) as gt, \
            DriveLogWriter(stream, drive="fleet", source=f"fleet:{Path(camvid).name}",
                           metadata={"seed": str(spec.seed)}) as log:
        for frame, label_png, _ in pending:
            log.write(frame)
            gt.write(frame.frame_id, label_png)
            if progress is not None:
                progress(1)

    base_dir = _write_folder(out / "base", base, Path(camvid))
    eval_folders = [_write_folder(out / "eval-cambridge_uk", eval_camvid, Path(camvid))]
    if eval_region and region is not None:
        eval_folders.append(_write_folder(out / f"eval-{eval_region[0].location}", eval_region, Path(region)))
    by_condition = {c: sum(1 for v in index.values() if v["condition"] == c) for c in CONDITIONS}
    summary = FleetSummary(
        stream=stream, ground_truth=gt_path, base=base_dir, eval_folders=eval_folders, frames=n_out,
        by_condition={c: n for c, n in by_condition.items() if n},
        distinct_by_condition={c: len(v) for c, v in sorted(distinct.items())},
        index=out / "fleet.json",
    )
    doc = {
        "spec": {**asdict(spec), "shares": dict(spec.shares)},
        "sources": {"camvid": str(Path(camvid).resolve()), "region": str(Path(region).resolve()) if region else None},
        "frames": n_out, "by_condition": summary.by_condition,
        "distinct_by_condition": summary.distinct_by_condition,
        "base": str(base_dir), "eval": [str(p) for p in eval_folders],
        "index": index,
    }
    summary.index.write_text(json.dumps(doc, indent=1, sort_keys=True))
    return summary


def _write_folder(folder: Path, rows: Sequence[CamvidRow], source: Path) -> Path:
    """A CamVid-layout folder naming ``rows``' files by absolute path, with the source's ``classes.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    weather = _weather(source)
    with open(folder / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame_id", "split", "sequence", "frame_index", "time_of_day", "location", "weather",
                    "image", "label"])
        for r in rows:
            w.writerow([r.frame_id, r.split, r.sequence, r.frame_index, r.time_of_day, r.location,
                        weather.get(r.frame_id, "clear"), str(r.image_path.resolve()), str(r.label_path.resolve())])
    if (source / "classes.json").exists():
        shutil.copyfile(source / "classes.json", folder / "classes.json")
    return folder


def _weather(folder: Path) -> dict[str, str]:
    """frame_id -> the manifest's optional ``weather`` column (IDD-lite has one)."""
    with open(folder / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        if "weather" not in (reader.fieldnames or ()):
            return {}
        return {(r.get("frame_id") or Path(r["image"]).stem): (r.get("weather") or "clear") for r in reader}


def load_index(out: str | Path) -> dict[str, Any]:
    """``fleet.json`` of a fleet directory (or the file itself).

    Raises:
        DatasetError: missing or unreadable.
    """
    path = Path(out)
    path = path / "fleet.json" if path.is_dir() else path
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a fleet index ({exc}); write one with `avminer dataset fleet`") from exc
    return doc
