"""Closed-loop active-learning simulation on a CamVid-layout directory (``avminer bench al``).

The loop, per strategy: start from a small labeled set of *day* frames; every round the strategy picks
``B`` frames from the unlabeled pool (dusk frames included), the oracle (the pool's own ground truth)
labels them, the model is retrained from scratch with a fixed optimisation budget, and mIoU is measured
overall and per condition on held-out frames.

Strategies (all see the same pool, initial set and training recipe):

- ``random``: uniform picks; trained as a K-member DPE ensemble, so its curve isolates selection.
- ``entropy``: one model (K = 1), mean pixel predictive entropy, top-B.
- ``mc_bald``: one model with Monte-Carlo dropout, T forward passes, mean pixel mutual information
  (BALD; Gal, Islam & Ghahramani, ICML 2017 — the approach of the BaaL library).
- ``dpe_mi``: K-member Deep Probabilistic Ensemble, mean pixel mutual information, top-B
  (Chitta, Alvarez & Lesnikowski, 2018).
- ``policy``: avminer's full policy: ensemble MI (mean over pixels, each weighted by how rare its predicted
  class is in the labeled set) + domain shift (Mahalanobis distance to the labeled set's features), per-
  condition budgets in proportion to each condition's unfamiliarity (summed shift rank), and diversity
  within a condition (greedy, penalising cosine similarity, around the condition's own centre, to frames
  already picked or labeled).

Models are retrained from scratch each round (same seed, same number of epochs over the labeled set,
at least ``min_steps`` optimiser steps), so a strategy's curve reflects only which frames it labeled.

Why one module of ~560 lines: the strategies, the simulation loop and the summary of its curves share
their record types and are read together when checking a result; the plot is its last 30 lines.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from avminer.errors import DatasetError
from avminer.scoring.shift import ShiftReference
from avminer.scoring.uncertainty import aggregate, mean_prediction, mutual_information, predictive_entropy

log = logging.getLogger(__name__)

STRATEGIES = ("random", "entropy", "mc_bald", "dpe_mi", "policy")
SINGLE_MODEL = {"entropy", "mc_bald"}


@dataclass
class ALConfig:
    """Settings of one simulation (``--quick`` uses :data:`QUICK`)."""

    height: int = 48
    width: int = 64
    net_width: float = 0.25
    members: int = 4
    initial_fraction: float = 0.05  # of the pool, drawn from day frames only
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4])  # labeled after each round
    epochs: float = 40.0  # passes over the labeled set per (re)training: more labels, more steps
    min_steps: int = 60  # tiny labeled sets still get this many optimiser steps
    batch_size: int = 16  # small nets on a CPU are bound by per-op overhead: bigger batches are nearly free
    lr: float = 2e-3
    mc_samples: int = 20
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    shift_weight: float = 1.0  # policy: weight of the shift rank next to the MI rank
    diversity_weight: float = 1.0  # policy: penalty per unit of cosine similarity to picked/labeled frames
    holdout_fraction: float = 0.25  # held-out share of the pool when no --eval-data is given
    seed: int = 0
    threads: int = 0

    def validate(self) -> ALConfig:
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise DatasetError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
        if self.height % 8 or self.width % 8:
            raise DatasetError(f"input {self.height}x{self.width} must be multiples of 8 (ERFNet downsamples 8x)")
        if not 0 < self.initial_fraction < min(self.fractions):
            raise DatasetError("initial_fraction must be positive and below the first round's fraction")
        if sorted(self.fractions) != self.fractions or self.fractions[-1] > 1:
            raise DatasetError("fractions must be increasing and at most 1")
        return self


# CI smoke settings: every strategy and code path, tiny nets, two rounds; not a measurement.
QUICK = ALConfig(height=32, width=48, fractions=[0.12, 0.25], epochs=2.0, min_steps=4, mc_samples=8, members=2)


@dataclass
class RoundResult:
    labeled: int
    fraction: float
    miou: float
    miou_by_condition: dict[str, float]
    picked_by_condition: dict[str, int]
    seconds: float


def _condition(slice_key: str) -> str:
    """The condition a curve is drawn for: the time of day (first part of the slice key)."""
    return slice_key.split("/", 1)[0]


def _rank01(x: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """Ranks scaled to [0, 1], ties sharing their mean rank: makes scores of different units comparable."""
    if len(x) < 2:
        return np.zeros(len(x))
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts + 1) / 2.0  # 0-based mean position of each distinct value
    return np.asarray(mean_rank[inverse], np.float64) / (len(x) - 1)


def _unit_rows(x: NDArray[np.floating[Any]], center: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    z = np.asarray(x, np.float64) - center
    out: NDArray[np.float64] = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    return out


def select_diverse(
    priority: NDArray[np.float64],
    embeddings: NDArray[np.float64],
    labeled_embeddings: NDArray[np.float64],
    budget: int,
    diversity_weight: float,
) -> list[int]:
    """Greedy picks maximising ``priority - w * max cosine similarity`` to frames already picked or labeled.

    Embeddings are unit rows (centered features). Near-duplicates of labeled or picked frames lose up to
    ``w`` of their priority, so a run of near-identical video frames yields one pick, not ``budget``.
    """
    n = len(priority)
    budget = min(budget, n)
    if budget <= 0:
        return []
    max_sim = np.full(n, -1.0)
    if len(labeled_embeddings):
        max_sim = (embeddings @ labeled_embeddings.T).max(axis=1)
    picked: list[int] = []
    free = np.ones(n, bool)
    for _ in range(budget):
        gain = priority - diversity_weight * np.maximum(max_sim, 0.0)
        gain[~free] = -np.inf
        j = int(np.argmax(gain))
        picked.append(j)
        free[j] = False
        np.maximum(max_sim, embeddings @ embeddings[j], out=max_sim)
    return picked


def slice_budgets(slices: Sequence[str], priority: NDArray[np.float64], budget: int) -> dict[str, int]:
    """Split ``budget`` across slices in proportion to each slice's summed priority (largest remainder).

    A slice the model finds confusing or unfamiliar (high summed priority) gets more of the round's
    labels; every slice with candidates can get some, so no condition starves.
    """
    keys = sorted(set(slices))
    arr = np.asarray(slices)
    weight = np.array([priority[arr == k].sum() for k in keys], np.float64)
    avail = np.array([(arr == k).sum() for k in keys])
    if weight.sum() <= 0:
        weight = avail.astype(np.float64)
    raw = budget * weight / weight.sum()
    out = np.minimum(np.floor(raw).astype(int), avail)
    while out.sum() < min(budget, avail.sum()):
        room = avail - out
        frac = np.where(room > 0, raw - out, -np.inf)
        out[int(np.argmax(frac))] += 1
    return {k: int(v) for k, v in zip(keys, out, strict=True)}


class Simulation:
    """One run of every strategy over the same pool, initial set and held-out frames."""

    def __init__(self, pool: Any, held_out: Any, cfg: ALConfig, progress: Callable[[str], None] | None = None):
        self.pool = pool
        self.held_out = held_out
        self.cfg = cfg.validate()
        self.say = progress or (lambda msg: log.info(msg))
        self.rng = np.random.default_rng(cfg.seed)
        self.conditions = sorted({_condition(s) for s in held_out.slices})
        day = [i for i, s in enumerate(pool.slices) if _condition(s) == "day"]
        if not day:
            raise DatasetError("the pool has no day frames to start from (time_of_day column)")
        n0 = max(2, int(round(cfg.initial_fraction * len(pool))))
        self.initial = sorted(self.rng.choice(day, size=min(n0, len(day)), replace=False).tolist())
        self.uncertainty_cost: dict[str, float] = {}
        # Training is deterministic given (labeled set, members): strategies that share their first rounds
        # (every strategy's initial set) reuse the trained model instead of training it again.
        self._models: dict[tuple[tuple[int, ...], int], Any] = {}

    # -- models -------------------------------------------------------------------------------------------
    def _train(self, labeled: Sequence[int], members: int) -> Any:
        key = (tuple(sorted(labeled)), members)
        if key not in self._models:
            self._models = {key: self._train_new(labeled, members)} | {
                k: v for k, v in self._models.items() if len(k[0]) == len(self.initial)
            }
        return self._models[key]

    def _train_new(self, labeled: Sequence[int], members: int) -> Any:
        from avminer.models import build_ensemble, erfnet_arch
        from avminer.trainer.train import TrainConfig, train_ensemble

        frames = self.pool.subset(list(labeled))
        # A fixed number of epochs, not of steps: with a fixed step budget a larger labeled set is seen
        # fewer times per frame and the curve measures under-training instead of the data's value.
        batch = min(self.cfg.batch_size, len(frames))
        steps_per_epoch = max(1, len(frames) // batch)
        steps = max(self.cfg.min_steps, math.ceil(self.cfg.epochs * len(frames) / batch))
        epochs = max(1, math.ceil(steps / steps_per_epoch))
        arch = erfnet_arch(width=self.cfg.net_width, members=members)
        model = build_ensemble(arch, seed=self.cfg.seed)
        tc = TrainConfig(
            epochs=epochs, batch_size=batch, lr=self.cfg.lr,
            seed=self.cfg.seed, threads=self.cfg.threads, eval_every=10**9, progress=False,
        )
        return train_ensemble(model, frames, tc, work_dir=None).model

    def _evaluate(self, model: Any) -> tuple[float, dict[str, float]]:
        from avminer.taxonomy import confusion
        from avminer.trainer.train import metrics_from_confusion, predict

        cms: dict[str, Any] = {}
        for index, probs, _ in predict(model, self.held_out, 16):
            pred = probs.mean(dim=0).argmax(dim=1).numpy()  # [B, H, W]
            for j, i in enumerate(index):
                cond = _condition(self.held_out.slices[i])
                cm = confusion(pred[j], self.held_out.labels[i].astype(np.int64), model.num_classes)
                cms[cond] = cms.get(cond, 0) + cm
        by = {c: metrics_from_confusion(cm, 0).miou for c, cm in cms.items()}
        overall = metrics_from_confusion(sum(cms.values()), 0).miou
        return overall, by

    def _probe(self, model: Any, index: Sequence[int], mc_samples: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
        """(probs [K or T, n, C, H, W] float32, features [n, D], seconds per frame) on pool frames."""
        import torch

        from avminer.models import set_mc_dropout
        from avminer.trainer.data import to_tensors

        model.eval()
        probs_out, feats_out = [], []
        t0 = time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(index), 16):
                idx = np.asarray(index[start : start + 16], dtype=np.int64)
                images, _ = to_tensors(self.pool, idx)
                if mc_samples:
                    set_mc_dropout(model, True)
                    draws = [model(images) for _ in range(mc_samples)]
                    set_mc_dropout(model, False)
                    probs = torch.cat([p for p, _ in draws], dim=0)  # [T, B, C, H, W]
                    feats = draws[0][1]
                else:
                    probs, feats = model(images)  # [K, B, C, H, W], [B, D]
                probs_out.append(probs.numpy().astype(np.float32))
                feats_out.append(feats.numpy())
        seconds = (time.perf_counter() - t0) / max(len(index), 1)
        return np.concatenate(probs_out, axis=1), np.concatenate(feats_out, axis=0), seconds

    # -- strategies -----------------------------------------------------------------------------------------
    def _pick(self, strategy: str, model: Any, labeled: list[int], budget: int) -> list[int]:
        unlabeled = [i for i in range(len(self.pool)) if i not in set(labeled)]
        if budget >= len(unlabeled):
            return unlabeled
        if strategy == "random":
            return sorted(self.rng.choice(unlabeled, size=budget, replace=False).tolist())
        if strategy == "entropy":
            probs, _, _ = self._probe(model, unlabeled)
            score = aggregate(predictive_entropy(probs), "mean")
        elif strategy == "mc_bald":
            probs, _, _ = self._probe(model, unlabeled, mc_samples=self.cfg.mc_samples)
            score = aggregate(mutual_information(probs), "mean")
        elif strategy == "dpe_mi":
            probs, _, _ = self._probe(model, unlabeled)
            score = aggregate(mutual_information(probs), "mean")
        else:
            return self._pick_policy(model, labeled, unlabeled, budget)
        order = np.argsort(-np.asarray(score), kind="stable")[:budget]
        return sorted(unlabeled[i] for i in order)

    def _pick_policy(self, model: Any, labeled: list[int], unlabeled: list[int], budget: int) -> list[int]:
        probs, feats, _ = self._probe(model, unlabeled)
        _, lab_feats, _ = self._probe(model, labeled)
        # Mean pixel MI with pixels weighted by how rare their predicted class is in the labeled set: mIoU
        # averages classes equally, so a confusing pole or cyclist is worth more than confusing road.
        pred = mean_prediction(probs)  # [n, H, W]
        mi = aggregate(mutual_information(probs), "mean", weights=self._class_weights(labeled)[pred])
        conds = [_condition(self.pool.slices[i]) for i in unlabeled]
        lab_conds = [_condition(self.pool.slices[i]) for i in labeled]
        # Shift is measured against what the model was trained on (the labeled set), pooled: a slice the
        # labeled set lacks is exactly the unfamiliar data the policy should find.
        reference = ShiftReference.fit({"all": lab_feats}, min_count=2) if len(lab_feats) >= 2 else None
        shift = reference.mahalanobis(feats) if reference is not None else np.zeros(len(unlabeled))
        shift_rank = _rank01(np.asarray(shift, np.float64))
        priority = _rank01(np.asarray(mi, np.float64)) + self.cfg.shift_weight * shift_rank
        picks: list[int] = []
        # Budgets follow each slice's unfamiliarity mass (summed shift rank), not its uncertainty: ensemble
        # members tend to *agree* on a dark slice they never saw (low MI, high shift), so an MI-weighted
        # split would starve exactly the condition that needs labels. As a slice gets labeled its frames
        # move closer to the reference and its share shrinks on its own.
        for key, quota in slice_budgets(conds, shift_rank + 1e-3, budget).items():
            members = np.array([j for j, c in enumerate(conds) if c == key], dtype=np.int64)
            if quota <= 0 or not len(members):
                continue
            # Cosine similarity around the slice's own centre: every dusk frame is close to every other
            # dusk frame seen from the day data's centre, which would make the whole slice look redundant.
            lab_in = np.array([j for j, c in enumerate(lab_conds) if c == key], dtype=np.int64)
            center = np.concatenate([feats[members], lab_feats[lab_in]]).mean(axis=0)
            emb = _unit_rows(feats[members], center)
            lab_emb = _unit_rows(lab_feats[lab_in], center) if len(lab_in) else np.zeros((0, feats.shape[1]))
            chosen = select_diverse(priority[members], emb, lab_emb, quota, self.cfg.diversity_weight)
            picks.extend(int(members[c]) for c in chosen)
        return sorted(unlabeled[j] for j in picks)

    def _class_weights(self, labeled: Sequence[int]) -> NDArray[np.float32]:
        """Per class ``sqrt(median frequency / frequency)`` in the labeled set's ground truth, in [0.25, 10]."""
        from avminer.trainer.data import class_pixel_counts

        counts = class_pixel_counts(np.stack([self.pool.labels[i] for i in labeled])).astype(np.float64)
        freq = counts / max(counts.sum(), 1.0)
        seen = freq[freq > 0]
        median = float(np.median(seen)) if len(seen) else 1.0
        w = np.sqrt(median / np.maximum(freq, median / 100.0))  # unseen classes: the cap
        out: NDArray[np.float32] = np.clip(w, 0.25, 10.0).astype(np.float32)
        return out

    # -- the loop -------------------------------------------------------------------------------------------
    def run_strategy(self, strategy: str) -> list[RoundResult]:
        members = 1 if strategy in SINGLE_MODEL else self.cfg.members
        labeled = list(self.initial)
        rounds: list[RoundResult] = []
        model: Any = None
        targets = [self.cfg.initial_fraction, *self.cfg.fractions]
        for r, fraction in enumerate(targets):
            t0 = time.perf_counter()
            if r > 0:
                want = int(round(fraction * len(self.pool))) - len(labeled)
                labeled = sorted(labeled + self._pick(strategy, model, labeled, want))
            model = self._train(labeled, members)
            miou, by = self._evaluate(model)
            picked: dict[str, int] = {}
            for i in labeled:
                c = _condition(self.pool.slices[i])
                picked[c] = picked.get(c, 0) + 1
            rounds.append(RoundResult(len(labeled), len(labeled) / len(self.pool), miou, by, picked,
                                      time.perf_counter() - t0))
            self.say(f"{strategy:8s} labeled {len(labeled):4d} ({rounds[-1].fraction:5.1%}) mIoU {miou:.3f} "
                     + " ".join(f"{c} {v:.3f}" for c, v in sorted(by.items())))
        return rounds

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        full_model = self._train(list(range(len(self.pool))), self.cfg.members)
        full_miou, full_by = self._evaluate(full_model)
        self.say(f"full pool ({len(self.pool)} frames) mIoU {full_miou:.3f}")
        results = {s: self.run_strategy(s) for s in self.cfg.strategies}
        self._measure_costs()
        return summarise(results, full_miou, full_by, self.cfg, len(self.pool), len(self.held_out),
                         self.uncertainty_cost, time.perf_counter() - t0)

    def _measure_costs(self) -> None:
        """Uncertainty cost per frame: one K-member ensemble pass vs T = 20 MC-dropout passes of one member.

        Timing does not depend on the weights, so freshly built nets are timed on the same frames, in the
        same run, one after the other.
        """
        from avminer.models import build_ensemble, erfnet_arch

        index = list(range(min(32, len(self.pool))))
        ens = build_ensemble(erfnet_arch(width=self.cfg.net_width, members=self.cfg.members), seed=0)
        single = build_ensemble(erfnet_arch(width=self.cfg.net_width, members=1), seed=0)
        self._probe(ens, index[:4])  # warm-up: first calls pay for allocator and kernel selection
        self.uncertainty_cost["ensemble"] = self._probe(ens, index)[2]
        self.uncertainty_cost["mc_dropout_t20"] = self._probe(single, index, mc_samples=20)[2]


