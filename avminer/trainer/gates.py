"""Per-condition release gates: a candidate may not regress on any slice beyond a margin.

Both models are evaluated on the same held-out labeled frames, per gate slice (:func:`gate_groups`):

- one slice per time of day (``day``, ``dusk``, ...), from the frames' slice keys
  ``time_of_day/weather/region``;
- ``fog``: fogged copies of the held-out ``day`` frames, made by the dataset tool's own fog model
  (:func:`avminer.datasets.conditions.apply_fog`, the one behind ``avminer dataset camvid --fog``) at a fixed
  density, ``beta`` = :data:`FOG_BETA` (0.02 1/m, ~150 m visibility), so the copies are the same for every
  model and every run; frames whose weather already is ``fog`` count too;
- ``region:<name>`` per region the frames name (``unknown`` is left out);
- ``all``: every held-out frame as it is (the fog copies excluded).

A slice fails when the candidate's mIoU is more than ``margin`` (absolute mIoU points, e.g. 0.02) below
production's. A slice production was scored on but the candidate was not counts as a failure too: a gate
that cannot compare must not pass silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avminer.errors import GateRefusedError
from avminer.selection.quality import ALL, FOG, condition_groups, quality_manifest

FOG_BETA = 0.02  # 1/m: Foggy Cityscapes' densest setting, ~150 m visibility

if TYPE_CHECKING:
    from avminer.models.ensemble import Ensemble
    from avminer.trainer.data import LabeledFrames
    from avminer.trainer.train import SliceMetrics


@dataclass
class SliceGate:
    """One slice's verdict."""

    slice: str
    candidate: float | None
    production: float | None
    delta: float | None  # candidate - production
    passed: bool
    reason: str = ""
    frames: int | None = None  # frames the candidate was scored on (None: given as a bare mIoU)


