"""Selection policy: rates per slice, duplicates, cooldown, budgets, reasons, warm-up, sketch exchange."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from avminer.config import SelectionSettings
from avminer.errors import SelectionError
from avminer.selection.budget import TokenBucket
from avminer.selection.memory import normalize
from avminer.selection.policy import Candidate, SelectionPolicy, pack_sketches, unpack_sketches

RATES = {"day/*/*": 0.02, "dusk/*/*": 0.05, "*/fog/*": 0.1}
SLICES = ["day/clear/cambridge_uk", "dusk/clear/cambridge_uk", "day/fog/cambridge_uk"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def synthetic_stream(n: int, seed: int, repeat: int = 1, slice_p: tuple[float, ...] = (0.6, 0.25, 0.15),
                     cameras: int = 50) -> list[Candidate]:
    """Frames with realistic score shapes: log-normal MI, chi-square shift correlated with it, sparse radar."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        key = SLICES[rng.choice(len(SLICES), p=slice_p)]
        z = rng.normal()
        scores = {
            "mi": float(np.exp(-3 + 0.8 * z + 0.3 * rng.normal())),
            "shift": float(rng.chisquare(32) * (1 + 0.2 * max(z, 0.0))),
            "radar": float(rng.random() < 0.05) * float(rng.random()),
        }
        emb = rng.normal(size=16).astype(np.float32)
        for r in range(repeat):
            out.append(Candidate(f"s{i}", f"cam{i % cameras}", key, scores, emb, i * 1.0 + r * 0.01))
    return out


def run(policy: SelectionPolicy, cands: list[Candidate], batch: int = 8) -> set[str]:
    mined = set()
    for i in range(0, len(cands), batch):
        part = cands[i: i + batch]
        for c, v in zip(part, policy.select(part), strict=True):
            assert v.mined == (v.rejected is None)
            if v.mined:
                assert v.reasons and set(v.reasons) <= {"uncertainty", "shift", "radar", "novelty"}
                mined.add(c.sample_id)
    return mined


def test_mined_rate_per_slice_within_20_percent_of_target() -> None:
    """10,000 frames, three slices at 2%, 5% and 10% (enough mined frames that Poisson noise is < 10%)."""
    policy = SelectionPolicy(SelectionSettings(slice_rates=RATES, camera_cooldown_s=0.0), clock=FakeClock())
    run(policy, synthetic_stream(10_000, seed=0))
    stats = policy.stats()
    assert set(stats) == set(SLICES)
    for key, st in stats.items():
        assert st["target_rate"] == policy.rate_for(key)
        assert st["mined_rate"] == pytest.approx(st["target_rate"], rel=0.2), (key, st)
        assert sum(st["reasons"].values()) >= st["mined"]


def test_budget_counts_frames_seen_and_repeats_are_never_mined() -> None:
    """A stream where every frame comes five times (a standstill) still mines ~rate x frames seen.

    The four repeats of each picture are rejected as near-duplicates and never labeled, but the budget
    they would have cost goes to other distinct frames: the miner spends what it is given.
    """
    settings = SelectionSettings(target_rate=0.02, slice_rates={}, camera_cooldown_s=0.0, warmup_frames=100)
    policy = SelectionPolicy(settings, clock=FakeClock())
    cands = synthetic_stream(3000, seed=1, repeat=5)
    mined = run(policy, cands)
    stats = policy.stats()
    frames = sum(st["frames"] for st in stats.values())
    assert frames == 15_000
    assert sum(st["rejected"].get("duplicate", 0) for st in stats.values()) >= 4 * 3000
    assert sum(st["mined"] for st in stats.values()) == len(mined)  # no picture mined twice
    assert len(mined) == pytest.approx(0.02 * frames, rel=0.2)
    once = run(SelectionPolicy(settings, clock=FakeClock()), synthetic_stream(3000, seed=1))
    assert len(once) == pytest.approx(0.02 * 3000, rel=0.2)