def reach_fraction(rounds: Sequence[RoundResult], target: float) -> float | None:
    """Smallest labeled fraction whose mIoU is at least ``target`` (None if never reached)."""
    for r in rounds:
        if r.miou >= target:
            return r.fraction
    return None


def summarise(
    results: dict[str, list[RoundResult]], full_miou: float, full_by: dict[str, float], cfg: ALConfig,
    pool_size: int, eval_size: int, cost: dict[str, float], seconds: float,
) -> dict[str, Any]:
    """The JSON report: curves, reach fractions, policy-vs-random per budget, uncertainty costs."""
    out: dict[str, Any] = {
        "config": asdict(cfg),
        "pool_frames": pool_size,
        "eval_frames": eval_size,
        "full_pool": {"miou": full_miou, "miou_by_condition": full_by},
        "strategies": {},
        "seconds": seconds,
    }
    for name, rounds in results.items():
        out["strategies"][name] = {
            "curve": [asdict(r) for r in rounds],
            "reaches_full_pool_at": reach_fraction(rounds, full_miou),
            "reaches_95pct_full_pool_at": reach_fraction(rounds, 0.95 * full_miou),
        }
    if "random" in results and "policy" in results:
        rr, pr = results["random"], results["policy"]
        out["policy_beats_random_at"] = [p.miou > r.miou for r, p in zip(rr[1:], pr[1:], strict=True)]
    if "ensemble" in cost and "mc_dropout_t20" in cost:
        out["uncertainty_seconds_per_frame"] = {
            "ensemble_k": cfg.members, "ensemble": cost["ensemble"], "mc_dropout_t20": cost["mc_dropout_t20"],
            "mc_over_ensemble": cost["mc_dropout_t20"] / max(cost["ensemble"], 1e-12),
        }
    return out


