"""A release's measured quality per condition moves the full policy's budget towards where the model fails."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from avminer.config import SelectionSettings, load_settings
from avminer.errors import ConfigError, SelectionError
from avminer.selection.policy import Candidate, SelectionPolicy
from avminer.selection.quality import PRIOR_FRAMES, SliceQuality, condition_groups
from tests.selection.test_policy import FakeClock, run

DAY, DUSK = "day/clear/cambridge_uk", "dusk/clear/cambridge_uk"


def test_a_slice_key_counts_towards_the_gate_slices_it_names() -> None:
    assert condition_groups("dusk/clear/cambridge_uk") == ["dusk", "region:cambridge_uk"]
    assert condition_groups("day/fog/india") == ["day", "fog", "region:india"]
    assert condition_groups("unknown/clear/unknown") == []
    assert condition_groups("night") == ["night"]


def test_offset_is_the_log_ratio_to_all_of_the_worst_shrunk_condition() -> None:
    table = {"all": {"miou": 0.4, "frames": 40}, "day": {"miou": 0.45, "frames": 30},
             "fog": {"miou": 0.2, "frames": 24}, "region:india": {"miou": 0.3, "frames": 2},
             "night": {"miou": 0.1, "frames": 0}}
    q = SliceQuality(table, weight=1.0)
    fog = (24 * 0.2 + PRIOR_FRAMES * 0.4) / (24 + PRIOR_FRAMES)
    assert q.quality("day/fog/cambridge_uk") == pytest.approx(fog)  # the worst of day and fog
    assert q.offset("day/fog/cambridge_uk") == pytest.approx(math.log10(0.4 / fog))
    # Two held-out frames barely move India off the fleet's figure; a condition with no frames counts nothing.
    india = (2 * 0.3 + PRIOR_FRAMES * 0.4) / (2 + PRIOR_FRAMES)
    assert q.offset("day/clear/india") == pytest.approx(math.log10(0.4 / india))
    assert q.offset("night/clear/unknown") == 0.0
    # Better than the fleet: a negative offset, clipped; unmeasured slices and weight 0: none.
    assert q.offset("day/clear/unknown") == pytest.approx(math.log10(0.4 / ((30 * 0.45 + 8 * 0.4) / 38)))
    assert SliceQuality({"all": {"miou": 0.9, "frames": 9}, "day": {"miou": 0.0, "frames": 10**6}}, 1.0
                        ).offset("day/x/y") == pytest.approx(1.0)
    assert SliceQuality(table, weight=2.0).offset("day/fog/x") == pytest.approx(2 * math.log10(0.4 / fog))
    assert SliceQuality(table, weight=0.0).offset("day/fog/x") == 0.0
    assert SliceQuality({"fog": {"miou": 0.2, "frames": 24}}, 1.0).offset("day/fog/x") == 0.0  # no "all"


@pytest.mark.parametrize("row", [{"miou": "bad", "frames": 3}, {"miou": 1.5, "frames": 3}, {"frames": 3},
                                 {"miou": 0.5, "frames": -1}, 0.5])
def test_a_malformed_quality_table_is_refused_naming_the_entry(row: object) -> None:
    with pytest.raises(SelectionError, match=r"gate_quality\['fog'\]"):
        SliceQuality({"all": {"miou": 0.5, "frames": 3}, "fog": row}, 1.0)


def test_quality_weight_is_checked() -> None:
    with pytest.raises(ConfigError, match="selection.quality_weight"):
        load_settings(environ={}, overrides={"selection": {"quality_weight": -1}})


def _two_slices(n: int, seed: int) -> list[Candidate]:
    """Day and dusk frames with the same score distributions, one in four dusk."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scores = {"mi": float(np.exp(-3 + 0.5 * rng.normal())), "shift": float(rng.chisquare(32)), "radar": 0.0}
        out.append(Candidate(f"s{i}", f"cam{i % 9}", DUSK if i % 4 == 0 else DAY, scores,
                             rng.normal(size=16).astype(np.float32), float(i)))
    return out


def test_the_budget_follows_the_measured_quality() -> None:
    """Scores alone split the budget by the slices' shares; a release measured at half the fleet's mIoU on
    dusk gets dusk well above its share of the same budget, and the threshold moves with the priorities
    (the total stays on budget)."""
    settings = SelectionSettings(target_rate=0.04, slice_rates={}, camera_cooldown_s=0.0, warmup_frames=100)
    table = {"all": {"miou": 0.5, "frames": 60}, "day": {"miou": 0.55, "frames": 50},
             "dusk": {"miou": 0.2, "frames": 24}}
    mined = {}
    for name, quality in (("scores only", None), ("measured", table)):
        policy = SelectionPolicy(settings, clock=FakeClock())
        policy.set_model_quality(quality)
        cands = _two_slices(3000, seed=11)
        picked = run(policy, cands)
        mined[name] = sum(1 for c in cands if c.sample_id in picked and c.slice == DUSK), len(picked)
        stats = policy.stats()
        assert stats[DUSK]["quality_offset"] == (0.0 if quality is None else SliceQuality(table, 1.0).offset(DUSK))
    (dusk0, total0), (dusk1, total1) = mined["scores only"], mined["measured"]
    assert total0 == pytest.approx(120, rel=0.25) and total1 == pytest.approx(120, rel=0.25)
    assert dusk0 == pytest.approx(0.25 * total0, abs=0.1 * total0)
    assert dusk1 >= 1.5 * dusk0, mined  # offset log10(0.5 / 0.275) = 0.26: 27 -> 46 of 117 when written


def test_probe_and_recent_ranking_include_the_offset() -> None:
    settings = SelectionSettings(target_rate=0.04, slice_rates={}, camera_cooldown_s=0.0, warmup_frames=50)
    policy = SelectionPolicy(settings, clock=FakeClock())
    run(policy, _two_slices(400, seed=3))
    scores = {"mi": 0.05, "shift": 32.0, "radar": 0.0, "novelty": 0.0}
    before, day_before = policy.priority(DUSK, scores)[0], policy.priority(DAY, scores)[0]
    policy.set_model_quality(None)  # nothing measured (and the recent frames re-ranked now, not from a cache)
    ranked_before = policy._recent_priorities().copy()
    policy.set_model_quality({"all": {"miou": 0.5, "frames": 60}, "dusk": {"miou": 0.25, "frames": 1000}})
    assert policy.priority(DUSK, scores)[0] == pytest.approx(before + math.log10(0.5 / ((1000 * 0.25 + 4) / 1008)))
    assert policy.priority(DAY, scores)[0] == pytest.approx(day_before)  # day: no measured condition, no offset
    # The threshold ranks the recent frames with the same offsets: every recent dusk frame moved up by it.
    offset = policy.stats()[DUSK]["quality_offset"]
    n_dusk = len(policy._recent.by_slice()[DUSK])
    assert n_dusk > 0 and policy._recent_priorities().sum() == pytest.approx(ranked_before.sum() + n_dusk * offset)
    with pytest.raises(SelectionError):
        policy.set_model_quality({"all": {"miou": 2.0, "frames": 1}})
    assert policy.stats()[DUSK]["quality_offset"] > 0  # the malformed table was not kept
    policy = SelectionPolicy(replace(settings, quality_weight=0.0), clock=FakeClock())
    policy.set_model_quality({"all": {"miou": 0.5, "frames": 60}, "dusk": {"miou": 0.25, "frames": 1000}})
    run(policy, _two_slices(100, seed=3))
    assert policy.stats()[DUSK]["quality_offset"] == 0.0