def test_guard_refusals_are_bought_back() -> None:
    """Frames the cooldown refuses do not shrink the budget: the threshold loosens until it is spent."""
    settings = SelectionSettings(target_rate=0.05, slice_rates={}, camera_cooldown_s=5.0, warmup_frames=100)
    policy = SelectionPolicy(settings, clock=FakeClock())
    run(policy, synthetic_stream(6000, seed=2, cameras=3))  # one frame per second over 3 cameras
    stats = policy.stats()
    assert sum(st["rejected"].get("cooldown", 0) for st in stats.values()) > 0
    mined, frames = (sum(st[k] for st in stats.values()) for k in ("mined", "frames"))
    assert mined == pytest.approx(0.05 * frames, rel=0.2)


def test_rate_resolution() -> None:
    policy = SelectionPolicy(SelectionSettings(target_rate=0.001, slice_rates={
        "dusk/*/*": 0.005, "*/fog/*": 0.01, "dusk/fog/special": 0.002}))
    assert policy.rate_for("day/clear/x") == 0.001
    assert policy.rate_for("dusk/clear/x") == 0.005
    assert policy.rate_for("dusk/fog/x") == 0.01  # the highest matching pattern
    assert policy.rate_for("dusk/fog/special") == 0.002  # an exact key wins
    # Raising the target above the default rare-condition boosts raises rare slices too.
    raised = SelectionPolicy(SelectionSettings(target_rate=0.02))
    assert raised.rate_for("dusk/clear/x") == raised.rate_for("day/clear/x") == 0.02
    with pytest.raises(SelectionError, match="score_weights"):
        SelectionPolicy(SelectionSettings(score_weights={"bogus": 1.0}))


def _warm(policy: SelectionPolicy, key: str, n: int = 200, seed: int = 5) -> None:
    rng = np.random.default_rng(seed)
    cands = [Candidate(f"w{i}", f"warm{i}", key, {"mi": float(rng.exponential(0.05)), "shift": float(rng.chisquare(8)),
                                                  "radar": 0.0}, None, float(i)) for i in range(n)]
    assert not any(v.mined for v in policy.select(cands))  # exactly the warm-up: nothing mined yet


def _hot(sample: str, camera: str, key: str, t: float, emb: np.ndarray | None, **scores: float) -> Candidate:
    full = {"mi": 0.0, "shift": 0.0, "radar": 0.0, **scores}
    return Candidate(sample, camera, key, full, emb, t)


def test_warmup_then_reasons() -> None:
    policy = SelectionPolicy(SelectionSettings(target_rate=0.01, slice_rates={}), clock=FakeClock())
    first = policy.select([_hot("a", "c", "day/clear/x", 0.0, None, mi=100.0)])[0]
    assert not first.mined and first.rejected == "warmup" and first.threshold is None
    _warm(policy, "day/clear/x")
    v = policy.select([_hot("b", "c1", "day/clear/x", 0.0, None, radar=1.0)])[0]
    assert v.mined and v.reasons == ["radar"] and v.threshold is not None and v.priority > v.threshold
    v = policy.select([_hot("c", "c2", "day/clear/x", 0.0, None, mi=1e3, shift=1e4)])[0]
    assert v.mined and v.reasons == ["uncertainty", "shift"]
    assert policy.select([_hot("d", "c3", "day/clear/x", 0.0, None, mi=0.0)])[0].rejected == "below_threshold"


