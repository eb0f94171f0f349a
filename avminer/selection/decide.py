"""The selection stage's output: scored frames in, :class:`~avminer.events.records.Decision` s out.

A policy is one class with ``select(candidates) -> verdicts`` and ``stats()`` (:class:`Policy`);
:func:`decide` turns the frames the scorer scored into the policy's candidates, asks the policy, and
builds the Decision of every frame — the system's central output — so the pipeline only moves it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# The one import of the event records in selection (an import-linter exception): the Decision record is
# selection's output, built here so the wiring only moves it.
from avminer.events.records import Decision
from avminer.selection.policy import Candidate, Verdict


class FrameRef(Protocol):
    """The frame facts a Decision names (:class:`avminer.events.records.CameraFrame` has them)."""

    @property
    def sample_id(self) -> str: ...

    @property
    def frame_id(self) -> str: ...

    @property
    def vehicle_id(self) -> str: ...

    @property
    def camera_id(self) -> str: ...

    @property
    def timestamp_us(self) -> int: ...


class Policy(Protocol):
    """A selection policy (:class:`~avminer.selection.policy.SelectionPolicy` and the baselines)."""

    def select(self, cands: Sequence[Candidate]) -> list[Verdict]:
        """Decide a batch in arrival order: one verdict per candidate."""
        ...

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per slice at least ``mined_rate``, ``target_rate`` and ``threshold`` (None if it has none)."""
        ...

    def set_model_quality(self, quality: Mapping[str, Any] | None) -> None:
        """The release's measured quality per condition (``manifest["gate_quality"]``, None: none), given
        before the first frame that model scored is selected."""
        ...


class ScoredFrame(Protocol):
    """What selection reads of a scored frame (:class:`avminer.scoring.scorer.FrameScore`)."""

    @property
    def slice(self) -> str: ...

    @property
    def scores(self) -> Mapping[str, float]: ...

    @property
    def embedding(self) -> np.ndarray | None: ...


@dataclass(frozen=True, slots=True)
class Position:
    """Where a frame was read from (the Decision records it)."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Selected:
    """One frame's Decision with what the policy said beyond it.

    Attributes:
        decision: the Decision (mined or not, reasons, every score, the model version).
        priority: the policy's priority of the frame.
        rejected: why it was not mined (``warmup``, ``below_threshold``, ``duplicate``, ...), None if mined.
    """

    decision: Decision
    priority: float
    rejected: str | None


def candidate(frame: FrameRef, scored: ScoredFrame, model_version: str = "") -> Candidate:
    """The policy's view of one scored frame."""
    return Candidate(
        sample_id=frame.sample_id, camera_key=f"{frame.vehicle_id}/{frame.camera_id}", slice=scored.slice,
        scores=dict(scored.scores), embedding=scored.embedding, timestamp_s=frame.timestamp_us / 1e6,
        model_version=model_version,
    )


def decide(
    policy: Policy,
    frames: Sequence[FrameRef],
    scored: Sequence[ScoredFrame],
    positions: Sequence[Position],
    model_version: str,
    now_us: int | None = None,
) -> list[Selected]:
    """Select among one batch of scored frames and return every frame's Decision, in order.

    Args:
        policy: decides which frames are mined.
        frames: the batch's frames.
        scored: their scores, same order.
        positions: where each was read from, same order.
        model_version: the model that scored them (every Decision names it).
        now_us: decision time (default: now).
    """
    verdicts = policy.select([candidate(f, s, model_version) for f, s in zip(frames, scored, strict=True)])
    decided_at = int(time.time() * 1_000_000) if now_us is None else now_us
    out = []
    for frame, s, v, pos in zip(frames, scored, verdicts, positions, strict=True):
        d = Decision(
            sample_id=frame.sample_id, frame_id=frame.frame_id, vehicle_id=frame.vehicle_id,
            camera_id=frame.camera_id, timestamp_us=frame.timestamp_us, model_version=model_version,
            slice=s.slice, mined=bool(v.mined), scores={k: float(x) for k, x in {**s.scores, **v.scores}.items()},
            reasons=list(v.reasons), topic=pos.topic, partition=pos.partition, offset=pos.offset,
            decided_at_us=decided_at,
        )
        out.append(Selected(d, float(v.priority), v.rejected))
    return out
