"""What the mining report shows, gathered from the catalog, the decisions and any labeling-tool exports.

Sources, each optional but the catalog:

- the **catalog** (:mod:`avminer.catalog.catalog`): every mined sample with its state (mined → requested
  → labeled → used), scores, reasons, model version and stored frame / uncertainty-map URIs;
- the **decisions** (``decisions.jsonl`` of an embedded run): one per frame seen, mined or not — the
  denominator of the mining rate and the input of the drift statistic. Without them "seen" falls back
  to the catalog's own rows and the rates are not shown;
- the **label requests** (``requests.jsonl``): linked from each gallery frame as sent;
- a **Label Studio** task file and a **CVAT** export directory (``avminer export ...``): linked from the
  frames they contain.

Everything read here may come from another process or another machine: a malformed line is counted
and skipped, never fatal, and no value is trusted to be HTML-safe (:mod:`avminer.report.page` escapes).
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from avminer.config import Settings
from avminer.errors import AvminerError, ConfigError

log = logging.getLogger(__name__)

LABELED_STATES = ("labeled", "used")


@dataclass(slots=True)
class Seen:
    """One frame as a decision saw it (the fields the report needs)."""

    sample_id: str
    slice: str
    timestamp_us: int
    mined: bool
    shift: float | None
    model_version: str


@dataclass(slots=True)
class SliceSummary:
    """One condition slice: counts, the mining rate against its target, the drift statistic.

    Attributes:
        series: cumulative ``(timestamp_us, seen, mined, labeled)`` points in frame-time order.
        drift: the windowed drift statistic after the slice's last frame (None: no shift reference
            or no shift scores).
        drift_max: its highest value during the run.
    """

    slice: str
    seen: int
    mined: int
    labeled: int
    target_rate: float
    rate: float | None
    drift: float | None = None
    drift_max: float | None = None
    drift_alarm: bool = False
    series: list[tuple[int, int, int, int]] = field(default_factory=list)


@dataclass(slots=True)
class GalleryItem:
    """One mined frame in the gallery; ``*_href`` are links relative to the report page (None: none)."""

    sample_id: str
    frame_id: str
    slice: str
    timestamp_us: int
    reasons: list[str]
    scores: dict[str, float]
    priority: float
    model_version: str
    state: str
    labeler: str | None
    frame_uri: str | None
    uncertainty_uri: str | None
    request: dict[str, Any] | None = None
    labelstudio_task: dict[str, Any] | None = None
    cvat_image: Path | None = None
    frame_href: str | None = None
    uncertainty_href: str | None = None
    request_href: str | None = None
    labelstudio_href: str | None = None
    cvat_href: str | None = None


@dataclass(slots=True)
class ReportData:
    """Everything the page shows."""

    title: str
    catalog: str
    slices: list[SliceSummary]
    gallery: list[GalleryItem]
    mined_total: int
    seen_total: int | None
    model_versions: list[str]
    reasons: list[str]
    drift_alarm_level: float
    drift_reference: str | None
    notes: list[str] = field(default_factory=list)


def _as_str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (the page is shared; the catalog URL may carry one)."""
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


def read_decisions(path: Path, notes: list[str]) -> list[Seen]:
    """The decisions of ``decisions.jsonl``; malformed lines are counted in ``notes`` and skipped."""
    seen: list[Seen] = []
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.endswith("\n"):
                continue  # a torn last line: its writer replays it
            try:
                row = json.loads(line)
                scores = row.get("scores") or {}
                shift = scores.get("shift")
                seen.append(Seen(
                    sample_id=str(row["sample_id"]), slice=str(row["slice"]), timestamp_us=int(row["timestamp_us"]),
                    mined=bool(row["mined"]),
                    shift=float(shift) if isinstance(shift, (int, float)) and not isinstance(shift, bool) else None,
                    model_version=_as_str(row.get("model_version"), "?"),
                ))
            except (ValueError, KeyError, TypeError, AttributeError):
                bad += 1
    if bad:
        notes.append(f"{bad} malformed line(s) of {path.name} skipped")
    return seen


def _seen_of(d: Any) -> Seen:
    shift = d.scores.get("shift") if isinstance(d.scores, dict) else None
    return Seen(sample_id=str(d.sample_id), slice=str(d.slice), timestamp_us=int(d.timestamp_us), mined=bool(d.mined),
                shift=float(shift) if isinstance(shift, (int, float)) and not isinstance(shift, bool) else None,
                model_version=_as_str(d.model_version, "?"))


