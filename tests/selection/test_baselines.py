"""Baseline policies and the registry: one switch (selection.policy), the same interface as the full policy."""

from __future__ import annotations

import numpy as np
import pytest

from avminer.config import SelectionSettings, load_settings
from avminer.errors import ConfigError, SelectionError
from avminer.selection.adaptive import AdaptivePolicy
from avminer.selection.baselines import RandomPolicy, ScorePolicy, window
from avminer.selection.policy import Candidate, SelectionPolicy
from avminer.selection.registry import make_policy


def cand(i: int, slice_key: str = "day/clear/x", **scores: float) -> Candidate:
    return Candidate(sample_id=f"s{i}", camera_key=f"v{i % 7}/front", slice=slice_key, scores=scores,
                     embedding=None, timestamp_s=float(i) * 10.0)


def test_registry_builds_every_policy() -> None:
    kinds = {name: type(make_policy(SelectionSettings(policy=name)))
             for name in ("full", "adaptive", "adaptive_mi", "random", "entropy", "mi", "bald")}
    assert kinds == {"full": SelectionPolicy, "adaptive": AdaptivePolicy, "adaptive_mi": AdaptivePolicy,
                     "random": RandomPolicy,
                     "entropy": ScorePolicy, "mi": ScorePolicy, "bald": ScorePolicy}
    assert make_policy(SelectionSettings(policy="adaptive_mi")).pooled == ("shift", "mi")
    with pytest.raises(SelectionError, match="unknown policy 'smart'"):
        make_policy(SelectionSettings(policy="smart"))
    with pytest.raises(ConfigError, match="selection.policy"):
        load_settings(None, environ={}, overrides={"selection": {"policy": "smart"}})
    # bald ranks MI over Monte-Carlo dropout passes: only the torch engine computes them.
    with pytest.raises(ConfigError, match="engine.mc_dropout_samples: needs engine.backend: torch"):
        load_settings(None, environ={}, overrides={"engine": {"mc_dropout_samples": 20}})
    with pytest.raises(ConfigError, match="engine.mc_dropout_samples: must be 0"):
        load_settings(None, environ={}, overrides={"engine": {"backend": "torch", "mc_dropout_samples": 1}})
    assert load_settings(None, environ={}, overrides={
        "engine": {"backend": "torch", "mc_dropout_samples": 20}, "selection": {"policy": "bald"}}
    ).engine.mc_dropout_samples == 20


def test_random_is_uniform_and_seeded() -> None:
    cands = [cand(i) for i in range(20000)]

    def picks(seed: int) -> set[str]:
        policy = RandomPolicy(SelectionSettings(target_rate=0.05, seed=seed))
        return {c.sample_id for c, v in zip(cands, policy.select(cands), strict=True) if v.mined}

    a = picks(1)
    assert 0.045 < len(a) / len(cands) < 0.055
    assert a == picks(1) and a != picks(2)


def test_score_policy_takes_the_top_of_the_recent_window() -> None:
    settings = SelectionSettings(target_rate=0.1, warmup_frames=100)
    policy = ScorePolicy(settings, "entropy", "entropy")
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, 3000)
    verdicts = policy.select([cand(i, entropy=float(v)) for i, v in enumerate(values)])
    assert all(v.rejected == "warmup" for v in verdicts[:100])
    mined = np.array([v.mined for v in verdicts[100:]])
    assert 0.08 < mined.mean() < 0.12
    assert values[100:][mined].min() > 0.8  # the top decile, not a random tenth
    # A new model scores everything 10x lower: within one window the baseline mines at its rate again.
    later = policy.select([cand(10_000 + i, entropy=float(v) * 0.1) for i, v in enumerate(rng.uniform(0, 1, 3000))])
    tail = np.array([v.mined for v in later[window(settings):]])
    assert 0.08 < tail.mean() < 0.12
    assert policy.stats()["day/clear/x"]["mined"] == int(mined.sum()) + sum(v.mined for v in later)


def _stream(n_day: int = 3000, every: int = 50) -> list[Candidate]:
    """Day frames (chi-square-like shift) with a rare, unfamiliar condition every ``every`` frames."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n_day):
        if i % every == 0:
            out.append(cand(i, "dusk/clear/x", mi=float(rng.uniform(0, 0.2)), shift=float(rng.normal(400, 40))))
        else:
            out.append(cand(i, "day/clear/x", mi=float(rng.uniform(0, 1)), shift=float(rng.chisquare(60))))
    return out


def test_adaptive_budget_follows_unfamiliarity() -> None:
    """A rare condition far from the training data gets labels under the adaptive and the full policy.

    The rare slice is 2 % of the stream and its frames are *less* uncertain (the ensemble agrees on what it
    has never seen); both policies rank their shift against the whole fleet, from the slice's first frame.
    """
    cands = _stream()
    settings = SelectionSettings(target_rate=0.03, slice_rates={}, warmup_frames=200, camera_cooldown_s=0.0)
    counts = {}
    for policy in (SelectionPolicy(settings), AdaptivePolicy(settings)):
        verdicts = policy.select(cands)
        counts[type(policy).__name__] = {
            key: sum(v.mined for c, v in zip(cands, verdicts, strict=True) if c.slice == key)
            for key in ("day/clear/x", "dusk/clear/x")
        }
    full, adaptive = counts["SelectionPolicy"], counts["AdaptivePolicy"]
    assert adaptive["dusk/clear/x"] >= 30  # most of the 60 rare frames, from the first ones after warm-up
    # The full policy adds the (low) MI surprise to the shift one, so it takes fewer, still 5x their share.
    assert full["dusk/clear/x"] >= 0.1 * sum(full.values())
    for counts_p in (full, adaptive):  # the fleet still mines about target_rate of its frames
        assert 0.5 * 0.03 * len(cands) < sum(counts_p.values()) < 1.5 * 0.03 * len(cands)
