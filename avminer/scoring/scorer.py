"""The scoring stage: one call per engine batch turns the engine's compact outputs into per-frame scores.

The per-pixel work (softmax, entropies, mutual information, pooling, argmax) happens inside the model
graph (:mod:`avminer.models.head`); this stage reads the pooled columns the configured
``settings.aggregation`` names and adds what needs the host. For every frame, :data:`COMPONENTS`:

- ``mi``: mutual information (BALD) pooled by ``aggregation``, rare-class pixels weighted in the graph
  — the uncertainty score mining ranks by;
- ``entropy``, ``expected_entropy``, ``variation_ratio``, ``margin``: the other uncertainty measures,
  pooled the same way without class weights (for analysis and the catalog);
- ``shift``: squared Mahalanobis distance of the pooled features to the frame's slice reference
  (0 when the bundle has no reference statistics);
- ``msp``: the max-softmax baseline ``1 - mean max p̄``;
- ``radar``: camera-radar disagreement in [0, 1] (0 without a radar scan).

It tags each frame's condition slice and updates the per-slice drift monitor. It exports no metrics: the
miner's observer (:func:`avminer.mining.score_metrics.export_scores`) sets the ``avminer_drift_statistic``
/ ``avminer_drift_alarm`` gauges and the per-frame uncertainty and shift histograms.

A new score component is one function registered with :func:`component` (here or in a module this one
imports); it appears in every :class:`FrameScore` and Decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from avminer.config import ScoringSettings
from avminer.errors import ScoringError
from avminer.geometry import Pinhole
from avminer.scoring.conditions import tag
from avminer.scoring.inputs import FrameInfo, RadarSweep
from avminer.scoring.radar import radar_disagreements
from avminer.scoring.shift import ALL, DriftMonitor, ShiftReference
from avminer.scoring.uncertainty import MEASURES


class EngineBatch(Protocol):
    """What scoring reads of an engine's output (:class:`avminer.engines.contract.EngineOutput`)."""

    @property
    def features(self) -> np.ndarray:
        """float32 ``[N, D]`` pooled features."""
        ...

    def __len__(self) -> int: ...

    def score(self, name: str) -> np.ndarray:
        """One pooled score column ``[N]`` computed in the graph (``mi_topk``, ``msp``, ...)."""
        ...

    def uncertainty_map(self, row: int) -> np.ndarray:
        """float32 ``[h, w]`` strided MI map of one frame."""
        ...

    def prediction(self, row: int) -> np.ndarray:
        """uint8 ``[H, W]`` argmax class ids of one frame at input resolution."""
        ...


@dataclass
class BatchContext:
    """One batch as score components see it."""

    out: EngineBatch
    settings: ScoringSettings
    slices: list[str]
    frames: Sequence[FrameInfo]
    radar: Sequence[RadarSweep | None]
    classes: list[str]
    reference: ShiftReference | None
    camera: Pinhole | None
    input_hw: tuple[int, int]


Component = Callable[[BatchContext], np.ndarray]
COMPONENTS: dict[str, Component] = {}
"""Score name -> function of the batch returning ``[N]`` values (the keys of :attr:`FrameScore.scores`)."""


def component(name: str) -> Callable[[Component], Component]:
    """Register a score component under ``name`` (decorator)."""

    def register(fn: Component) -> Component:
        COMPONENTS[name] = fn
        return fn

    return register


def _pooled(measure: str) -> Component:
    def read(ctx: BatchContext) -> np.ndarray:
        return np.asarray(ctx.out.score(f"{measure}_{ctx.settings.aggregation}"), dtype=np.float32)

    return read


for _measure in MEASURES:
    component(_measure)(_pooled(_measure))


@component("shift")
def _shift(ctx: BatchContext) -> np.ndarray:
    feats = np.asarray(ctx.out.features)
    if ctx.reference is None or ctx.reference.dim != feats.shape[1]:
        return np.zeros(len(ctx.frames), dtype=np.float32)
    return np.asarray(ctx.reference.mahalanobis(feats, ctx.slices), dtype=np.float32)


@component("msp")
def _msp(ctx: BatchContext) -> np.ndarray:
    return np.asarray(ctx.out.score("msp"), dtype=np.float32)


@component("radar")
def _radar(ctx: BatchContext) -> np.ndarray:
    """Only radar-joined frames read their argmax (a device engine copies just those rows); one call per batch."""
    h, w = ctx.input_hw
    out = np.zeros(len(ctx.frames), dtype=np.float32)
    joined = [(i, scan) for i, scan in enumerate(ctx.radar) if scan is not None]
    if not joined:
        return out
    rows = [i for i, _ in joined]
    frames = [ctx.frames[i] for i in rows]
    out[rows] = radar_disagreements(
        [ctx.out.prediction(i) for i in rows], [scan.detections for _, scan in joined],
        [(f.width or w, f.height or h) for f in frames], ctx.camera, ctx.classes,
        [f.gps.speed_mps if f.gps is not None else 0.0 for f in frames],
    )
    return out


