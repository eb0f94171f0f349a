"""The closed-loop fleet backtest (``avminer backtest``): does mining save labels, on the product's own code?

One run = one selection policy and one seed, over a fleet stream (:mod:`avminer.datasets.fleet`) cut
into ``rounds`` consecutive segments. Before any run the starting bundle is fine-tuned on the base frames at
the backtest's input size (``initial_epochs``; :func:`prepare_initial`): the production model every run starts
from, trained at the size it is deployed at. Per round:

1. **mine** the next segment with the embedded miner, :func:`avminer.mining.daemon.run_miner` — the same
   decode, engine (hot-swappable holder), scorer, selection policy (``selection.policy``, kept alive
   across rounds as a running miner keeps it) and sinks as ``avminer mine``; ``selection.target_rate``
   is the label budget per round as a fraction of the segment;
2. **label**: the label requests the miner wrote (``requests.jsonl``) are answered by the oracle
   (:class:`avminer.labels.oracle.OracleLabeler`) from the stream's ground-truth side file. Labels of
   another taxonomy (IDD's level-1 groups) are trained on through the groups' summed probabilities
   (:mod:`avminer.trainer.coarse`); held out for the gates, which score fine classes, they keep the groups
   that are one class (:func:`avminer.trainer.mapped_labels.lift_labels`);
3. **train**: :func:`avminer.trainer.train.train_ensemble` fine-tunes a copy of the production model
   (warm start) for ``steps`` optimiser steps on every label bought so far plus a replay of the base data
   (what the production model was trained on; as the trainer service's ``base_data``). As the trainer
   service does, one bought label in five (by sample-id hash) is held out for the gates instead;
4. **gate**: :mod:`avminer.trainer.gates` compares candidate and production per slice on those held-out
   labels plus held-back base frames (``trainer.gate_margin``); refused: production stays;
5. **release + hot-swap**: :func:`avminer.trainer.release.export_release_bundle` (ONNX + model.pt + shift
   reference refitted, as the trainer service does, on every base frame but the gates' and every bought label) and ``EngineHolder.load``: the next segment is mined by it;
6. **evaluate** the production model on the held-out folders (``--eval``) with
   :func:`avminer.evaluation.segmentation.evaluate`: per-condition mIoU, in each folder's own taxonomy and
   in the common one (IDD level-1), and the worst condition.

Seeds change the training seed, the base replay draw and the random baseline's draws; the stream and the
starting model are the same for every run. Same seed, stream and settings give the same selections.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from avminer.config import SELECTION_POLICIES, Settings
from avminer.errors import DatasetError

log = logging.getLogger(__name__)

STRATEGIES = ("random", "entropy", "mi", "bald", "full", "adaptive", "adaptive_mi")
BASELINES = ("random", "entropy", "mi", "bald")
RARE_CONDITIONS = ("dusk", "fog", "night", "new_region")
INITIAL_DIR = "initial"


@dataclass
class BacktestConfig:
    """Settings of a backtest (``--quick`` uses :data:`QUICK` as its base).

    Attributes:
        stream: the fleet drive log (its ``.gt.avro`` side file next to it).
        base: CamVid-layout folder the starting model was trained on (replayed while fine-tuning).
        eval_folders: held-out CamVid-layout folders (never frames of the stream).
        eval_fog: fog densities of the eval day frames' fogged copies (conditions ``<loc>/fog<beta>``).
        eval_night: also night copies of the eval day frames.
        eval_limit: at most this many frames per eval folder (tests).
        strategies: selection policies to run (``selection.policy`` values), each optionally at a multiple of
            the budget, ``POLICY-xK`` (:func:`parse_strategy`; ``random-x3``: random with three times the labels).
        seeds: seeds to run each strategy with.
        rounds: segments the stream is cut into (one mine/label/train/release round each).
        budget: labels per round as a fraction of the segment (``selection.target_rate``).
        size: model input (height, width); the starting model is re-exported at this size.
        steps: optimiser steps per fine-tuning.
        batch_size: frames per step.
        lr: Adam learning rate of the fine-tuning (poly decay over its steps).
        replay: base frames replayed per bought label (at least ``replay_min``).
        replay_min: smallest replay.
        gate_base: base frames held back for the gates (never replayed).
        gates: gate releases (False: every candidate is released; for diagnosis).
        initial_bundle: the starting model (default: the starter bundle).
        initial_epochs: epochs the starting model is fine-tuned on the base frames at ``size`` before the
            first round (the production model is trained at the input size it is deployed at; a bundle trained
            at another size, as the starter is, would otherwise gain from any fine-tuning at ``size``, and most
            from the policy that replays or buys the most base-like frames). 0: re-exported as it is.
        bald_samples: Monte-Carlo dropout passes of the ``bald`` baseline (8: what its measured run used).
        threads: torch / ONNX Runtime threads per run.
        jobs: runs in parallel (processes).
        out: output directory.
    """

    stream: Path
    base: Path
    eval_folders: list[Path]
    eval_fog: tuple[float, ...] = (0.02, 0.05)
    eval_night: bool = True
    eval_limit: int | None = None
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    seeds: list[int] = field(default_factory=lambda: [0])
    rounds: int = 4
    budget: float = 0.03
    size: tuple[int, int] = (96, 128)
    steps: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    replay: float = 1.0
    replay_min: int = 16
    gate_base: int = 24
    gates: bool = True
    initial_bundle: Path | None = None
    initial_epochs: int = 4
    bald_samples: int = 8
    threads: int = 1
    jobs: int = 1
    out: Path = Path("avminer-out/backtest")

    def validate(self) -> BacktestConfig:
        """Raises DatasetError naming the first bad field."""
        if not self.strategies:
            raise DatasetError(f"strategies: none given; choose from {', '.join(SELECTION_POLICIES)}")
        for spec in self.strategies:
            if self.budget * parse_strategy(spec)[1] > 1:
                raise DatasetError(f"strategies: {spec} at budget {self.budget} would mine more than every frame")
        if self.bald_samples < 2:
            raise DatasetError(f"bald_samples: must be >= 2 Monte-Carlo dropout passes, got {self.bald_samples}")
        if self.rounds < 1:
            raise DatasetError(f"rounds: must be >= 1, got {self.rounds}")
        if not 0 < self.budget <= 1:
            raise DatasetError(f"budget: a fraction of each segment in (0, 1], got {self.budget}")
        if self.size[0] % 8 or self.size[1] % 8 or min(self.size) < 16:
            raise DatasetError(f"size: {self.size[0]}x{self.size[1]} must be multiples of 8 (ERFNet downsamples 8x)")
        if self.steps < 1 or self.batch_size < 2:
            raise DatasetError("steps must be >= 1 and batch_size >= 2")
        if self.replay < 0 or self.replay_min < 0:
            raise DatasetError(f"replay: base frames per bought label must be >= 0, got {self.replay} "
                               f"(replay_min {self.replay_min})")
        if self.initial_epochs < 0:
            raise DatasetError(f"initial_epochs: must be >= 0, got {self.initial_epochs}")
        if not self.seeds:
            raise DatasetError("seeds: need at least one")
        if not self.eval_folders:
            raise DatasetError("eval_folders: give at least one held-out folder (--eval)")
        return self


def parse_strategy(spec: str) -> tuple[str, float]:
    """A strategy name as (selection policy, budget multiple): ``mi`` -> ("mi", 1.0); ``random-x3`` -> ("random", 3.0).

    ``POLICY-xK`` runs the policy at K times the backtest's budget: how far a baseline gets with K times the
    labels (the issue's "the full policy reaches random's final figure with a third of random's labels" is
    measured directly by ``random-x3``, which is defined even where random at the same budget never improves).

    Raises:
        DatasetError: an unknown policy or a multiple that is not a positive number.
    """
    policy, sep, multiple = spec.rpartition("-x")
    if not sep:
        policy, multiple = spec, "1"
    if policy not in SELECTION_POLICIES:
        raise DatasetError(f"strategies: unknown {spec!r}; choose from {', '.join(SELECTION_POLICIES)}, each "
                           "optionally as POLICY-xK (K times the budget, e.g. random-x3)")
    try:
        k = float(multiple)
    except ValueError:
        k = float("nan")
    if not (math.isfinite(k) and k > 0):
        raise DatasetError(f"strategies: {spec!r}: the budget multiple after -x must be a positive number")
    return policy, k


def quick_config(**changes: Any) -> BacktestConfig:
    """CI smoke settings: every code path, tiny model input, two rounds; not a measurement."""
    base: dict[str, Any] = dict(rounds=2, size=(48, 64), steps=3, eval_limit=8, replay_min=4,
                                gate_base=4, eval_fog=(0.05,), initial_epochs=1)
    base.update(changes)
    return BacktestConfig(**base)


# --- the stream ------------------------------------------------------------------------------------------


@dataclass
class Segment:
    """One round's part of the stream."""

    path: Path
    frames: int
    by_condition: dict[str, int]


