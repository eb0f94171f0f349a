"""Selection returns the Decision: decide() over any Policy (one class), SelectionPolicy included."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avminer.config import SelectionSettings
from avminer.events.records import CameraFrame
from avminer.selection.decide import Policy, Position, decide
from avminer.selection.policy import Candidate, SelectionPolicy, Verdict


@dataclass
class _Scored:
    slice: str
    scores: dict[str, float]
    embedding: np.ndarray | None = field(default=None)


class MineOdd:
    """A whole policy in one class: mines every candidate whose ``mi`` is above 0.5."""

    def __init__(self) -> None:
        self.seen = 0

    def select(self, cands: Sequence[Candidate]) -> list[Verdict]:
        self.seen += len(cands)
        return [Verdict(c.scores["mi"] > 0.5, ["uncertainty"] if c.scores["mi"] > 0.5 else [], c.scores["mi"],
                        None if c.scores["mi"] > 0.5 else "below_threshold", 0.5, {"surprise_mi": 2 * c.scores["mi"]})
                for c in cands]

    def stats(self) -> dict[str, dict[str, Any]]:
        return {}


def _frames(n: int) -> list[CameraFrame]:
    return [CameraFrame("veh", "front", 1_000_000 * (i + 1), f"f{i}", 480, 360) for i in range(n)]


def test_decide_builds_every_decision_from_the_policys_verdicts() -> None:
    policy: Policy = MineOdd()
    frames = _frames(3)
    scored = [_Scored("day/clear/x", {"mi": v, "shift": 1.0}) for v in (0.2, 0.9, 0.6)]
    positions = [Position("avminer.frames", 2, 40 + i) for i in range(3)]
    out = decide(policy, frames, scored, positions, "model-7", now_us=123)
    assert [s.decision.mined for s in out] == [False, True, True]
    assert [s.rejected for s in out] == ["below_threshold", None, None]
    d = out[1].decision
    assert d.sample_id == frames[1].sample_id and d.frame_id == "f1" and d.model_version == "model-7"
    assert (d.topic, d.partition, d.offset, d.decided_at_us) == ("avminer.frames", 2, 41, 123)
    assert d.reasons == ["uncertainty"] and d.slice == "day/clear/x"
    assert d.scores == {"mi": 0.9, "shift": 1.0, "surprise_mi": 1.8}  # frame scores and the policy's own
    assert out[1].priority == 0.9


def test_selection_policy_is_a_policy() -> None:
    policy: Policy = SelectionPolicy(SelectionSettings(warmup_frames=1))
    rng = np.random.default_rng(0)
    frames = _frames(4)
    scored = [_Scored("day/clear/x", {"mi": float(v)}, rng.normal(size=8).astype(np.float32)) for v in rng.random(4)]
    out = decide(policy, frames, scored, [Position("t", 0, i) for i in range(4)], "m")
    assert len(out) == 4 and all(s.decision.model_version == "m" for s in out)
    assert all("novelty" in s.decision.scores for s in out)  # the policy's extra scores reach the Decision
    assert policy.stats()["day/clear/x"]["frames"] == 4
