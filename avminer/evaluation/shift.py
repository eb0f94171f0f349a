"""Shift benchmark: how well the shift score tells new conditions from the training domain.

For a model trained on day frames only, every frame of a CamVid-layout folder is run through the
ensemble, clear and in synthetic variants, and the AUROC of three per-frame scores is computed for:

- ``dusk_vs_day``: clear dusk frames (CamVid 0001TP) against clear day frames;
- ``fog<beta>_vs_clear``: day frames fogged with :func:`~avminer.datasets.conditions.apply_fog` (beta in
  1/m, at the native resolution with the label-aware depth) against the same frames clear;
- ``night_vs_day`` (``night``): :func:`~avminer.datasets.conditions.apply_night` variants of the day frames.

Scores: ``mahalanobis`` (squared distance to the bundle's pooled reference, the score the miner
uses), ``msp`` (the max-softmax baseline, 1 - mean max probability) and ``mi`` (mean mutual
information, for reference). ``*_heldout`` repeats the comparison with negatives restricted to day
frames outside the ``train`` split, which the reference statistics have not seen. The drift
statistic (:class:`~avminer.scoring.shift.DriftMonitor`, one window holding each group's frames) and
its alarm are reported per group.

``data`` is the pool (its day ``train`` rows fit a reference when the bundle has none); ``eval_data``
(default: the pool) supplies the frames evaluated. Every manifest row is used. ``avminer bench shift``
is the command.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avminer.datasets.layout import CamvidRow

GOAL = 0.95
"""AUROC the shift score must reach on every comparison (and not fall below the baseline)."""

Scores = dict[str, dict[str, list[float]]]
"""group -> score name -> one value per frame."""


@dataclass(frozen=True)
class ShiftBenchConfig:
    """What :func:`run_shift_bench` evaluates.

    Attributes:
        data: CamVid-layout pool (fits a reference when the bundle has none).
        eval_data: the frames evaluated (default: ``data``).
        model: bundle path (default: the starter bundle).
        fogs: fog densities beta in 1/m.
        night: also evaluate night variants of the day frames.
        batch: frames per engine batch.
        backend: engine backend.
        threads: intra-op threads (0: library default).
        drift_alarm: the drift statistic's alarm level (``scoring.drift_alarm``).
    """

    data: Path
    eval_data: Path | None = None
    model: Path | None = None
    fogs: tuple[float, ...] = (0.01, 0.02, 0.05)
    night: bool = False
    batch: int = 8
    backend: str = "auto"
    threads: int = 0
    drift_alarm: float = 3.0


def run_shift_bench(cfg: ShiftBenchConfig) -> dict[str, Any]:
    """Score every frame and variant, then compare; returns the figures as one JSON-ready dict.

    Raises:
        AvminerError: no day frames to compare against (and the dataset and engine errors).
    """
    from avminer.datasets.layout import read_layout
    from avminer.engines import default_bundle_path, open_engine

    start = time.perf_counter()
    pool = read_layout(cfg.data)
    rows = read_layout(cfg.eval_data) if cfg.eval_data else pool
    engine = open_engine(cfg.model or default_bundle_path(), backend=cfg.backend, threads=cfg.threads)
    try:
        reference, reference_source = _reference(engine, pool, cfg.batch)
        scores, heldout = _score_frames(engine, rows, reference, cfg)
    finally:
        engine.close()
    bundle = engine.bundle
    comparisons = _comparisons(scores, heldout, cfg, str(cfg.eval_data or cfg.data))
    return {
        "model": bundle.version,
        "bundle": str(bundle.path),
        "backend": engine.backend if isinstance(getattr(engine, "backend", None), str) else cfg.backend,
        "data": str(cfg.data),
        "eval_data": str(cfg.eval_data or cfg.data),
        "reference": reference_source,
        "reference_mean": round(reference.slices["all"].score_mean, 2),
        "reference_std": round(reference.slices["all"].score_std, 2),
        "feature_dim": reference.dim,
        "frames": sum(len(v["msp"]) for v in scores.values()),
        "auroc": comparisons,
        "drift": _drift(scores, reference, cfg.drift_alarm),
        "drift_alarm_level": cfg.drift_alarm,
        "goal": GOAL,
        "wall_s": round(time.perf_counter() - start, 1),
    }


def _infer(engine: Any, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(member probabilities, pooled features) of images resized to the engine's input."""
    from avminer.engines.base import resize_batch

    out = engine.infer(resize_batch(images, engine.bundle.input_height, engine.bundle.input_width),
                       probs=True)  # the msp and mi baselines need the probabilities
    assert out.probs is not None
    return out.probs, out.features


def _reference(engine: Any, pool: Sequence[CamvidRow], batch: int) -> tuple[Any, str]:
    """The bundle's shift reference, or one fitted on the pool's day (training) frames when it has none."""
    from avminer.datasets.layout import load_image
    from avminer.scoring.shift import ShiftReference

    if engine.bundle.reference_path is not None:
        return ShiftReference.load(engine.bundle.reference_path), "bundle"
    fit_rows = [r for r in pool if r.time_of_day == "day" and r.split == "train"] or \
               [r for r in pool if r.time_of_day == "day"]
    feats = [_infer(engine, [load_image(r.image_path) for r in fit_rows[i: i + batch]])[1]
             for i in range(0, len(fit_rows), batch)]
    source = f"fitted here on {len(fit_rows)} day frames of --data (the bundle has none)"
    return ShiftReference.fit({"all": np.concatenate(feats)}), source