def _seed_worker(data: str, eval_data: str | None, cfg: ALConfig, split_seed: int, limit: int | None) -> dict[str, Any]:
    """One seed's simulation in a worker process (progress lines go to stderr, tagged with the seed)."""
    import sys

    split_cfg = ALConfig(**{**asdict(cfg), "seed": split_seed})
    pool, held = load_frames(data, eval_data, split_cfg, limit=limit)
    tag = f"[seed {cfg.seed}] "
    return Simulation(pool, held, cfg, progress=lambda m: print(tag + m, file=sys.stderr, flush=True)).run()


def run_seeds(
    data: str | Path, eval_data: str | Path | None, cfg: ALConfig, seeds: Sequence[int], jobs: int = 1,
    limit: int | None = None,
) -> dict[str, Any]:
    """The simulation once per seed on the same pool and held-out frames, combined by :func:`combine`.

    A seed changes the initial labeled set, the random picks and the weight initialisation: the spread
    across seeds says how much of a gap between two curves is training noise. The held-out split is the
    first seed's. ``jobs`` worker processes run seeds side by side (give each ``cfg.threads`` threads).
    """
    import concurrent.futures
    import multiprocessing

    cfgs = [ALConfig(**{**asdict(cfg), "seed": int(s)}).validate() for s in seeds]
    args = [(str(data), None if eval_data is None else str(eval_data), c, int(seeds[0]), limit) for c in cfgs]
    t0 = time.perf_counter()
    if jobs <= 1 or len(cfgs) == 1:
        reports = [_seed_worker(*a) for a in args]
    else:
        # spawn, not fork: torch's thread pools do not survive a fork.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(cfgs)), mp_context=ctx) as ex:
            reports = list(ex.map(_seed_worker, *zip(*args, strict=True)))
    out = combine(reports)
    out["seconds"] = time.perf_counter() - t0
    return out