def test_cooldown_budget_and_duplicates() -> None:
    clock = FakeClock()
    settings = SelectionSettings(target_rate=0.01, slice_rates={}, camera_cooldown_s=2.0, hourly_budget=2)
    policy = SelectionPolicy(settings, clock=clock)
    _warm(policy, "day/clear/x")
    rng = np.random.default_rng(0)
    e = [rng.normal(size=8).astype(np.float32) for _ in range(6)]
    # same camera within the cooldown: the second is refused
    v = policy.select([_hot("1", "cam", "day/clear/x", 10.0, e[0], mi=50.0, shift=1e4),
                       _hot("2", "cam", "day/clear/x", 11.0, e[1], mi=50.0, shift=1e4)])
    assert [x.mined for x in v] == [True, False] and v[1].rejected == "cooldown"
    # a near-duplicate of a mined frame (seen long ago) is refused; diversity within a batch too
    near = e[0] + 1e-3
    v = policy.select([_hot("3", "cam2", "day/clear/x", 20.0, near, mi=50.0, shift=1e4)])
    assert v[0].rejected == "duplicate"
    v = policy.select([_hot("4", "cam3", "day/clear/x", 30.0, e[2], mi=50.0, shift=1e4),
                       _hot("5", "cam4", "day/clear/x", 30.0, e[2] * 1.01, mi=60.0, shift=1e4)])
    assert v[0].mined and v[1].rejected == "duplicate"
    # the hourly budget (2) is spent; an hour later it has refilled
    v = policy.select([_hot("6", "cam5", "day/clear/x", 40.0, e[3], mi=50.0, shift=1e4)])
    assert v[0].rejected == "budget"
    clock.now += 3600
    assert policy.select([_hot("7", "cam6", "day/clear/x", 50.0, e[4], mi=50.0, shift=1e4)])[0].mined


def test_token_bucket() -> None:
    clock = FakeClock()
    bucket = TokenBucket(3, 3600.0, clock)
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
    clock.now += 1200  # a third of the period refills one token
    assert bucket.try_take() and not bucket.try_take()
    clock.now -= 5000  # a clock stepping back refills nothing and breaks nothing
    assert not bucket.try_take()


def test_sketch_exchange_merges_fleet_statistics() -> None:
    a = SelectionPolicy(SelectionSettings(slice_rates=RATES, camera_cooldown_s=0.0), clock=FakeClock())
    b = SelectionPolicy(SelectionSettings(slice_rates=RATES, camera_cooldown_s=0.0), clock=FakeClock())
    run(a, synthetic_stream(1500, seed=2))
    run(b, synthetic_stream(500, seed=3))
    exported = a.export_sketches()
    assert set(exported) == set(a.stats())
    b.merge_remote("miner-a", exported)
    for key in exported:
        assert b.stats()[key]["fleet_frames"] == a.stats()[key]["distinct"] + b.stats()[key]["distinct"]
    again = unpack_sketches(pack_sketches(unpack_sketches(exported[SLICES[0]])))
    assert set(again) == {"mi", "shift", "radar", "novelty", "priority"}
    b.forget_remote("miner-a")
    assert b.stats()[SLICES[0]]["fleet_frames"] == b.stats()[SLICES[0]]["distinct"]
    with pytest.raises(SelectionError):
        b.merge_remote("miner-x", {SLICES[0]: b"\x01\x01\x05abc"})


def test_shifted_slice_is_not_collapsed_into_duplicates() -> None:
    """Frames of a shifted condition share one large offset from the training data: raw embeddings are
    nearly parallel. Distinct frames must still count as distinct (similarity is measured around the
    slice's own centre), while an exact repeat is still caught."""
    rng = np.random.default_rng(3)
    d = 48
    offset = 40.0 * normalize(rng.normal(size=(1, d)))[0]
    frames = offset + rng.normal(size=(300, d)).astype(np.float32)  # raw pairwise cosine ~0.95+
    raw = normalize(frames)
    assert float((raw[1:] * raw[:-1]).sum(axis=1).mean()) > 0.95
    policy = SelectionPolicy(SelectionSettings(target_rate=0.05, slice_rates={}, camera_cooldown_s=0.0),
                             clock=FakeClock())
    cands = [_hot(f"s{i}", "cam", "dusk/clear/x", float(i), frames[i], mi=float(rng.exponential(0.05)))
             for i in range(len(frames))]
    policy.select(cands)
    stats = policy.stats()["dusk/clear/x"]
    assert stats["rejected"].get("duplicate", 0) <= 3
    assert stats["distinct"] >= 297
    again = policy.select([_hot("s5-again", "cam", "dusk/clear/x", 1e6, frames[5])])[0]
    assert again.rejected == "duplicate"