def _score_frames(
    engine: Any, rows: Sequence[CamvidRow], reference: Any, cfg: ShiftBenchConfig
) -> tuple[Scores, dict[str, list[bool]]]:
    """Per group (``day``, ``dusk``, ``fog<beta>``, ``night``) the three scores of every frame, and held-out flags."""
    from avminer.datasets.conditions import apply_fog, apply_night
    from avminer.datasets.layout import load_image, load_label
    from avminer.scoring.shift import max_softmax_score
    from avminer.scoring.uncertainty import aggregate, mutual_information

    scores: Scores = defaultdict(lambda: defaultdict(list))
    heldout: dict[str, list[bool]] = defaultdict(list)
    pending: list[tuple[str, bool, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        probs, feats = _infer(engine, [img for _, _, img in pending])
        maha = reference.mahalanobis(feats)  # pooled reference: distance to the training domain
        msp = max_softmax_score(probs)
        mi = aggregate(mutual_information(probs), "mean")
        for i, (group, held, _) in enumerate(pending):
            scores[group]["mahalanobis"].append(float(maha[i]))
            scores[group]["msp"].append(float(msp[i]))
            scores[group]["mi"].append(float(mi[i]))
            heldout[group].append(held)
        pending.clear()

    def add(group: str, held: bool, image: np.ndarray) -> None:
        pending.append((group, held, image))
        if len(pending) >= cfg.batch:
            flush()

    for idx, row in enumerate(rows):
        image = load_image(row.image_path)
        held = row.split != "train"
        if row.time_of_day != "day":
            add(row.time_of_day, held, image)  # dusk (and any real night) frames, clear
            continue
        add("day", held, image)
        label = load_label(row.label_path) if cfg.fogs else None
        for beta in cfg.fogs:
            add(f"fog{beta:g}", held, apply_fog(image, beta, label=label))
        if cfg.night:
            add("night", held, apply_night(image, seed=idx))
    flush()
    return scores, heldout


def _comparisons(
    scores: Scores, heldout: dict[str, list[bool]], cfg: ShiftBenchConfig, where: str
) -> dict[str, dict[str, Any]]:
    """AUROC of each score, each shifted group against the day frames (and against held-out day only)."""
    from avminer.errors import AvminerError
    from avminer.scoring.evaluate import auroc

    if "day" not in scores:
        raise AvminerError(f"{where} has no day frames to compare against")
    day = {k: np.array(v) for k, v in scores["day"].items()}
    day_held = np.array(heldout["day"])
    pairs = [("dusk_vs_day", "dusk"), *((f"fog{b:g}_vs_clear", f"fog{b:g}") for b in cfg.fogs)]
    if cfg.night or "night" in scores:
        pairs.append(("night_vs_day", "night"))
    comparisons = {}
    for name, group in pairs:
        if group not in scores:
            continue
        entry: dict[str, Any] = {"positives": len(scores[group]["msp"]), "negatives": int(day_held.size)}
        for score, values in scores[group].items():
            pos = np.array(values)
            entry[score] = round(auroc(pos, day[score]), 4)
            if day_held.any():
                entry[f"{score}_heldout"] = round(auroc(pos, day[score][day_held]), 4)
        # the goal: >= 0.95 and not below the baseline (both at a perfect 1.0 is a tie, reported as such)
        entry["beats_baseline"] = bool(entry["mahalanobis"] > entry["msp"])
        entry["goal_met"] = bool(entry["mahalanobis"] >= GOAL and entry["mahalanobis"] >= entry["msp"])
        comparisons[name] = entry
    return comparisons


def _drift(scores: Scores, reference: Any, alarm: float) -> dict[str, dict[str, Any]]:
    """The drift statistic per group, one window holding all of the group's frames."""
    from avminer.scoring.shift import DriftMonitor

    drift = {}
    for group, by_score in scores.items():
        monitor = DriftMonitor(window=len(by_score["mahalanobis"]), alarm=alarm, reference=reference)
        state = monitor.update(group, by_score["mahalanobis"])
        drift[group] = {"z": round(state.value, 2), "alarm": state.alarm, "frames": state.frames,
                        "mean_mahalanobis": round(float(np.mean(by_score["mahalanobis"])), 2)}
    return drift


def format_report(result: dict[str, Any]) -> str:
    """The figures of :func:`run_shift_bench` as the table ``avminer bench shift`` prints."""
    lines = [
        f"model {result['model']} ({result['reference']}); {result['frames']} frames in {result['wall_s']} s",
        f"{'comparison':22s} {'n+':>5s} {'mahalanobis':>12s} {'held-out':>9s} {'msp':>7s} {'mi':>7s}  goal",
    ]
    for name, e in result["auroc"].items():
        verdict = ("met" if e["beats_baseline"] else "met (ties baseline)") if e["goal_met"] else "NOT met"
        lines.append(f"{name:22s} {e['positives']:5d} {e['mahalanobis']:12.4f} "
                     f"{e.get('mahalanobis_heldout', float('nan')):9.4f} {e['msp']:7.4f} {e['mi']:7.4f}  {verdict}")
    lines.append(f"drift z per group (alarm above {result['drift_alarm_level']:g}):")
    for group, d in result["drift"].items():
        lines.append(f"  {group:12s} z={d['z']:8.2f} {'ALARM' if d['alarm'] else 'ok':5s} ({d['frames']} frames)")
    return "\n".join(lines)
