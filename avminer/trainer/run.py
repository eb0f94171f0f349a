"""One training run end to end: load labeled frames, train the ensemble, evaluate per slice, export a bundle.

Used by ``avminer train run`` and ``tools/train_starter.py`` (the starter bundle is this run on the CamVid
day sequences, with the day ``val`` split and the dusk sequence held out).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from avminer.datasets.layout import read_classes, read_layout
from avminer.errors import TrainerError
from avminer.models.arch import erfnet_arch
from avminer.models.ensemble import Ensemble, build_ensemble
from avminer.trainer.data import LabeledFrames, load_camvid
from avminer.trainer.release import (
    bundle_dir_size,
    export_release_bundle,
    fit_reference,
    require_input_multiple,
)
from avminer.trainer.train import SliceMetrics, TrainConfig, train_ensemble

log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    """What to train on and how big the net is."""

    data_dir: Path
    out_dir: Path
    work_dir: Path
    version: str = "dev"
    members: int = 4
    width: float = 0.25
    dropout: tuple[float, float] = (0.03, 0.1)  # lighter than the paper's 0.3: short runs, small nets
    input_hw: tuple[int, int] = (176, 240)
    day_only: bool = False
    train_sequences: list[str] | None = None
    limit: int | None = None
    drive_logs: list[Path] = field(default_factory=list)  # more training frames: drive logs with .gt.avro
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class RunOutcome:
    model: Ensemble
    metrics: dict[str, SliceMetrics]
    seconds_per_epoch: float
    seconds_total: float
    bundle_path: Path | None
    bundle_bytes: int


def load_camvid_splits(spec: RunSpec) -> tuple[LabeledFrames, LabeledFrames]:
    """(train, held-out) frames of a CamVid-layout directory.

    Train: ``split == train`` rows (only ``time_of_day == day`` with ``day_only``, only
    ``train_sequences`` if given). Held out: every ``val`` row plus, with ``day_only``, every non-day row
    (so the report shows what a day-only model does at dusk).
    """
    rows = read_layout(spec.data_dir)
    tods = ["day"] if spec.day_only else None
    train = load_camvid(
        spec.data_dir, spec.input_hw, splits=["train"], time_of_day=tods, sequences=spec.train_sequences,
        limit=spec.limit, progress=spec.train.progress,
    )
    held_parts = []
    if any(r.split != "train" for r in rows):
        held_parts.append(load_camvid(spec.data_dir, spec.input_hw, splits=[r.split for r in rows if r.split != "train"],
                                      limit=spec.limit, progress=spec.train.progress))
    if spec.day_only and any(r.time_of_day != "day" for r in rows):
        other = sorted({r.time_of_day for r in rows if r.time_of_day != "day"})
        held_parts.append(load_camvid(spec.data_dir, spec.input_hw, splits=["train"], time_of_day=other,
                                      limit=spec.limit, progress=spec.train.progress))
    if not held_parts:
        raise TrainerError(f"{spec.data_dir}: no held-out frames (no val split, nothing but day); cannot evaluate")
    return train, LabeledFrames.concat(held_parts)


def run_camvid(spec: RunSpec) -> RunOutcome:
    """Train an ensemble on a CamVid-layout directory and export it as a bundle at ``spec.out_dir``.

    Under ``torchrun`` every rank trains (:func:`avminer.trainer.train.train_ensemble`) and only rank 0
    exports; the others return with ``bundle_path`` None.
    """
    require_input_multiple(spec.input_hw)
    t0 = time.perf_counter()
    train, held = load_camvid_splits(spec)
    if spec.drive_logs:
        from avminer.trainer.data import load_drive_log

        train = LabeledFrames.concat([train, *(load_drive_log(p, spec.input_hw, spec.limit) for p in spec.drive_logs)])
    classes, _ = read_classes(spec.data_dir)
    log.info("training on %d frames (%s), holding out %d (%s)", len(train), sorted(set(train.slices)),
             len(held), sorted(set(held.slices)))
    model = build_ensemble(erfnet_arch(width=spec.width, num_classes=len(classes), members=spec.members, dropout=spec.dropout),
                           seed=spec.train.seed)
    result = train_ensemble(model, train, spec.train, spec.work_dir, eval_frames=held)
    if result.rank != 0:  # data-parallel under torchrun: rank 0 writes the bundle
        return RunOutcome(result.model, result.metrics, result.seconds_per_epoch, time.perf_counter() - t0, None, 0)
    reference = fit_reference(result.model, train)
    trained_on = {
        "dataset": str(spec.data_dir.name),
        "frames": len(train),
        "slices": sorted(set(train.slices)),
        "sequences": sorted(set(train.sequences)),
        "held_out_frames": len(held),
        "epochs": spec.train.epochs,
        "seconds_per_epoch": round(result.seconds_per_epoch, 2),
        "config": {k: v for k, v in vars(spec.train).items() if k != "progress"},
    }
    bundle = export_release_bundle(
        result.model, spec.out_dir, version=spec.version, input_hw=spec.input_hw, reference=reference,
        metrics=result.metrics, trained_on=trained_on, classes=classes,
    )
    total = time.perf_counter() - t0
    size = bundle_dir_size(bundle.path)
    log.info("bundle %s: %.2f MB, %.1f s/epoch, %.0f s total", bundle.path, size / 1e6, result.seconds_per_epoch, total)
    return RunOutcome(result.model, result.metrics, result.seconds_per_epoch, total, bundle.path, size)
