"""The scoring stage: one call per engine batch turns ensemble outputs into per-frame scores.

For every frame the :class:`Scorer` computes

- ``mi``: mutual information (BALD) pooled by ``settings.aggregation``, rare-class pixels weighted by
  ``settings.rare_class_weight`` — the uncertainty score mining ranks by;
- ``entropy``, ``expected_entropy``, ``variation_ratio``, ``margin``: the other uncertainty measures,
  pooled the same way without class weights (for analysis and the catalog);
- ``shift``: squared Mahalanobis distance of the pooled features to the frame's slice reference
  (0 when the bundle has no reference statistics);
- ``msp``: the max-softmax baseline ``1 - mean max p̄``;
- ``radar``: camera-radar disagreement in [0, 1] (0 without a radar scan),

tags its condition slice and updates the per-slice drift monitor. It exports no metrics: the miner's
observer (:func:`avminer.mining.score_metrics.export_scores`) sets the ``avminer_drift_statistic`` /
``avminer_drift_alarm`` gauges and the per-frame uncertainty and shift histograms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from avminer.config import ScoringSettings
from avminer.errors import ScoringError
from avminer.geometry import Pinhole
from avminer.scoring.conditions import tag
from avminer.scoring.inputs import FrameInfo, RadarSweep
from avminer.scoring.radar import radar_disagreement
from avminer.scoring.shift import ALL, DriftMonitor, ShiftReference, max_softmax_score
from avminer.scoring.uncertainty import (
    MEASURES,
    aggregate,
    mean_prediction,
    rare_class_weights,
    uncertainty_maps,
)

SCORE_KEYS = ("mi", "entropy", "expected_entropy", "variation_ratio", "margin", "shift", "msp", "radar")
"""Keys of :attr:`FrameScore.scores`, always all present."""


@dataclass
class FrameScore:
    """Everything the selection stage and the sinks need to know about one scored frame.

    Attributes:
        slice: condition slice key ``time_of_day/weather/region``.
        scores: :data:`SCORE_KEYS` -> value.
        embedding: ``[D]`` float32 feature vector for near-duplicate checks; standardised and centred on
            the reference's pooled mean when a reference exists, so cosine similarity is meaningful.
        uncertainty_map: ``[H/s, W/s]`` float32 per-pixel mutual information (nats), s = ``map_stride``.
        member_probs: ``[K, C, H, W]`` the frame's member probabilities (a view into the engine's batch).
        prediction: ``[H, W]`` uint8 class ids (argmax of the mean probabilities), computed on first use:
            at full resolution it costs as much as all the strided uncertainty maps together, and only
            radar-joined and mined frames need it.
    """

    slice: str
    scores: dict[str, float]
    embedding: np.ndarray
    uncertainty_map: np.ndarray
    member_probs: np.ndarray = field(repr=False)
    _prediction: np.ndarray | None = field(default=None, repr=False)

    @property
    def prediction(self) -> np.ndarray:
        if self._prediction is None:
            self._prediction = mean_prediction(self.member_probs[:, None])[0]
        return self._prediction


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
        out_probs: np.ndarray,
        features: np.ndarray,
        images: np.ndarray,
        frames: Sequence[FrameInfo],
        radar: Sequence[RadarSweep | None],
    ) -> list[FrameScore]:
        """Score one batch.

        Args:
            out_probs: ``[K, N, C, H, W]`` member probabilities.
            features: ``[N, D]`` pooled features.
            images: ``[N, H, W, 3]`` uint8 frames at the engine's input size (for condition inference).
            frames: the N frames (metadata, GPS, native size).
            radar: per frame the joined radar scan, or None.

        Raises:
            ScoringError: inconsistent batch sizes or shapes.
        """
        probs = np.asarray(out_probs)
        if probs.ndim != 5:
            raise ScoringError(f"probs must be [K, N, C, H, W], got shape {probs.shape}")
        n = probs.shape[1]
        feats = np.asarray(features)
        if feats.ndim != 2 or len(feats) != n or len(images) != n or len(frames) != n or len(radar) != n:
            raise ScoringError(
                f"batch sizes differ: probs {n}, features {feats.shape}, images {len(images)}, "
                f"frames {len(frames)}, radar {len(radar)}"
            )
        if probs.shape[2] != len(self.classes):
            raise ScoringError(f"probs have {probs.shape[2]} classes, the bundle names {len(self.classes)}")
        s = self.settings
        slices = [str(tag(f.conditions, images[i], f.gps, s)) for i, f in enumerate(frames)]
        # Uncertainty maps on a strided grid: per-pixel measures dominate scoring's cost, and frame-level
        # pooling (mean, top-k, grid max) is insensitive to skipping every other row and column.
        step = s.map_stride
        sub = np.ascontiguousarray(probs[..., ::step, ::step]) if step > 1 else probs  # [K, N, C, H/s, W/s]
        maps = uncertainty_maps(sub, MEASURES)  # name -> [N, H/s, W/s]
        pred_sub = mean_prediction(sub)  # [N, H/s, W/s] for the rare-class weights

        def pool(name: str, weights: np.ndarray | None = None) -> np.ndarray:
            return aggregate(maps[name], s.aggregation, s.topk_fraction, s.grid, weights)

        pooled = {name: pool(name) for name in MEASURES if name != "mi"}
        pooled["mi"] = pool("mi", rare_class_weights(pred_sub, self.classes, s.rare_class_weight))
        pooled["msp"] = max_softmax_score(sub)
        if self.reference is not None and self.reference.dim == feats.shape[1]:
            pooled["shift"] = self.reference.mahalanobis(feats, slices)
        else:
            pooled["shift"] = np.zeros(n, dtype=np.float32)
        h, w = probs.shape[3:]
        embeddings = self.embed(feats)
        out = [
            FrameScore(
                slice=slices[i],
                scores={k: float(pooled[k][i]) for k in SCORE_KEYS if k != "radar"},
                embedding=embeddings[i],
                uncertainty_map=maps["mi"][i],
                member_probs=probs[:, i],
            )
            for i in range(n)
        ]
        for fs, frame, scan in zip(out, frames, radar, strict=True):
            gps = frame.gps
            fs.scores["radar"] = 0.0 if scan is None else radar_disagreement(
                fs.prediction, scan.detections, (frame.width or w, frame.height or h),
                self.camera, self.classes, ego_speed_mps=gps.speed_mps if gps is not None else 0.0,
            )
        if self.reference is not None:
            for key in sorted(set(slices)):
                self.drift.update(key, [fs.scores["shift"] for fs in out if fs.slice == key])
        if self.observer is not None:
            self.observer(out, self)
        return out