@dataclass
class GateReport:
    """Every slice's verdict; ``passed`` only if all slices passed."""

    margin: float
    slices: list[SliceGate] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.slices)

    @property
    def failures(self) -> list[SliceGate]:
        return [s for s in self.slices if not s.passed]

    def as_dict(self) -> dict[str, Any]:
        return {"margin": self.margin, "passed": self.passed, "slices": [asdict(s) for s in self.slices]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    def quality(self) -> dict[str, dict[str, float]]:
        """The candidate's mIoU and frames per gate slice: a released bundle's ``gate_quality``, which the
        miners' policy reads (:mod:`avminer.selection.quality`)."""
        return quality_manifest({s.slice: s.candidate for s in self.slices},
                                {s.slice: s.frames or 0 for s in self.slices})

    def table(self) -> str:
        """A fixed-width table for logs and the CLI."""

        def fmt(v: float | None) -> str:
            return "   -  " if v is None else f"{v:6.3f}"

        lines = [f"{'slice':32} {'cand':>6} {'prod':>6} {'delta':>7}  verdict (margin {self.margin})"]
        for s in self.slices:
            delta = "    -  " if s.delta is None else f"{s.delta:+7.3f}"
            verdict = "ok" if s.passed else f"REFUSED {s.reason}"
            lines.append(f"{s.slice:32} {fmt(s.candidate)} {fmt(s.production)} {delta}  {verdict}")
        return "\n".join(lines)


def _miou(v: float | SliceMetrics) -> float:
    return float(v) if isinstance(v, int | float) else float(v.miou)


def _frames(v: float | SliceMetrics | None) -> int | None:
    return None if v is None or isinstance(v, int | float) else int(v.frames)


def compare(
    candidate: Mapping[str, float | SliceMetrics],
    production: Mapping[str, float | SliceMetrics] | None,
    margin: float,
) -> GateReport:
    """Compare per-slice mIoU of a candidate with production's (None: first release, everything passes).

    Args:
        candidate: slice -> mIoU (or :class:`SliceMetrics`) of the candidate.
        production: the same for the model in production, on the same frames.
        margin: largest allowed drop in absolute mIoU.
    """
    report = GateReport(margin=margin)
    prod = {k: _miou(v) for k, v in (production or {}).items()}
    cand = {k: _miou(v) for k, v in candidate.items()}
    for key in sorted(set(cand) | set(prod)):
        c, p, n = cand.get(key), prod.get(key), _frames(candidate.get(key))
        if p is None or math.isnan(p):
            ok = c is not None and not math.isnan(c)
            report.slices.append(SliceGate(key, c, p, None, ok, "" if ok else "candidate mIoU is not finite", n))
        elif c is None or math.isnan(c):
            report.slices.append(SliceGate(key, c, p, None, False, "candidate was not evaluated on this slice", n))
        else:
            delta = c - p
            ok = delta >= -margin
            report.slices.append(SliceGate(key, c, p, delta, ok, "" if ok else f"drops {-delta:.3f} > {margin}", n))
    return report


def enforce(report: GateReport) -> GateReport:
    """Return the report if it passed, else raise :class:`GateRefusedError` carrying it (``.report``)."""
    if report.passed:
        return report
    names = ", ".join(f"{s.slice} ({s.reason})" for s in report.failures)
    err = GateRefusedError(f"release refused: slices regressed beyond margin {report.margin}: {names}\n{report.table()}")
    err.report = report  # type: ignore[attr-defined]
    raise err


def fog_copies(frames: LabeledFrames, beta: float = FOG_BETA) -> LabeledFrames:
    """Fogged copies of ``frames`` (labels unchanged): :func:`avminer.datasets.conditions.apply_fog` at ``beta``.

    Deterministic: the depth comes from the camera model and the frame's labels, the airlight from the
    frame itself. Frame ids get a ``+fog<beta>`` suffix, slice keys the weather ``fog``.
    """
    import numpy as np

    from avminer.datasets.conditions import apply_fog
    from avminer.trainer.data import LabeledFrames

    images = np.stack([apply_fog(img, beta, label=lab) for img, lab in zip(frames.images, frames.labels, strict=True)])
    slices = []
    for key in frames.slices:
        tod, _, rest = key.partition("/")
        slices.append(f"{tod}/{FOG}/{rest.partition('/')[2] or 'unknown'}")
    return LabeledFrames(images, frames.labels.copy(), [f"{f}+fog{beta:g}" for f in frames.frame_ids], slices,
                         list(frames.sequences))


def gate_groups(frames: LabeledFrames, fog_beta: float | None = FOG_BETA) -> tuple[LabeledFrames, list[list[str]]]:
    """The frames every model is gated on and, per frame, the gate slices it counts towards.

    Returns:
        (the held-out frames followed by the fogged copies of their ``day`` frames, one key list per
        frame); ``fog_beta`` None: no fog copies.
    """
    from avminer.trainer.data import LabeledFrames

    groups = [[ALL, *condition_groups(key)] for key in frames.slices]
    day = [i for i, key in enumerate(frames.slices) if key.split("/")[0] == "day" and key.split("/")[1:2] != [FOG]]
    if fog_beta is None or not day:
        return frames, groups
    fogged = fog_copies(frames.subset(day), fog_beta)
    return LabeledFrames.concat([frames, fogged]), groups + [[FOG] for _ in day]


def gate_metrics(
    model: Ensemble, frames: LabeledFrames, fog_beta: float | None = FOG_BETA, batch_size: int = 16,
    prepared: tuple[LabeledFrames, list[list[str]]] | None = None,
) -> dict[str, SliceMetrics]:
    """mIoU (and the rest of :class:`SliceMetrics`) per gate slice (see the module docstring).

    Args:
        prepared: :func:`gate_groups` of ``frames`` already computed (two models gated on the same frames
            share the fog copies).
    """
    from avminer.trainer.train import evaluate

    gated, groups = prepared if prepared is not None else gate_groups(frames, fog_beta)
    return evaluate(model, gated, batch_size, groups=groups)


def gate_models(
    candidate: Ensemble,
    production: Ensemble | None,
    frames: LabeledFrames,
    margin: float,
    batch_size: int = 16,
    raise_on_failure: bool = True,
    fog_beta: float | None = FOG_BETA,
) -> GateReport:
    """Evaluate both models per gate slice on ``frames`` and compare; raise GateRefusedError on a regression."""
    prepared = gate_groups(frames, fog_beta)
    cand = gate_metrics(candidate, frames, batch_size=batch_size, prepared=prepared)
    prod = gate_metrics(production, frames, batch_size=batch_size, prepared=prepared) if production is not None else None
    report = compare(cand, prod, margin)
    return enforce(report) if raise_on_failure else report


def gate_bundles(
    candidate: str | Path,
    production: str | Path | None,
    data_dir: str | Path,
    margin: float,
    holdout_non_day: bool = True,
    raise_on_failure: bool = True,
    fog_beta: float | None = FOG_BETA,
) -> GateReport:
    """Gate a candidate bundle against the production bundle on a CamVid-layout directory's held-out rows.

    Held out: every row whose split is not ``train`` and, with ``holdout_non_day`` (a day-only model),
    every non-day row; plus the fog copies of the held-out day rows. Each model is evaluated at its own
    input size.
    """
    from avminer.engines.bundle import load_bundle
    from avminer.errors import TrainerError
    from avminer.models.ensemble import load_ensemble
    from avminer.trainer.data import load_holdout

    def scores(path: str | Path) -> dict[str, SliceMetrics]:
        bundle = load_bundle(path)
        if bundle.torch_path is None:
            raise TrainerError(f"{bundle.path}: gating needs the bundle's model.pt")
        frames = load_holdout(Path(data_dir), (bundle.input_height, bundle.input_width), holdout_non_day)
        return gate_metrics(load_ensemble(bundle.torch_path), frames, fog_beta)

    report = compare(scores(candidate), scores(production) if production is not None else None, margin)
    return enforce(report) if raise_on_failure else report