def _condition_of(frame: Any) -> str:
    """The stream condition of a frame: the fleet builder's tag, else its slice's time of day / weather."""
    meta = frame.metadata or {}
    if "fleet_condition" in meta:
        return str(meta["fleet_condition"])
    c = frame.conditions
    if c is not None and c.weather == "fog":
        return "fog"
    return (c.time_of_day if c is not None and c.time_of_day else "unknown")


def split_stream(stream: Path, rounds: int, out: Path) -> list[Segment]:
    """Cut a drive log into ``rounds`` consecutive logs of (nearly) equal camera-frame counts (cached)."""
    from avminer.events.drivelog import DriveLogWriter, read_drive_log
    from avminer.events.records import CameraFrame

    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "segments.json"
    key = {"stream": str(stream.resolve()), "size": stream.stat().st_size, "mtime": stream.stat().st_mtime,
           "rounds": rounds}
    if stamp.exists():
        cached = json.loads(stamp.read_text())
        if cached.get("key") == key:
            return [Segment(Path(s["path"]), s["frames"], s["by_condition"]) for s in cached["segments"]]
    total = sum(1 for r in read_drive_log(stream) if isinstance(r, CameraFrame))
    if total < rounds:
        raise DatasetError(f"{stream}: {total} frames cannot make {rounds} rounds")
    bounds = [round(total * (k + 1) / rounds) for k in range(rounds)]
    segments: list[Segment] = []
    writer: Any = None
    path = out / "segment-0.avro"
    seen = 0
    k = -1
    counts: Counter[str] = Counter()
    for record in read_drive_log(stream):
        if isinstance(record, CameraFrame):
            if writer is None or seen >= bounds[k]:
                if writer is not None:
                    writer.close()
                    segments.append(Segment(path, sum(counts.values()), dict(counts)))
                k += 1
                path = out / f"segment-{k}.avro"
                writer = DriveLogWriter(path, drive=f"segment-{k}", source=f"backtest:{stream.name}")
                counts = Counter()
            seen += 1
            counts[_condition_of(record)] += 1
        if writer is not None:
            writer.write(record)
    if writer is not None:
        writer.close()
        segments.append(Segment(path, sum(counts.values()), dict(counts)))
    # The ground truth stays in the stream's side file; the oracle reads it from there.
    stamp.write_text(json.dumps({"key": key, "segments": [
        {"path": str(s.path), "frames": s.frames, "by_condition": s.by_condition} for s in segments]}))
    return segments