def _fleet_like(n: int, seed: int, burst_every: int = 500, burst: int = 15) -> list[Candidate]:
    """Ordinary frames with bursts of unfamiliar ones (a vehicle driving into dusk): 3 % of the stream."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        unfamiliar = i % burst_every >= burst_every - burst
        key = "dusk/clear/cambridge_uk" if unfamiliar else "day/clear/cambridge_uk"
        scale = 3.0 if unfamiliar else 1.0
        scores = {"mi": float(scale * np.exp(-3 + 0.3 * rng.normal())),
                  "shift": float(rng.chisquare(32) * (10.0 if unfamiliar else 1.0)), "radar": 0.0}
        out.append(Candidate(f"s{i}", f"cam{i % 7}", key, scores, rng.normal(size=16).astype(np.float32), float(i)))
    return out


def test_bursts_of_unfamiliar_frames_get_the_budget_not_the_common_case() -> None:
    """The budget (2 % of 3,000 frames = 60 labels) is below the bursts' share (3 %): nearly every label
    goes to them, though they arrive all at once and the common case fills the time between.

    The threshold is the top of the recent frames' priorities re-scored against the same statistics as
    each new frame; a burst is not turned away because an earlier one filled the top of a priority sketch
    recorded on smaller statistics, and quiet stretches do not lower the bar into the common case.
    """
    settings = SelectionSettings(target_rate=0.02, slice_rates={}, camera_cooldown_s=0.0, warmup_frames=100)
    policy = SelectionPolicy(settings, clock=FakeClock())
    mined = run(policy, _fleet_like(3000, seed=6))
    stats = policy.stats()
    dusk = stats["dusk/clear/cambridge_uk"]["mined"]
    assert len(mined) == pytest.approx(0.02 * 3000, rel=0.25)
    assert dusk >= 0.75 * len(mined), stats  # the rest: the top of the common case before the first burst
    assert dusk <= stats["dusk/clear/cambridge_uk"]["frames"]


def test_priorities_of_many_frames_match_one_frame_at_a_time() -> None:
    policy = SelectionPolicy(SelectionSettings(slice_rates={}, camera_cooldown_s=0.0, warmup_frames=50),
                             clock=FakeClock())
    run(policy, synthetic_stream(400, seed=3))
    rng = np.random.default_rng(4)
    rows = np.column_stack([rng.exponential(0.05, 64), rng.chisquare(32, 64),
                            rng.random(64) * (rng.random(64) < 0.2), rng.random(64)])
    for key in SLICES:
        one = [policy.priority(key, dict(zip(("mi", "shift", "radar", "novelty"), map(float, row), strict=True)))[0]
               for row in rows]
        np.testing.assert_allclose(policy._priorities(policy._sketches(key), rows), one, rtol=1e-12)


def test_a_new_model_ranks_against_the_old_statistics_until_it_has_its_own() -> None:
    """A release makes the scores ten times smaller. Its frames are judged at once (no warm-up gap),
    against the old model's statistics, until ``warmup_frames`` of them are gathered; from then on it
    mines at the target rate again among its own frames. Embeddings are compared within one model only."""
    settings = SelectionSettings(target_rate=0.05, slice_rates={}, camera_cooldown_s=0.0, warmup_frames=100)
    policy = SelectionPolicy(settings, clock=FakeClock())
    old = synthetic_stream(1000, seed=7, slice_p=(1.0, 0.0, 0.0))
    for c in old:
        c.model_version = "v1"
    run(policy, old)
    new = synthetic_stream(1500, seed=8, slice_p=(1.0, 0.0, 0.0))
    for c in new:
        c.model_version = "v2"
        c.sample_id = "n" + c.sample_id
        c.scores = {k: v / 10.0 for k, v in c.scores.items()}
    new[0].embedding = old[-1].embedding  # the same picture: not a duplicate across models
    first = policy.select(new[:60])
    assert all(v.rejected != "warmup" for v in first)
    assert first[0].rejected != "duplicate"
    assert policy._next is not None  # still gathering the new model's statistics
    rest = new[60:]
    mined = run(policy, rest)
    assert policy._next is None
    assert len(mined) == pytest.approx(0.05 * len(rest), rel=0.3)


def test_warm_up_counts_frames_seen_and_needs_distinct_ones() -> None:
    """A camera at a standstill sends every picture five times. The warm-up ends after ``warmup_frames``
    frames *seen* (as the baselines count it), so a burst of unfamiliar frames right after it is mined; a
    camera stuck on one picture does not end the warm-up however many frames it sends."""
    settings = SelectionSettings(target_rate=0.02, slice_rates={}, camera_cooldown_s=0.0, warmup_frames=100)
    stuck = SelectionPolicy(settings, clock=FakeClock())
    same = synthetic_stream(1, seed=1, repeat=150, slice_p=(1.0, 0.0, 0.0))
    assert {v.rejected for v in stuck.select(same)} == {"warmup", "duplicate"}

    policy = SelectionPolicy(settings, clock=FakeClock())
    repeats = synthetic_stream(24, seed=2, repeat=5, slice_p=(1.0, 0.0, 0.0))  # 120 frames, 24 distinct
    verdicts = policy.select(repeats[:100])
    assert verdicts[-1].rejected in ("below_threshold", "duplicate")  # warm after 100 frames, 20 distinct
    rng = np.random.default_rng(3)
    burst = [_hot(f"dusk{i}", f"d{i}", "dusk/clear/x", 200.0 + i, rng.normal(size=16).astype(np.float32),
                  mi=1.0 + 0.1 * i, shift=500.0 + i) for i in range(4)]
    assert all(v.mined for v in policy.select(burst)), policy.stats()


def test_first_frames_after_a_release_are_not_mined_for_novelty() -> None:
    """Memories are cleared for a new model; against an empty memory every frame would look new (novelty
    1.0, the slice's rarest value) and be mined for that alone. Novelty waits for enough frames instead."""
    settings = SelectionSettings(target_rate=0.15, slice_rates={}, camera_cooldown_s=0.0, warmup_frames=100)
    policy = SelectionPolicy(settings, clock=FakeClock())
    rng = np.random.default_rng(13)
    basis = rng.normal(size=(6, 16)).astype(np.float32)  # video frames: embeddings on a low-dimensional manifold
    old = synthetic_stream(600, seed=11, slice_p=(1.0, 0.0, 0.0))
    new = synthetic_stream(40, seed=12, slice_p=(1.0, 0.0, 0.0))
    for version, frames in (("v1", old), ("v2", new)):
        for c in frames:
            c.embedding = rng.normal(size=6).astype(np.float32) @ basis
            c.model_version, c.sample_id = version, version + c.sample_id
    run(policy, old)
    verdicts = policy.select(new)
    assert [v.rejected for v in verdicts[:16]].count("duplicate") == 0
    assert all(v.scores["novelty"] == 0.0 for v in verdicts[:16])
    assert all(v.scores["novelty"] > 0.0 for v in verdicts[16:] if v.rejected != "duplicate")
    assert not any("novelty" in v.reasons for v in verdicts[:16])  # before: the first one was, at novelty 1.0
    small = SelectionPolicy(replace(settings, memory_size=8), clock=FakeClock())  # a memory smaller than 16
    assert any(v.scores["novelty"] > 0.0 for v in small.select(old[:40]))
