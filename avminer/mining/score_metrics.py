"""Prometheus export of the scoring stage: score histograms per slice and the drift gauges.

Scoring is pure numpy and exports nothing; the miner hands :func:`export_scores` to the
:class:`~avminer.scoring.scorer.Scorer` as its observer.
"""

from __future__ import annotations

from avminer import metrics
from avminer.scoring.scorer import FrameScore, Scorer


def export_scores(scored: list[FrameScore], scorer: Scorer) -> None:
    """Observe one scored batch: uncertainty, entropy and shift histograms, radar disagreements, drift."""
    for fs in scored:
        metrics.UNCERTAINTY.labels(fs.slice).observe(fs.scores["mi"])
        metrics.ENTROPY.labels(fs.slice).observe(fs.scores["entropy"])
        if scorer.reference is not None:
            metrics.SHIFT_SCORE.labels(fs.slice).observe(fs.scores["shift"])
        if fs.scores["radar"] >= 0.5:
            metrics.RADAR_DISAGREEMENT.labels(fs.slice).inc()
    for key, (value, alarm) in scorer.drift.values().items():
        metrics.DRIFT.labels(key).set(value)
        metrics.DRIFT_ALARM.labels(key).set(1.0 if alarm else 0.0)