def read_decisions_topic(settings: Settings, topic: str, notes: list[str], timeout_s: float = 60.0) -> list[Seen]:
    """Every decision on ``topic`` up to its current end (a miner on Kafka writes no decisions file).

    Reads each partition from the beginning until it is past the end offset it had when the read
    began and a poll comes back empty, outside any consumer group (nothing is committed). Undecodable messages are counted in ``notes`` and skipped;
    one message per sample id counts (the topic is at-least-once).

    Raises:
        SinkUnavailableError: the broker cannot be reached.
    """
    import time

    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    from avminer.errors import EventDecodeError, SinkUnavailableError
    from avminer.events import codec
    from avminer.events.records import Decision

    try:
        consumer = KafkaConsumer(**settings.kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
    except KafkaError as exc:
        raise SinkUnavailableError(f"cannot read decisions from {topic}: {exc}") from exc
    by_id: dict[str, Seen] = {}
    bad = 0
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        if not parts:
            notes.append(f"decisions topic {topic} does not exist: frames seen are the catalog's mined frames only")
            return []
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                notes.append(f"decisions topic {topic}: read stopped after {timeout_s:g}s, before its end")
                break
            batches = consumer.poll(timeout_ms=1000)
            # Done at the end offsets and after a quiet poll: some brokers (tansu) report end offsets
            # short of the last record, so the offsets alone do not say the topic was read.
            if not batches and all(consumer.position(tp) >= end[tp] for tp in tps):
                break
            for records in batches.values():
                for r in records:
                    try:
                        seen = _seen_of(codec.decode_as(r.value, Decision))
                    except (EventDecodeError, ValueError, TypeError, OverflowError):
                        bad += 1
                        continue
                    by_id.setdefault(seen.sample_id, seen)
    except KafkaError as exc:
        raise SinkUnavailableError(f"cannot read decisions from {topic}: {exc}") from exc
    finally:
        consumer.close()
    if bad:
        notes.append(f"{bad} undecodable message(s) on {topic} skipped")
    return list(by_id.values())


def read_by_sample(path: Path, notes: list[str]) -> dict[str, dict[str, Any]]:
    """JSON lines keyed by their ``sample_id`` (label requests); malformed lines are counted and skipped."""
    out: dict[str, dict[str, Any]] = {}
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                row = json.loads(line)
                out.setdefault(str(row["sample_id"]), row)
            except (ValueError, KeyError, TypeError):
                bad += 1
    if bad:
        notes.append(f"{bad} malformed line(s) of {path.name} skipped")
    return out


def read_labelstudio_tasks(path: Path) -> dict[str, dict[str, Any]]:
    """Label Studio tasks (our export, or Label Studio's own JSON export) keyed by ``data.sample_id``.

    Raises:
        ConfigError: the file is missing or not a JSON list of tasks.
    """
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--labelstudio-tasks {path}: cannot read a JSON task list: {exc}") from exc
    if not isinstance(tasks, list):
        raise ConfigError(f"--labelstudio-tasks {path}: expected a JSON list of tasks, got {type(tasks).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        data = task.get("data") if isinstance(task, dict) else None
        sid = data.get("sample_id") if isinstance(data, dict) else None
        if isinstance(sid, str):
            out.setdefault(sid, task)
    return out


def read_cvat_images(directory: Path) -> dict[str, Path]:
    """The frames of a CVAT export (``DIR/images/<sample_id>.<ext>``) keyed by sample id.

    Raises:
        ConfigError: ``DIR/images`` does not exist.
    """
    images = directory / "images"
    if not images.is_dir():
        raise ConfigError(f"--cvat-export {directory}: no images/ folder; write one with `avminer export cvat`")
    return {p.stem: p for p in sorted(images.iterdir()) if p.is_file()}


def _drift(settings: Settings, seen: Sequence[Seen], bundle: str | None, notes: list[str]
           ) -> tuple[dict[str, tuple[float, float, bool]], str | None]:
    """Replay the decisions' shift scores through the miner's drift monitor, slice by slice.

    The statistic needs the shift reference of the model that scored the frames; only decisions of
    that bundle's version are replayed. Returns slice -> (last value, highest value, alarm) and the
    bundle version used (None: no reference).
    """
    from avminer.engines import default_bundle_path
    from avminer.engines.bundle import load_bundle
    from avminer.scoring.shift import DriftMonitor, ShiftReference

    try:
        b = load_bundle(bundle or settings.engine.bundle or default_bundle_path(), verify=False)
        if b.reference_path is None:
            notes.append(f"model {b.version} has no shift reference: no drift statistic")
            return {}, None
        reference = ShiftReference.load(b.reference_path)
    except AvminerError as exc:
        notes.append(f"no drift statistic: {exc}")
        return {}, None
    monitor = DriftMonitor(settings.scoring.drift_window, settings.scoring.drift_alarm, reference)
    out: dict[str, tuple[float, float, bool]] = {}
    others = 0
    for s in sorted(seen, key=lambda s: s.timestamp_us):
        if s.shift is None:
            continue
        if s.model_version != b.version:
            others += 1
            continue
        state = monitor.update(s.slice, [s.shift])
        _, top, alarm = out.get(s.slice, (0.0, float("-inf"), False))
        out[s.slice] = (state.value, max(top, state.value), alarm or state.alarm)
    if others:
        notes.append(f"drift: {others} frame(s) scored by other model versions than {b.version} left out")
    return out, b.version


def collect(
    settings: Settings,
    catalog: Any,
    *,
    decisions: Path | None = None,
    decisions_topic: str | None = None,
    requests: Path | None = None,
    labelstudio_tasks: Path | None = None,
    cvat_export: Path | None = None,
    bundle: str | None = None,
    limit: int = 200,
    title: str = "avminer mining report",
) -> ReportData:
    """Gather the report's data.

    Args:
        settings: the miner's settings: target rates (``selection``), drift window and alarm
            (``scoring``), the model bundle for the shift reference (``engine.bundle``).
        catalog: an open :class:`~avminer.catalog.catalog.Catalog`.
        decisions: ``decisions.jsonl`` (every frame seen); None: counts from the catalog only.
        decisions_topic: read the decisions from this topic on ``kafka.bootstrap_servers`` instead.
        requests: ``requests.jsonl`` (label requests as sent).
        labelstudio_tasks: a Label Studio task file to link frames to.
        cvat_export: a CVAT export directory to link frames to.
        bundle: model bundle whose shift reference gives the drift statistic's unit (default:
            ``engine.bundle``, else the starter bundle).
        limit: gallery size at most (the highest priority first).
        title: the page title.
    """
    from avminer.selection.policy import SelectionPolicy

    if limit < 0:
        raise ConfigError(f"limit: must be >= 0, got {limit}")
    notes: list[str] = []
    rows = catalog.query_samples()
    seen: list[Seen] | None = None
    if decisions_topic is not None:
        seen = read_decisions_topic(settings, decisions_topic, notes) or None
    elif decisions is not None and decisions.exists():
        seen = read_decisions(decisions, notes)
    elif decisions is not None:
        notes.append(f"{decisions} not found: frames seen are the catalog's mined frames only")
    sent = read_by_sample(requests, notes) if requests is not None and requests.exists() else {}
    tasks = read_labelstudio_tasks(labelstudio_tasks) if labelstudio_tasks is not None else {}
    cvat = read_cvat_images(cvat_export) if cvat_export is not None else {}

    labeled_ids = {r.sample_id for r in rows if r.state in LABELED_STATES}
    # One event stream per slice: a decision (seen, maybe mined), or a catalog row when there are none.
    events: dict[str, list[tuple[int, bool, bool]]] = defaultdict(list)
    if seen is not None:
        for s in seen:
            events[s.slice].append((s.timestamp_us, s.mined, s.sample_id in labeled_ids))
    else:
        for r in rows:
            events[r.slice].append((r.timestamp_us, r.mined, r.sample_id in labeled_ids))

    policy = SelectionPolicy(settings.selection)
    drift, reference = _drift(settings, seen, bundle, notes) if seen else ({}, None)
    slices: list[SliceSummary] = []
    for key in sorted(events):
        n_seen = n_mined = n_labeled = 0
        series: list[tuple[int, int, int, int]] = []
        for ts, mined, labeled in sorted(events[key]):
            n_seen += 1
            n_mined += mined
            n_labeled += labeled
            series.append((ts, n_seen, n_mined, n_labeled))
        last, top, alarm = drift.get(key, (None, None, False))
        slices.append(SliceSummary(
            slice=key, seen=n_seen, mined=n_mined, labeled=n_labeled, target_rate=policy.rate_for(key),
            rate=n_mined / n_seen if seen is not None and n_seen else None,
            drift=last, drift_max=top, drift_alarm=alarm, series=series,
        ))

    # Highest labeling priority first; among equal priorities, the frames the ensemble is least sure of.
    mined_rows = sorted((r for r in rows if r.mined),
                        key=lambda r: (-r.priority, -r.scores.get("mi", 0.0), r.timestamp_us, r.sample_id))
    if len(mined_rows) > limit:
        notes.append(f"gallery: the {limit} highest-priority of {len(mined_rows)} mined frames")
    gallery = [
        GalleryItem(
            sample_id=r.sample_id, frame_id=r.frame_id, slice=r.slice, timestamp_us=r.timestamp_us,
            reasons=list(r.reasons), scores=dict(r.scores), priority=r.priority, model_version=r.model_version,
            state=r.state, labeler=r.labeler, frame_uri=r.frame_uri, uncertainty_uri=r.uncertainty_uri,
            request=sent.get(r.sample_id), labelstudio_task=tasks.get(r.sample_id), cvat_image=cvat.get(r.sample_id),
        )
        for r in mined_rows[:limit]
    ]
    reasons = Counter(x for r in mined_rows for x in r.reasons)
    versions = sorted({r.model_version for r in rows} | ({s.model_version for s in seen} if seen else set()))
    return ReportData(
        title=title, catalog=redact_url(str(getattr(catalog, "url", catalog))),
        slices=slices, gallery=gallery, mined_total=len(mined_rows),
        seen_total=len(seen) if seen is not None else None, model_versions=versions,
        reasons=[r for r, _ in reasons.most_common()], drift_alarm_level=settings.scoring.drift_alarm,
        drift_reference=reference, notes=notes,
    )