def combine(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean curves over per-seed reports of the same pool and rounds; the per-seed values are kept.

    ``reaches_full_pool_at`` and ``policy_beats_random_at`` are computed on the means;
    ``policy_beats_random_per_seed`` lists each seed's own comparison.
    """
    if len(reports) == 1:
        return {**reports[0], "seeds": [reports[0]["config"]["seed"]]}

    def mean(values: Sequence[float]) -> float:
        return float(np.mean(values))

    def mean_by(dicts: Sequence[dict[str, float]]) -> dict[str, float]:
        return {k: mean([d.get(k, 0.0) for d in dicts]) for k in sorted({k for d in dicts for k in d})}

    first = reports[0]
    full = mean([r["full_pool"]["miou"] for r in reports])
    out: dict[str, Any] = {
        "config": first["config"],
        "seeds": [r["config"]["seed"] for r in reports],
        "pool_frames": first["pool_frames"],
        "eval_frames": first["eval_frames"],
        "full_pool": {"miou": full, "miou_by_condition": mean_by([r["full_pool"]["miou_by_condition"] for r in reports]),
                      "per_seed": [r["full_pool"]["miou"] for r in reports]},
        "strategies": {},
    }
    means: dict[str, list[RoundResult]] = {}
    for name in first["strategies"]:
        curves = [r["strategies"][name]["curve"] for r in reports]
        rounds = [
            RoundResult(
                labeled=rs[0]["labeled"], fraction=rs[0]["fraction"], miou=mean([x["miou"] for x in rs]),
                miou_by_condition=mean_by([x["miou_by_condition"] for x in rs]),
                picked_by_condition=mean_by([x["picked_by_condition"] for x in rs]),  # type: ignore[arg-type]
                seconds=float(sum(x["seconds"] for x in rs)),
            )
            for rs in zip(*curves, strict=True)
        ]
        means[name] = rounds
        out["strategies"][name] = {
            "curve": [asdict(r) for r in rounds],
            "per_seed_miou": [[x["miou"] for x in c] for c in curves],
            "per_seed_miou_by_condition": [[x["miou_by_condition"] for x in c] for c in curves],
            "reaches_full_pool_at": reach_fraction(rounds, full),
            "reaches_95pct_full_pool_at": reach_fraction(rounds, 0.95 * full),
        }
    if "random" in means and "policy" in means:
        out["policy_beats_random_at"] = [p.miou > r.miou for r, p in zip(means["random"][1:], means["policy"][1:], strict=True)]
        out["policy_beats_random_per_seed"] = [r.get("policy_beats_random_at") for r in reports]
    costs = [r["uncertainty_seconds_per_frame"] for r in reports if "uncertainty_seconds_per_frame" in r]
    if costs:
        out["uncertainty_seconds_per_frame"] = {
            "ensemble_k": costs[0]["ensemble_k"], **{k: mean([c[k] for c in costs]) for k in
                                                     ("ensemble", "mc_dropout_t20", "mc_over_ensemble")},
        }
    return out


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """PNG: mIoU vs labeled fraction per strategy, overall and per condition, full-pool line dashed."""
    from avminer.utils.plots import pyplot, save_png

    plt = pyplot()

    strategies = report["strategies"]
    conditions = sorted({c for s in strategies.values() for r in s["curve"] for c in r["miou_by_condition"]})
    panels = ["all", *conditions]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for name, s in strategies.items():
            xs = [r["fraction"] for r in s["curve"]]
            ys = [r["miou"] if panel == "all" else r["miou_by_condition"].get(panel, float("nan")) for r in s["curve"]]
            line = ax.plot(xs, ys, marker="o", label=name, linewidth=2.2 if name == "policy" else 1.2)[0]
            per_seed = s.get("per_seed_miou") if panel == "all" else [
                [r.get(panel, float("nan")) for r in c] for c in s.get("per_seed_miou_by_condition", [])]
            if per_seed and len(per_seed) > 1:  # min-max band across seeds
                arr = np.asarray(per_seed, dtype=np.float64)
                ax.fill_between(xs, arr.min(axis=0), arr.max(axis=0), color=line.get_color(), alpha=0.12)
        full = report["full_pool"]["miou"] if panel == "all" else report["full_pool"]["miou_by_condition"].get(panel)
        if full is not None:
            ax.axhline(full, color="k", linestyle="--", linewidth=1, label="full pool")
        ax.set_title(f"mIoU ({panel})")
        ax.set_xlabel("labeled fraction of the pool")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mIoU")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def load_frames(data: str | Path, eval_data: str | Path | None, cfg: ALConfig, limit: int | None = None) -> tuple[Any, Any]:
    """(pool, held-out) at the simulation's resolution; without ``eval_data`` every k-th frame is held out."""
    from avminer.trainer.data import holdout_split, load_camvid

    size = (cfg.height, cfg.width)
    pool = load_camvid(data, size)
    if limit is not None and limit < len(pool):
        # Evenly spaced, so a small smoke-test pool still spans every sequence and condition.
        pool = pool.subset(np.linspace(0, len(pool) - 1, limit).round().astype(np.int64))
    if eval_data is not None:
        return pool, load_camvid(eval_data, size)
    return holdout_split(pool, cfg.holdout_fraction, seed=cfg.seed)


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / "al.json"
    jpath.write_text(json.dumps(report, indent=2))
    return jpath, plot(report, out / "al.png")