SCORE_KEYS = ("mi", "entropy", "expected_entropy", "variation_ratio", "margin", "shift", "msp", "radar")
"""Keys of :attr:`FrameScore.scores` of the built-in components, always all present."""


@dataclass
class FrameScore:
    """Everything the selection stage and the sinks need to know about one scored frame.

    Attributes:
        slice: condition slice key ``time_of_day/weather/region``.
        scores: component name (:data:`COMPONENTS`) -> value.
        embedding: ``[D]`` float32 feature vector for near-duplicate checks; standardised and centred on
            the reference's pooled mean when a reference exists, so cosine similarity is meaningful.
        batch: the engine output this frame came from (its map and argmax are read from it on demand).
        row: the frame's row in ``batch``.
    """

    slice: str
    scores: dict[str, float]
    embedding: np.ndarray
    batch: EngineBatch = field(repr=False)
    row: int = 0

    @property
    def uncertainty_map(self) -> np.ndarray:
        """``[H/s, W/s]`` float32 per-pixel mutual information (nats), s = the head's map stride."""
        return self.batch.uncertainty_map(self.row)

    @property
    def prediction(self) -> np.ndarray:
        """``[H, W]`` uint8 class ids (argmax of the mean probabilities) at the engine's input size,
        fetched on first use: only radar-joined and mined frames need it."""
        return self.batch.prediction(self.row)


class BatchScorer(Protocol):
    """The scoring stage as the pipeline sees it (:class:`Scorer`)."""

    def score(self, out: EngineBatch, images: np.ndarray, frames: Sequence[FrameInfo],
              radar: Sequence[RadarSweep | None]) -> list[FrameScore]: ...


class Scorer:
    """Scores engine batches; holds the per-slice drift monitor.

    Args:
        settings: ``settings.scoring``.
        classes: class names by id (the bundle's ``classes``).
        reference: the bundle's shift reference (None: shift scores are 0 and drift is not tracked).
        camera: camera model for radar projection at the frames' native size (None: 60 degree HFOV).
        observer: called with every scored batch and the scorer (its drift monitor, its reference);
            the miner passes :func:`avminer.mining.score_metrics.export_scores` to update the Prometheus
            histograms and drift gauges. Scoring itself exports nothing.
    """

    def __init__(
        self,
        settings: ScoringSettings,
        classes: Sequence[str],
        reference: ShiftReference | None,
        camera: Pinhole | None = None,
        observer: Callable[[list[FrameScore], Scorer], None] | None = None,
    ) -> None:
        self.settings = settings
        self.classes = list(classes)
        self.reference = reference
        self.camera = camera
        self.observer = observer
        self.drift = DriftMonitor(settings.drift_window, settings.drift_alarm, reference)

    def set_reference(self, reference: ShiftReference | None) -> None:
        """Swap the shift reference (a new model bundle); the drift windows restart."""
        self.reference = reference
        self.drift = DriftMonitor(self.settings.drift_window, self.settings.drift_alarm, reference)

    def embed(self, features: np.ndarray) -> np.ndarray:
        """Embeddings for near-duplicate checks: ``[N, D]`` float32 (see :attr:`FrameScore.embedding`)."""
        f = np.asarray(features, dtype=np.float32)
        if self.reference is None or self.reference.dim != f.shape[1]:
            return f.copy()
        ref = self.reference.slices[ALL]
        return (f / self.reference.scale - ref.mean).astype(np.float32)

    def score(
        self,
        out: EngineBatch,
        images: np.ndarray,
        frames: Sequence[FrameInfo],
        radar: Sequence[RadarSweep | None],
    ) -> list[FrameScore]:
        """Score one batch.

        Args:
            out: the engine's compact outputs for the batch.
            images: ``[N, H, W, 3]`` uint8 frames at the engine's input size (for condition inference).
            frames: the N frames (metadata, GPS, native size).
            radar: per frame the joined radar scan, or None.

        Raises:
            ScoringError: inconsistent batch sizes.
        """
        n = len(out)
        feats = np.asarray(out.features)
        if feats.ndim != 2 or len(feats) != n or len(images) != n or len(frames) != n or len(radar) != n:
            raise ScoringError(
                f"batch sizes differ: engine output {n}, features {feats.shape}, images {len(images)}, "
                f"frames {len(frames)}, radar {len(radar)}"
            )
        s = self.settings
        slices = [str(tag(f.conditions, images[i], f.gps, s)) for i, f in enumerate(frames)]
        hw = (int(images.shape[1]), int(images.shape[2])) if n else (0, 0)
        ctx = BatchContext(out, s, slices, frames, radar, self.classes, self.reference, self.camera, hw)
        values = {name: fn(ctx) for name, fn in COMPONENTS.items()}  # name -> [N]
        embeddings = self.embed(feats)
        scored = [
            FrameScore(slice=slices[i], scores={k: float(v[i]) for k, v in values.items()},
                       embedding=embeddings[i], batch=out, row=i)
            for i in range(n)
        ]
        if self.reference is not None:
            for key in sorted(set(slices)):
                self.drift.update(key, [fs.scores["shift"] for fs in scored if fs.slice == key])
        if self.observer is not None:
            self.observer(scored, self)
        return scored