def prepare_initial(cfg: BacktestConfig, base: Any) -> Path:
    """The starting model, fine-tuned on the base frames at ``cfg.size`` (``initial_epochs``) and exported at
    that size with a shift reference fitted on the base frames; cached in ``cfg.out`` by what made it."""
    from avminer.engines import default_bundle_path
    from avminer.engines.bundle import load_bundle
    from avminer.models import load_ensemble
    from avminer.trainer.release import export_release_bundle, fit_reference
    from avminer.trainer.train import TrainConfig, set_threads, train_ensemble

    src = load_bundle(cfg.initial_bundle or default_bundle_path())
    if src.torch_path is None:
        raise DatasetError(f"{src.path}: the starting bundle needs a model.pt to be fine-tuned")
    made = {"from_bundle": src.version, "base_frames": len(base), "epochs": cfg.initial_epochs,
            "batch_size": cfg.batch_size, "lr": cfg.lr}
    out = cfg.out / f"{INITIAL_DIR}-{cfg.size[0]}x{cfg.size[1]}"
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("trained_on") == made:
        return out
    shutil.rmtree(out, ignore_errors=True)
    model = load_ensemble(src.torch_path)
    if cfg.initial_epochs:
        # Once, before the runs start, on every core the runs will use.
        tc = TrainConfig(epochs=cfg.initial_epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=0,
                         threads=cfg.threads * cfg.jobs, progress=False, eval_every=10**9)
        model = train_ensemble(model, base, tc, work_dir=None).model
        set_threads(cfg.threads)
    export_release_bundle(model, out, version=f"{src.version}@{cfg.size[0]}x{cfg.size[1]}", input_hw=cfg.size,
                          reference=fit_reference(model, base), classes=list(src.classes), trained_on=made)
    return out


# --- one run ---------------------------------------------------------------------------------------------


@dataclass
class RoundResult:
    """One round of one run."""

    round: int
    labels: int  # bought this round
    labels_total: int
    bought_by_condition: dict[str, int]
    frames_by_condition: dict[str, int]
    released: bool
    gate_failures: list[str]
    eval: dict[str, Any]  # EvalReport.to_dict() of the production model after the round
    worst: float
    worst_condition: str
    seconds: dict[str, float]
    scores: dict[str, dict[str, list[float]]]  # condition -> score -> [p10, p50, p90] of the segment's frames
    mined_scores: dict[str, dict[str, float]]  # condition -> score -> mean over mined frames
    rejected: dict[str, int]


def _quantiles(values: Sequence[float]) -> list[float]:
    if not values:
        return []
    return [round(float(v), 4) for v in np.quantile(np.asarray(values, np.float64), [0.1, 0.5, 0.9])]


def run_settings(settings: Settings, cfg: BacktestConfig, strategy: str, seed: int, out: Path) -> Settings:
    """The miner's settings for one run: the user's, with the policy, budget (times the strategy's multiple,
    :func:`parse_strategy`), seed and a local output."""
    policy, multiple = parse_strategy(strategy)
    selection = replace(settings.selection, policy=policy, target_rate=cfg.budget * multiple, seed=seed,
                        fleet_sketches=False)
    engine = replace(settings.engine, threads=cfg.threads, bundle=None)
    if policy == "bald":  # MC-dropout BALD (the BaaL approach): T stochastic passes in the torch engine
        engine = replace(engine, backend="torch", mc_dropout_samples=cfg.bald_samples)
    kafka = replace(settings.kafka, bootstrap_servers=None)
    sinks = replace(settings.sinks, output_dir=str(out), catalog_url=None, s3=replace(settings.sinks.s3, endpoint_url=None))
    return replace(settings, selection=selection, engine=engine, kafka=kafka, sinks=sinks,
                   metrics=replace(settings.metrics, port=0)).validate()


class _Data:
    """What every run of a backtest reads: eval slices, base frames, ground truth, segments, start model."""

    def __init__(self, cfg: BacktestConfig) -> None:
        from avminer.datasets.layout import read_classes
        from avminer.evaluation.segmentation import load_eval_slices
        from avminer.events.drivelog import ground_truth_classes, ground_truth_taxonomies, read_ground_truth
        from avminer.taxonomy import CAMVID, taxonomy_for
        from avminer.trainer.data import load_camvid

        # Fog and night copies only of folders in the model's taxonomy: the stream's fog and night frames
        # are made from CamVid frames, so a fogged India would be a condition the fleet never drives in.
        self.eval = []
        for folder in cfg.eval_folders:
            own = taxonomy_for(*read_classes(folder)) == CAMVID
            self.eval += load_eval_slices([folder], cfg.size, fog_betas=cfg.eval_fog if own else (),
                                          night=cfg.eval_night and own, limit=cfg.eval_limit)
        self.base = load_camvid(cfg.base, cfg.size)
        self.truth = read_ground_truth(cfg.stream)
        classes, void = ground_truth_classes(cfg.stream)
        self.default_taxonomy = taxonomy_for(classes, void if void is not None else len(classes))
        self.frame_taxonomy = ground_truth_taxonomies(cfg.stream)
        self.segments = split_stream(cfg.stream, cfg.rounds, cfg.out / "segments")
        self.initial = prepare_initial(cfg, self.base)


def _one(taxonomies: set[str]) -> str:
    """The one coarse taxonomy among the bought labels ("" for none); the trainer takes one at a time."""
    if len(taxonomies) > 1:
        raise DatasetError(f"labels in several coarse taxonomies {sorted(taxonomies)}: the trainer takes one")
    return next(iter(taxonomies), "")


def _label_frames(items: list[tuple[np.ndarray, np.ndarray, str, str]]) -> Any:
    from avminer.trainer.data import LabeledFrames

    return LabeledFrames(np.stack([i[0] for i in items]), np.stack([i[1] for i in items]),
                         [i[2] for i in items], [i[3] for i in items], ["fleet"] * len(items))


def mine_segment(settings: Settings, holder: Any, policy: Any, segment: Path) -> tuple[Any, list[Any]]:
    """Mine one segment with the embedded miner; returns (pipeline stats, every decided frame in order)."""
    from avminer.mining.daemon import run_miner

    decided: list[Any] = []
    stats = run_miner(settings, engines=holder, drive_log=segment, on_decided=decided.extend,
                      handle_signals=False, serve_metrics=False, policy=policy)
    return stats, decided


RESULT_FILE = "result.json"


def run_key(cfg: BacktestConfig, settings: Settings) -> str:
    """What a finished run's result depends on (everything but which runs, how many at once, and where).

    The ``kafka`` settings are left out: the embedded miner reads the drive log, never a broker. Paths count
    by the files they name (resolved), not by how they were spelled: ``fleet/base`` and ``/work/fleet/base``
    are one key.
    """
    import hashlib

    fields = {k: _paths_as_text(v, resolve=True) for k, v in asdict(cfg).items()
              if k not in ("strategies", "seeds", "jobs", "out")}
    stream = Path(cfg.stream)
    fields["stream_file"] = [stream.stat().st_size, stream.stat().st_mtime] if stream.exists() else None
    used = {k: v for k, v in settings.as_dict().items() if k != "kafka"}
    text = json.dumps([fields, used], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _paths_as_text(v: Any, resolve: bool = False) -> Any:
    """A config value with its paths (a path, or a list of them) as strings; ``resolve``: absolute, links followed."""
    if isinstance(v, Path):
        return str(v.resolve() if resolve else v)
    if isinstance(v, list | tuple) and v and all(isinstance(x, Path) for x in v):
        return [_paths_as_text(x, resolve) for x in v]
    return v


def finished_run(cfg: BacktestConfig, settings: Settings, strategy: str, seed: int) -> dict[str, Any] | None:
    """The result of this run if an earlier backtest with the same key finished it (a resumed backtest)."""
    path = cfg.out / "runs" / f"{strategy}-s{seed}" / RESULT_FILE
    if not path.exists():
        return None
    try:
        result: dict[str, Any] = json.loads(path.read_text())
    except ValueError:
        return None
    return result if result.get("key") == run_key(cfg, settings) else None


def run_one(cfg: BacktestConfig, settings: Settings, strategy: str, seed: int, data: _Data | None = None,
            say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One strategy, one seed: every round (see the module docstring). Returns a JSON-ready dict.

    The result is also written to ``<out>/runs/<strategy>-s<seed>/result.json`` with :func:`run_key`, so an
    interrupted backtest run again with the same settings skips what it finished.
    """
    import torch
    from PIL import Image

    from avminer.datasets.layout import decode_label
    from avminer.engines.hotswap import EngineHolder
    from avminer.errors import GateRefusedError
    from avminer.evaluation.segmentation import ensemble_predictor, evaluate
    from avminer.labels.oracle import OracleLabeler
    from avminer.models import load_ensemble
    from avminer.selection.registry import make_policy
    from avminer.sinks.local import read_requests
    from avminer.taxonomy import CAMVID, TAXONOMIES, mapping
    from avminer.trainer.coarse import encode_coarse
    from avminer.trainer.data import LabeledFrames
    from avminer.trainer.gates import compare, enforce, gate_groups, gate_metrics
    from avminer.trainer.mapped_labels import lift_labels
    from avminer.trainer.release import export_release_bundle, fit_reference
    from avminer.trainer.service import is_holdout
    from avminer.trainer.train import TrainConfig, set_threads, train_ensemble

    say = say or (lambda msg: log.info(msg))
    data = data or _Data(cfg)
    set_threads(cfg.threads)
    run_dir = cfg.out / "runs" / f"{strategy}-s{seed}"
    # What an interrupted run left (requests the oracle would answer again, releases) starts over.
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    s0 = run_settings(settings, cfg, strategy, seed, run_dir / "round-0")
    holder = EngineHolder.from_settings(s0)
    loaded = holder.load(data.initial)
    if not loaded.ok:
        raise DatasetError(f"cannot load the starting bundle {data.initial}: {loaded.error}")
    policy = make_policy(s0.selection)
    oracle = OracleLabeler(data.truth)
    production = load_ensemble(Path(data.initial) / "model.pt")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.base))
    gate_base = data.base.subset(sorted(order[: cfg.gate_base].tolist()))
    replay_pool = order[cfg.gate_base:]
    # The shift reference is fitted as the trainer service fits it: on everything the model learned from
    # (every base frame but the gates', and every bought label), not on a fine-tune's replay sample, which
    # holds as many frames as the (mostly rare) labels do.
    reference_base = data.base.subset(sorted(replay_pool.tolist()))
    bought: list[tuple[np.ndarray, np.ndarray, str, str]] = []
    coarse: set[str] = set()  # taxonomies of the coarse labels among the bought ones (trainer.coarse)
    held: list[tuple[np.ndarray, np.ndarray, str, str]] = []
    rounds: list[dict[str, Any]] = []
    total = 0
    h, w = cfg.size
    try:
        for r, seg in enumerate(data.segments):
            times: dict[str, float] = {}
            t0 = time.perf_counter()
            settings_r = run_settings(settings, cfg, strategy, seed, run_dir / f"round-{r}")
            stats, decided = mine_segment(settings_r, holder, policy, seg.path)
            times["mine"] = time.perf_counter() - t0
            by_sample = {d.decision.sample_id: d for d in decided}
            # -- label: the oracle answers the requests the miner wrote ----------------------------------------
            t1 = time.perf_counter()
            cond_bought: Counter[str] = Counter()
            new = 0
            for req in read_requests(settings_r.sinks.output_dir):
                answer = oracle.answer(req)
                d = by_sample.get(req.sample_id)
                if answer is None or answer.mask_png is None or d is None:
                    continue
                label = decode_label(answer.mask_png)
                label = np.asarray(Image.fromarray(label).resize((w, h), Image.Resampling.NEAREST), np.uint8)
                tax = TAXONOMIES.get(data.frame_taxonomy.get(req.frame_id, data.default_taxonomy.name),
                                     data.default_taxonomy)
                holdout = is_holdout(req.sample_id)
                if tax != CAMVID:
                    to_tax = mapping(CAMVID, tax)
                    if to_tax is None:
                        log.warning("frame %s is labeled in %s, with no mapping from %s: not trained on",
                                    req.frame_id, tax.name, CAMVID.name)
                        label = np.full_like(label, CAMVID.void)
                    elif holdout:  # the gates score fine classes: the groups that are one class
                        label = lift_labels(label, to_tax)
                    else:  # trained on through the groups' summed probabilities
                        label = encode_coarse(label, to_tax, CAMVID.void)
                        coarse.add(tax.name)
                image = np.asarray(d.image, np.uint8)
                if image.shape[:2] != (h, w):
                    image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR), np.uint8)
                item = (image, label, req.frame_id, d.decision.slice)
                (held if holdout else bought).append(item)
                cond_bought[_condition_of(d.frame)] += 1
                new += 1
            total += new
            times["label"] = time.perf_counter() - t1
            # -- train, gate, release ---------------------------------------------------------------------------
            released, failures = False, []
            t2 = time.perf_counter()
            if new and len(bought) >= 2:
                n_replay = max(cfg.replay_min, int(round(cfg.replay * len(bought))))
                pick = np.random.default_rng([seed, r]).choice(replay_pool, size=min(n_replay, len(replay_pool)),
                                                               replace=False)
                labeled = _label_frames(bought)
                train = LabeledFrames.concat([labeled, data.base.subset(sorted(pick.tolist()))])
                steps_per_epoch = max(1, len(train) // cfg.batch_size)
                tc = TrainConfig(epochs=max(1, math.ceil(cfg.steps / steps_per_epoch)), batch_size=cfg.batch_size,
                                 lr=cfg.lr, seed=seed * 1000 + r, threads=cfg.threads, progress=False,
                                 eval_every=10**9, coarse_taxonomy=_one(coarse))
                candidate = load_ensemble(Path(holder.current.bundle.path) / "model.pt")
                candidate = train_ensemble(candidate, train, tc, work_dir=None).model
                times["train"] = time.perf_counter() - t2
                t3 = time.perf_counter()
                if cfg.gates:
                    gate_frames = LabeledFrames.concat([gate_base, *([_label_frames(held)] if held else [])])
                    prepared = gate_groups(gate_frames)
                    report = compare(gate_metrics(candidate, gate_frames, prepared=prepared),
                                     gate_metrics(production, gate_frames, prepared=prepared),
                                     settings.trainer.gate_margin)
                    try:
                        enforce(report)
                    except GateRefusedError:
                        failures = [f"{s.slice} ({s.reason})" for s in report.failures]
                times["gate"] = time.perf_counter() - t3
                if not failures:
                    t4 = time.perf_counter()
                    bundle = export_release_bundle(
                        candidate, run_dir / f"release-{r + 1}", version=f"{strategy}-s{seed}-r{r + 1}",
                        input_hw=cfg.size, reference=fit_reference(candidate, LabeledFrames.concat([labeled, reference_base])),
                        classes=list(CAMVID.classes), trained_on={"labels": total, "replay": len(pick)},
                        gate_quality=report.quality() if cfg.gates else None,
                    )
                    swap = holder.load(bundle.path)
                    if not swap.ok:
                        raise DatasetError(f"hot-swap to {bundle.path} failed: {swap.error}")
                    production, released = candidate, True
                    times["release"] = time.perf_counter() - t4
            # -- evaluate production ------------------------------------------------------------------------------
            t5 = time.perf_counter()
            with torch.inference_mode():
                report_eval = evaluate(ensemble_predictor(production), data.eval)
            times["eval"] = time.perf_counter() - t5
            times["total"] = time.perf_counter() - t0
            scores: dict[str, dict[str, list[float]]] = {}
            mined_scores: dict[str, dict[str, float]] = {}
            by_cond: dict[str, list[Any]] = {}
            for d in decided:
                by_cond.setdefault(_condition_of(d.frame), []).append(d)
            for cond, ds in sorted(by_cond.items()):
                scores[cond] = {k: _quantiles([x.decision.scores.get(k, 0.0) for x in ds])
                                for k in ("mi", "entropy", "shift", "priority")
                                if k != "priority"} | {"priority": _quantiles([x.priority for x in ds])}
                mined = [x for x in ds if x.decision.mined]
                if mined:
                    mined_scores[cond] = {k: round(float(np.mean([x.decision.scores.get(k, 0.0) for x in mined])), 4)
                                          for k in ("mi", "entropy", "shift")}
            rejected = Counter(str(d.rejected) for d in decided if d.rejected)
            worst = report_eval.worst
            rr = RoundResult(
                round=r + 1, labels=new, labels_total=total, bought_by_condition=dict(cond_bought),
                frames_by_condition=seg.by_condition, released=released, gate_failures=failures,
                eval=report_eval.to_dict(), worst=float(worst.miou_common), worst_condition=worst.condition,
                seconds={k: round(v, 2) for k, v in times.items()}, scores=scores, mined_scores=mined_scores,
                rejected=dict(rejected),
            )
            rounds.append(asdict(rr))
            say(f"{strategy} seed {seed} round {r + 1}/{len(data.segments)}: {new} labels "
                f"({dict(cond_bought)}), {'released' if released else 'not released ' + '; '.join(failures)}, "
                f"worst {worst.condition} {worst.miou_common:.3f}, {times['total']:.0f} s "
                f"(mined {stats.mined} of {stats.decisions})")
    finally:
        holder.close()
    result = {"strategy": strategy, "seed": seed, "key": run_key(cfg, settings), "rounds": rounds}
    (run_dir / RESULT_FILE).write_text(json.dumps(result, default=_json_default))
    return result


def evaluate_initial(cfg: BacktestConfig, data: _Data) -> dict[str, Any]:
    """Per-condition results of the starting model (round 0 of every run)."""
    import torch

    from avminer.evaluation.segmentation import ensemble_predictor, evaluate
    from avminer.models import load_ensemble

    with torch.inference_mode():
        report = evaluate(ensemble_predictor(load_ensemble(Path(data.initial) / "model.pt")), data.eval)
    return report.to_dict()


# --- many runs --------------------------------------------------------------------------------------------


def _worker(cfg: BacktestConfig, settings: Settings, strategy: str, seed: int) -> dict[str, Any]:
    import sys

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    return run_one(cfg, settings, strategy, seed, say=say)


def run_backtest(cfg: BacktestConfig, settings: Settings, say: Callable[[str], None] | None = None,
                 report_only: bool = False) -> dict[str, Any]:
    """Every strategy x seed (in ``cfg.jobs`` processes), then the summary (:func:`summarise`).

    ``report_only``: run nothing, summarise the runs earlier backtests with these settings finished
    (strategies may then have different numbers of seeds; each curve says how many it has).
    """
    say = say or (lambda msg: log.info(msg))
    cfg.validate()
    started = time.perf_counter()
    data = _Data(cfg)
    initial = evaluate_initial(cfg, data)
    say(f"stream {cfg.stream}: {sum(s.frames for s in data.segments)} frames in {len(data.segments)} rounds; "
        f"starting model worst {initial['worst_condition']} {initial['worst_miou_common']:.3f}")
    pairs = [(s, seed) for seed in cfg.seeds for s in cfg.strategies]
    done = {(s, seed): finished_run(cfg, settings, s, seed) for s, seed in pairs}
    if any(done.values()):
        say(f"reusing {sum(1 for v in done.values() if v)} finished run(s) from {cfg.out / 'runs'}")
    if report_only and not any(done.values()):
        raise DatasetError(f"--report-only: no finished run in {cfg.out / 'runs'} has these settings (a run is reused "
                           "only with the same stream, base and eval files and the same settings)")
    todo = [] if report_only else [p for p in pairs if done[p] is None]
    if cfg.jobs <= 1:
        for strategy, seed in todo:
            done[(strategy, seed)] = run_one(cfg, settings, strategy, seed, data, say)
    elif todo:
        import multiprocessing

        with ProcessPoolExecutor(cfg.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {p: pool.submit(_worker, cfg, settings, p[0], p[1]) for p in todo}
            for p, f in futures.items():
                done[p] = f.result()
    runs = [r for p in pairs if (r := done[p]) is not None]
    stream_counts: Counter[str] = Counter()
    for seg in data.segments:
        stream_counts.update(seg.by_condition)
    report = summarise(runs, initial, dict(stream_counts), cfg)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["environment"] = environment()
    return report


ENVIRONMENT_PACKAGES = ("torch", "numpy", "onnxruntime", "pillow", "simplejpeg", "fastavro")
"""Packages whose versions a backtest report records: the figures reproduce to the digit under the same
versions and threads, and move (the starting model's fine-tune first) when one of them changes."""


def environment() -> dict[str, str]:
    """Python, platform and :data:`ENVIRONMENT_PACKAGES` versions, for the report."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ENVIRONMENT_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _interp_labels_to_reach(labels: Sequence[float], worst: Sequence[float], target: float) -> float | None:
    """Labels at which a (labels, worst) curve first reaches ``target`` (linear between rounds)."""
    for i, (x, y) in enumerate(zip(labels, worst, strict=True)):
        if y >= target:
            if i == 0:
                return float(x)
            x0, y0 = labels[i - 1], worst[i - 1]
            return float(x0 + (x - x0) * (target - y0) / max(y - y0, 1e-12))
    return None


def summarise(runs: list[dict[str, Any]], initial: dict[str, Any], stream_counts: dict[str, int],
              cfg: BacktestConfig) -> dict[str, Any]:
    """Mean curves per strategy with per-seed spread; rare-condition buy ratios; the goal checks."""
    config = {k: _paths_as_text(v) for k, v in asdict(cfg).items()}
    return _summary(runs, initial, stream_counts, list(cfg.strategies), config)


def resummarise(report: dict[str, Any]) -> dict[str, Any]:
    """A written ``backtest.json`` summarised again from the runs it holds (after the summary itself changed).

    The runs, the starting model's evaluation, the stream's counts and the configuration are kept as they are;
    the curves and goals are recomputed; other keys (``seconds``, notes) are carried over.
    """
    try:
        runs, initial, counts, config = (report["runs"], report["initial"], report["stream_by_condition"],
                                         report["config"])
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"not a backtest report (no {exc} in it): give the backtest.json a run wrote") from None
    fresh = _summary(runs, initial, counts, list(config["strategies"]), config)
    return {**report, **fresh}


def _summary(runs: list[dict[str, Any]], initial: dict[str, Any], stream_counts: dict[str, int],
             strategy_names: list[str], config: dict[str, Any]) -> dict[str, Any]:
    strategies: dict[str, Any] = {}
    total_frames = max(sum(stream_counts.values()), 1)
    rare_share = sum(stream_counts.get(c, 0) for c in RARE_CONDITIONS) / total_frames
    for name in strategy_names:
        mine = [r for r in runs if r["strategy"] == name]
        if not mine:
            continue
        n_rounds = len(mine[0]["rounds"])
        curve = []
        for k in range(n_rounds):
            rows = [run["rounds"][k] for run in mine]
            worst = [row["worst"] for row in rows]
            conds = sorted({c for row in rows for c in row["eval"]["conditions"]})
            per_seed = {c: [_common(row, c) for row in rows] for c in conds}
            per_cond = {c: float(np.nanmean(v)) for c, v in per_seed.items()}
            curve.append({
                "round": k + 1,
                "labels": float(np.mean([row["labels_total"] for row in rows])),
                "labels_per_seed": [row["labels_total"] for row in rows],
                "worst": float(np.mean(worst)), "worst_min": float(min(worst)), "worst_max": float(max(worst)),
                "worst_per_seed": worst,
                "worst_conditions": [row["worst_condition"] for row in rows],
                "per_condition": per_cond,
                "per_condition_per_seed": per_seed,
                "released": sum(bool(row["released"]) for row in rows),
                "seconds": float(np.mean([row["seconds"]["total"] for row in rows])),
            })
        bought: Counter[str] = Counter()
        for run in mine:
            for row in run["rounds"]:
                bought.update(row["bought_by_condition"])
        n_bought = max(sum(bought.values()), 1)
        rare_bought = sum(bought.get(c, 0) for c in RARE_CONDITIONS) / n_bought
        strategies[name] = {
            "seeds": sorted(run["seed"] for run in mine),
            "curve": curve,
            "bought_by_condition": {c: v / len(mine) for c, v in sorted(bought.items())},
            "rare_label_share": rare_bought,
            "rare_buy_ratio": rare_bought / rare_share if rare_share else None,
            "seconds_per_round": float(np.mean([c["seconds"] for c in curve])),
        }
    goals = _goals(strategies, initial)
    return {
        "config": config, "stream_by_condition": stream_counts, "rare_stream_share": rare_share,
        "initial": initial, "strategies": strategies, "goals": goals, "runs": runs,
    }


def _common(row: dict[str, Any], condition: str) -> float:
    v = row["eval"]["conditions"].get(condition, {}).get("miou_common")
    return float("nan") if v is None else float(v)


def _goals(strategies: dict[str, Any], initial: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals for each non-baseline policy, measured against the baselines.

    Baselines at the backtest's budget are compared round by round and at equal labels; a baseline run at a
    multiple of it (``random-x3``, :func:`parse_strategy`) under ``more_labels``: the labels this policy needs
    to reach that baseline's final worst-condition figure, as a fraction of what the baseline bought.
    """
    baselines = [s for s in BASELINES if s in strategies]
    richer = [s for s in strategies if s not in BASELINES and parse_strategy(s)[0] in BASELINES]
    out: dict[str, Any] = {}
    if "random" not in strategies:
        return out
    rnd = strategies["random"]["curve"]
    start = float(initial["worst_miou_common"])
    target = rnd[-1]["worst"]
    for name in ("full", "adaptive", "adaptive_mi"):
        if name not in strategies:
            continue
        curve = strategies[name]["curve"]
        labels = [0.0] + [c["labels"] for c in curve]
        worst = [start] + [c["worst"] for c in curve]
        # Reaching random's final figure means something only if random improved on the starting model.
        reach = _interp_labels_to_reach(labels, worst, target) if target > start else None
        beats: dict[str, list[bool]] = {}
        for b in baselines:
            bc = strategies[b]["curve"]
            rows = []
            for mine, theirs in zip(curve, bc, strict=True):
                spread = max(mine["worst_max"] - mine["worst_min"], theirs["worst_max"] - theirs["worst_min"])
                rows.append(mine["worst"] - theirs["worst"] > spread)
            beats[b] = rows
        equal = {b: _at_equal_labels(strategies[name], strategies[b], start) for b in baselines}
        day = _day_gap(curve, rnd)
        more = []
        for b in richer:
            final = strategies[b]["curve"][-1]
            # As for random's figure: reaching it means something only if that baseline improved on the start.
            improved = final["worst"] > start
            got = _interp_labels_to_reach(labels, worst, final["worst"]) if improved else None
            # The interpolation assumes a straight line from the start to the first round; the labels of the
            # first round at or above the figure bound it from above, assuming nothing.
            by = next((c["labels"] for c in curve if c["worst"] >= final["worst"]), None) if got is not None else None
            more.append({"strategy": b, "budget_multiple": parse_strategy(b)[1], "final_worst": final["worst"],
                         "final_labels": final["labels"], "improved_worst": improved,
                         "labels_to_reach": got, "reached_by_round_labels": by,
                         "label_fraction": got / final["labels"] if got is not None and final["labels"] else None,
                         "label_fraction_bound": by / final["labels"] if by is not None and final["labels"] else None,
                         "ahead_at_every_round": all(m["worst"] > t["worst"] for m, t in
                                                     zip(curve, strategies[b]["curve"], strict=True))})
        out[name] = {
            "random_final_worst": target, "random_final_labels": rnd[-1]["labels"],
            "random_improved_worst": target > start,
            "labels_to_reach_random_final": reach,
            "label_fraction_of_random": reach / rnd[-1]["labels"] if reach is not None and rnd[-1]["labels"] else None,
            "beats_by_more_than_spread": beats,
            "at_equal_labels": equal,
            "day_vs_random": day,
            "more_labels": more,
            "rare_buy_ratio": strategies[name]["rare_buy_ratio"],
        }
    return out


def _at_equal_labels(policy: dict[str, Any], baseline: dict[str, Any], start: float) -> list[dict[str, Any]]:
    """Per round of a policy: a baseline's worst-condition mIoU at the same number of labels.

    Each of the baseline's seeds is a curve (labels, worst) from (0, starting model), read at the policy's
    mean labels of that round by linear interpolation; ``theirs`` is None where that is beyond what the
    baseline bought. ``win``: the gap exceeds the larger of the two seed spreads (the issue's test).

    ``paired``: per seed both ran, the policy's worst minus the same seed's baseline curve read at that seed's
    own label count (None beyond the baseline's labels). A seed fixes the gate frames, the replay draws and
    the training seed for every strategy, so the pair shares what the spread mostly measures (the
    fine-tune's luck); ``ahead`` counts the seeds with a positive gap, of ``paired_seeds``.
    """
    curve, theirs = policy["curve"], baseline["curve"]

    def read(pos: int, at: float) -> float | None:
        xs = [0.0] + [float(c["labels_per_seed"][pos]) for c in theirs]
        ys = [start] + [float(c["worst_per_seed"][pos]) for c in theirs]
        return float(np.interp(at, xs, ys)) if at <= xs[-1] else None

    their_pos = {seed: i for i, seed in enumerate(baseline["seeds"])}
    out: list[dict[str, Any]] = []
    for row in curve:
        paired: list[float | None] = []
        for i, seed in enumerate(policy["seeds"]):
            if seed in their_pos:
                value = read(their_pos[seed], float(row["labels_per_seed"][i]))
                paired.append(None if value is None else round(float(row["worst_per_seed"][i]) - value, 4))
        known = [g for g in paired if g is not None]
        pairs = {"paired": paired, "ahead": sum(g > 0 for g in known), "paired_seeds": len(known)}
        values = [read(i, row["labels"]) for i in range(len(baseline["seeds"]))]
        if any(v is None for v in values):
            out.append({"labels": row["labels"], "mine": row["worst"], "theirs": None, "spread": None, "win": None}
                       | pairs)
            continue
        got = [float(v) for v in values if v is not None]
        spread = max(row["worst_max"] - row["worst_min"], max(got) - min(got))
        theirs_mean = float(np.mean(got))
        out.append({"labels": row["labels"], "mine": row["worst"], "theirs": theirs_mean, "spread": spread,
                    "win": row["worst"] - theirs_mean > spread} | pairs)
    return out


def _day_gap(curve: list[dict[str, Any]], rnd: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """Per round: how far this policy's day mIoU (common taxonomy, the eval day condition) is below random's.

    ``gap`` = random's mean minus this policy's; ``spread`` = the larger of the two strategies' ranges over
    seeds; ``within_spread``: the goal "day not below random's by more than the spread" holds.
    """
    out: list[dict[str, Any] | None] = []
    for mine, theirs in zip(curve, rnd, strict=True):
        days = [c for c in mine["per_condition"] if c.endswith("/day") and c in theirs["per_condition"]
                and not c.startswith("india")]
        if not days:
            out.append(None)
            continue
        day = days[0]
        gap = theirs["per_condition"][day] - mine["per_condition"][day]
        spread = max(float(np.nanmax(c["per_condition_per_seed"][day]) - np.nanmin(c["per_condition_per_seed"][day]))
                     for c in (mine, theirs))
        out.append({"condition": day, "gap": round(gap, 4), "spread": round(spread, 4),
                    "within_spread": bool(gap <= spread)})
    return out


# --- files ------------------------------------------------------------------------------------------------


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``backtest.json`` and ``backtest.png`` (worst-condition mIoU vs labels; rare-label share)."""
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / "backtest.json"
    jpath.write_text(json.dumps(report, indent=1, default=_json_default))
    ppath = out / "backtest.png"
    plot(report, ppath)
    return jpath, ppath


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def plot(report: dict[str, Any], path: Path) -> None:
    """Worst-condition mIoU vs labels (mean, per-seed range) and labels bought per condition per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1.4, 1]})
    start = report["initial"]["worst_miou_common"]
    for name, s in report["strategies"].items():
        xs = [0.0] + [c["labels"] for c in s["curve"]]
        ys = [start] + [c["worst"] for c in s["curve"]]
        lo = [start] + [c["worst_min"] for c in s["curve"]]
        hi = [start] + [c["worst_max"] for c in s["curve"]]
        (line,) = ax.plot(xs, ys, marker="o", label=name)
        ax.fill_between(xs, lo, hi, alpha=0.15, color=line.get_color())
    ax.set_xlabel("labels bought (cumulative, mean over seeds)")
    ax.set_ylabel("worst-condition mIoU (IDD level-1 groups)")
    ax.set_title("held-out worst condition vs labels; band: per-seed range")
    ax.grid(alpha=0.3)
    ax.legend()
    names = list(report["strategies"])
    conds = sorted({c for s in report["strategies"].values() for c in s["bought_by_condition"]})
    bottom = np.zeros(len(names))
    for cond in conds:
        vals = np.array([report["strategies"][n]["bought_by_condition"].get(cond, 0.0) for n in names])
        bx.bar(names, vals, bottom=bottom, label=cond)
        bottom += vals
    share = report.get("rare_stream_share", 0.0)
    bx.set_title(f"labels bought per condition (rare: {share:.1%} of the stream)")
    bx.set_ylabel("labels per run (mean over seeds)")
    bx.tick_params(axis="x", labelrotation=30)
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
