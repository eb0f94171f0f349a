"""``avminer train report --adapt``: each adaptation method alone and combined, per condition, over seeds.

Starts from a trained bundle (the day-only starter by default) and adapts it to Cambridge dusk and India
(IDD-lite) with the methods of :mod:`avminer.trainer.adapt`, then scores every variant with the one
evaluation (:func:`avminer.evaluation.segmentation.evaluate`) on held-out frames the adaptation never saw,
in IDD's 7 level-1 groups (the common taxonomy: India is labeled in it).

Splits (deterministic, :func:`adaptation_splits`):

- source (labeled): CamVid ``train`` rows of the day sequences (what the starter was trained on);
- day eval: CamVid ``val`` rows (0016E5);
- dusk: sequence 0001TP in frame order, the first half to adapt on (unlabeled), the second half to
  evaluate;
- India: IDD-lite split *by sequence id* (crc32 of the id mod 3): adaptation sequences, evaluation
  sequences and validation sequences.

Validation mode (``validation=True``, ``--validation``): for choosing settings without looking at the
evaluation frames, which it never loads. Day is scored on sequence 0006R0 (CamVid ``train``), left out of
the source frames (the starter was trained on it, so it measures what adaptation forgets, not
generalisation); dusk on the last third of the dusk adaptation half, left out of the target frames; India
on the IDD-lite validation sequences.

Rows: ``baseline`` (the bundle as it is), ``adabn``, ``synth``, ``pseudo``, ``synth+adabn``, ``synth+adabn+pseudo``,
``synth+pseudo`` (self-training after ``synth``, no AdaBN), ``synth+mix`` (self-training through cross-domain
ClassMix, DACS-style, pseudo-labels in IDD's groups: :data:`MIX_PSEUDO`), ``labels50+pseudo`` (50 India adaptation frames picked by the ensemble's uncertainty — mean mutual
information, as the miner ranks them — labeled in IDD's groups, plus pseudo-labels on the rest and on
dusk), ``labels_all`` (every adaptation frame's label: India in IDD groups, dusk in CamVid classes).
A ``+wise`` row returns the weights averaged with the starting ones (``interpolate``; WiSE-FT, see
:class:`avminer.trainer.adapt.AdaptConfig`). ``interpolate_sweep`` (``--interpolate-sweep``, for choosing that
weight on the validation slices) trains a ``+wise`` row once per seed and scores it at every weight of the
sweep (rows ``<row>@<a>``).
"""

from __future__ import annotations

import copy
import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avminer.errors import ConfigError, DatasetError
from avminer.taxonomy import CAMVID, IDD_LEVEL1
from avminer.trainer.data import LabeledFrames, load_camvid

log = logging.getLogger(__name__)

ROWS = ("baseline", "adabn", "synth", "pseudo", "synth+adabn", "synth+adabn+pseudo", "synth+adabn+pseudo+wise",
        "synth+pseudo", "synth+mix", "synth+mix+wise", "labels50+pseudo", "labels_all")
"""Report rows (methods and label budgets), in table order."""

DEFAULT_ROWS = tuple(r for r in ROWS if r != "synth+mix+wise")
"""The report's rows unless ``--methods`` names others. ``synth+mix+wise`` is not among them: on the validation
slices no weight below 1 beat the plain ``synth+mix`` (README, Domain adaptation)."""

CONDITIONS = ("cambridge_uk/day", "cambridge_uk/dusk", "india/day")

THIN_ROLES = ("source", "day", "dusk", "india", "india_adapt")
"""Roles :func:`adaptation_splits` can thin (keep every n-th frame)."""


@dataclass
class Splits:
    """Frames of every role, at the model's input size."""

    source: LabeledFrames
    target: LabeledFrames  # unlabeled adaptation frames (dusk first half + India adaptation sequences)
    dusk_labeled: LabeledFrames  # the dusk adaptation frames with their CamVid labels (labels_all only)
    india_labeled: LabeledFrames  # India adaptation frames with IDD labels (coarse-encoded)
    eval_slices: list[Any]  # avminer.evaluation.segmentation.EvalSlice per condition
    india_unused_frames: int  # IDD-lite frames of the third this mode does not score (validation or evaluation)


def india_role(sequence: str) -> str:
    """``adapt``, ``eval`` or ``val`` for an IDD-lite sequence id (deterministic, by crc32)."""
    return ("adapt", "eval", "val")[zlib.crc32(f"idd-split/{sequence}".encode()) % 3]


def _every(frames: LabeledFrames, step: int) -> LabeledFrames:
    return frames if step <= 1 else frames.subset(range(0, len(frames), step))


DAY_VALIDATION_SEQUENCE = "0006R0"
"""CamVid day sequence held out of the source frames in validation mode (day is scored on it)."""


def adaptation_splits(camvid: Path, idd: Path, size: tuple[int, int], *, thin: dict[str, int] | None = None,
                      validation: bool = False, day_validation_sequence: str = DAY_VALIDATION_SEQUENCE) -> Splits:
    """Load the report's splits (see the module docstring); ``thin`` keeps every n-th frame of a role.

    With ``validation`` the scored slices are the validation ones (day: ``day_validation_sequence``, held
    out of the source) and the evaluation frames are not loaded.

    Raises:
        DatasetError: a folder lacks the sequences the splits need.
    """
    from avminer.datasets.layout import read_layout
    from avminer.evaluation.segmentation import EvalSlice
    from avminer.taxonomy import CAMVID_TO_IDD_LEVEL1
    from avminer.trainer.coarse import encode_coarse

    thin = thin or {}
    rows = read_layout(camvid)
    day_seqs = sorted({r.sequence for r in rows if r.time_of_day == "day"})
    dusk_rows = sorted((r for r in rows if r.time_of_day == "dusk"), key=lambda r: (r.sequence, r.frame_index or 0))
    if not day_seqs or len(dusk_rows) < 4:
        raise DatasetError(f"{camvid}: needs day sequences and at least 4 dusk frames (0001TP), found "
                           f"day {day_seqs}, {len(dusk_rows)} dusk")
    if validation:
        if day_validation_sequence not in day_seqs or len(day_seqs) < 2:
            raise DatasetError(f"{camvid}: validation mode holds out day sequence {day_validation_sequence}, "
                               f"and needs another for the source; found {day_seqs}")
        source_seqs = [s for s in day_seqs if s != day_validation_sequence]
        source = load_camvid(camvid, size, splits=["train"], time_of_day=["day"], sequences=source_seqs)
        day_eval = load_camvid(camvid, size, splits=["train"], time_of_day=["day"], sequences=[day_validation_sequence])
    else:
        source = load_camvid(camvid, size, splits=["train"], time_of_day=["day"])
        day_eval = load_camvid(camvid, size, splits=["val"], time_of_day=["day"])
    source, day_eval = _every(source, thin.get("source", 1)), _every(day_eval, thin.get("day", 1))
    dusk = load_camvid(camvid, size, time_of_day=["dusk"])
    position = {r.frame_id: i for i, r in enumerate(dusk_rows)}  # frame order within the sequence
    dusk = dusk.subset(np.argsort([position[f] for f in dusk.frame_ids], kind="stable"))
    half = len(dusk) // 2
    if validation:  # the evaluation half is never loaded into a slice; the adaptation half gives up its last third
        cut = half - half // 3
        dusk_adapt, dusk_eval = dusk.subset(range(cut)), dusk.subset(range(cut, half))
    else:
        dusk_adapt, dusk_eval = dusk.subset(range(half)), dusk.subset(range(half, len(dusk)))
    dusk_eval = _every(dusk_eval, thin.get("dusk", 1))

    idd_rows = read_layout(idd)
    roles = {r.sequence: india_role(r.sequence) for r in idd_rows}
    by_role = {role: sorted(s for s, x in roles.items() if x == role) for role in ("adapt", "eval", "val")}
    if not by_role["adapt"] or not by_role["eval"]:
        raise DatasetError(f"{idd}: too few sequences to split into adaptation and evaluation ({len(roles)})")
    india_adapt = _every(load_camvid(idd, size, sequences=by_role["adapt"]), thin.get("india_adapt", 1))
    india_eval = _every(load_camvid(idd, size, sequences=by_role["val" if validation else "eval"]), thin.get("india", 1))
    india_labeled = LabeledFrames(india_adapt.images, encode_coarse(india_adapt.labels, CAMVID_TO_IDD_LEVEL1, CAMVID.void),
                                  list(india_adapt.frame_ids), list(india_adapt.slices), list(india_adapt.sequences))
    target = LabeledFrames.concat([dusk_adapt, india_adapt])
    slices = [EvalSlice("cambridge_uk/day", day_eval, CAMVID), EvalSlice("cambridge_uk/dusk", dusk_eval, CAMVID),
              EvalSlice("india/day", india_eval, IDD_LEVEL1)]
    unused = sum(1 for r in idd_rows if roles[r.sequence] == ("eval" if validation else "val"))
    return Splits(source, target, dusk_adapt, india_labeled, slices, unused)


@dataclass
class AdaptReportConfig:
    """Scale of the report.

    The defaults are the full report, sized to finish within an hour on a shared two-core machine (one
    thread): every row, two seeds, 2 epochs of the labeled/synthetic stage and 2 pseudo-label rounds,
    120 of the source frames per training stage, every 3rd frame of the India adaptation sequences as
    unlabeled target; every evaluation frame is scored. :meth:`quick` is the CI scale.

    Attributes:
        camvid: CamVid-layout folder (day + dusk).
        idd: IDD-lite folder (7 groups).
        bundle: the model to adapt.
        rows: report rows (subset of :data:`ROWS`).
        seeds: one adaptation per seed and row (baseline: no seed).
        epochs: fine-tuning epochs of the labeled/synthetic stage.
        rounds: pseudo-label rounds.
        lr: fine-tuning learning rate.
        max_source_frames: source frames per training stage (seeded subset; None: all).
        thin: every n-th frame per role (see :func:`adaptation_splits`); a role not named keeps every frame.
        label_budget: target frames labeled in ``labels50+pseudo``.
        threads: torch threads.
        validation: score on the validation slices (see the module docstring), never the evaluation ones.
        source_share: least share of labeled frames in every self-training epoch (``PseudoConfig``); None:
            0.5 in ``pseudo`` rows, :data:`MIX_PSEUDO`'s in ``mix`` rows.
        interpolate: in ``+wise`` rows, the weight of the fine-tuned weights against the starting ones
            (``AdaptConfig.interpolate``); other rows return the fine-tuned weights.
        interpolate_sweep: with weights here, every ``+wise`` row is adapted once per seed and scored at each
            of them (rows ``<row>@<a>``, ``interpolate`` unused): for choosing the weight on the validation
            slices.
        synth_mix: synthetic share per condition in ``synth`` rows (:class:`avminer.trainer.synth.SynthMix`);
            empty: :data:`avminer.trainer.adapt.DEFAULT_SYNTH_MIX`.
        synth_keep_clear: ``synth`` rows train on each rendered frame beside its clear original
            (``TrainConfig.synth_keep_clear``).
        pseudo_groups, pseudo_flip: pseudo-labels in IDD's groups, from mirror-averaged probabilities
            (``PseudoConfig.groups`` / ``flip``); None: off in ``pseudo`` rows, :data:`MIX_PSEUDO`'s in ``mix`` rows.
        keep: first-round share of each class's agreeing pixels kept (None: ``PseudoConfig``'s 0.2).
        pseudo_lr_scale: the self-training rounds' learning rate as a multiple of ``lr``.
    """

    camvid: Path
    idd: Path
    bundle: Path
    rows: tuple[str, ...] = DEFAULT_ROWS
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 2
    rounds: int = 2
    lr: float = 5e-4
    max_source_frames: int | None = 120
    thin: dict[str, int] = field(default_factory=lambda: {"india_adapt": 3})
    label_budget: int = 50
    threads: int = 1
    progress: bool = False
    validation: bool = False
    source_share: float | None = None
    interpolate: float = 0.5
    interpolate_sweep: tuple[float, ...] = ()
    synth_mix: dict[str, float] = field(default_factory=dict)
    synth_keep_clear: bool = False
    pseudo_groups: bool | None = None
    pseudo_flip: bool | None = None
    keep: float | None = None
    pseudo_lr_scale: float = 1.0
    source_bn: bool = False
    min_threshold: float = 0.0

    def __post_init__(self) -> None:
        from avminer.trainer.synth import SynthMix

        unknown = [r for r in self.rows if r not in ROWS]
        if unknown:
            raise ConfigError(f"unknown report row(s) {unknown}; known: {list(ROWS)}", "--methods")
        if not self.seeds:
            raise ConfigError("at least one seed", "--seeds")
        SynthMix.parse(self.synth_mix, "--synth-mix")
        for a in (*self.interpolate_sweep, self.interpolate):
            if not 0 < a <= 1:
                raise ConfigError(f"weights must be in (0, 1], got {a}",
                                  "--interpolate-sweep" if a in self.interpolate_sweep else "--interpolate")

    @classmethod
    def quick(cls, camvid: Path, idd: Path, bundle: Path, **overrides: Any) -> AdaptReportConfig:
        """Minutes on two cores: thin splits, one seed, one epoch and one pseudo round, few rows."""
        base: dict[str, Any] = dict(rows=("baseline", "adabn", "synth+adabn+pseudo"), seeds=(0,), epochs=1, rounds=1,
                                    max_source_frames=24,
                                    thin={"source": 1, "day": 6, "dusk": 3, "india": 24, "india_adapt": 12},
                                    label_budget=10)
        base.update(overrides)
        return cls(camvid, idd, bundle, **base)


@dataclass
class AdaptRow:
    """One row (method, seed): mIoU per condition in the common taxonomy and what it used."""

    method: str
    seed: int | None
    miou: dict[str, float]
    labels_used: int
    target_labels_used: int
    pseudo_frames: int
    pseudo_pixel_share: float
    seconds: float


@dataclass
class AdaptReport:
    rows: list[AdaptRow]
    config: dict[str, Any]
    splits: dict[str, int]

    def summary(self) -> list[dict[str, Any]]:
        """Per method: mean and spread (max - min over seeds) per condition, and what it used."""
        out = []
        for method in dict.fromkeys(r.method for r in self.rows):
            rs = [r for r in self.rows if r.method == method]
            entry: dict[str, Any] = {"method": method, "seeds": [r.seed for r in rs]}
            for cond in CONDITIONS:
                vals = [r.miou.get(cond, float("nan")) for r in rs]
                entry[cond] = {"mean": float(np.mean(vals)), "spread": float(np.max(vals) - np.min(vals)),
                               "values": vals}
            entry.update(labels_used=rs[0].labels_used, target_labels_used=rs[0].target_labels_used,
                         pseudo_frames=rs[0].pseudo_frames,
                         pseudo_pixel_share=float(np.mean([r.pseudo_pixel_share for r in rs])),
                         seconds=float(np.mean([r.seconds for r in rs])))
            out.append(entry)
        return out

    def table(self) -> str:
        head = ["method", "seeds", *(f"mIoU {c}" for c in CONDITIONS), "labels (target)", "pseudo frames (pixels)",
                "time s"]
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for e in self.summary():
            cells = [e["method"], str(len(e["seeds"]))]
            for cond in CONDITIONS:
                m = e[cond]
                cells.append(f"{m['mean']:.3f}" + (f" ± {m['spread'] / 2:.3f}" if len(e["seeds"]) > 1 else ""))
            cells += [f"{e['labels_used']} ({e['target_labels_used']})",
                      f"{e['pseudo_frames']} ({100 * e['pseudo_pixel_share']:.0f}%)", f"{e['seconds']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        which = "VALIDATION frames (not the evaluation ones)" if self.config.get("validation") else "held-out frames"
        lines.append(f"mIoU in IDD's 7 level-1 groups on {which}; ± is half the range over seeds.")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"config": self.config, "splits": self.splits, "summary": self.summary(),
                "rows": [vars(r) for r in self.rows]}


def pick_by_uncertainty(model: Any, frames: LabeledFrames, budget: int) -> list[int]:
    """Indices of the ``budget`` frames with the highest mean pixel mutual information of the ensemble."""
    from avminer.trainer.adapt import ensemble_pixel_scores

    _, _, mi = ensemble_pixel_scores(model, frames)
    score = mi.reshape(len(frames), -1).mean(1)
    return sorted(np.argsort(-score, kind="stable")[:budget].tolist())


MIX_PSEUDO: dict[str, Any] = {"groups": True, "flip": True, "source_share": 0.75}
"""Pseudo-label settings of the ``mix`` rows (``PseudoConfig`` fields) unless the config overrides them: IDD's
groups from mirror-averaged probabilities, three labeled frames to every pseudo-labeled one. Chosen on the
validation slices (README, Domain adaptation); ``pseudo`` rows keep the earlier defaults (classes, no mirror,
half and half) so their figures stay comparable."""


def pseudo_settings(cfg: AdaptReportConfig, mix: bool) -> Any:
    """The ``PseudoConfig`` of a row: ``mix`` rows take :data:`MIX_PSEUDO`, ``pseudo`` rows the fine defaults."""
    from avminer.trainer.adapt import PseudoConfig

    defaults = MIX_PSEUDO if mix else {"groups": False, "flip": False, "source_share": 0.5}
    groups = cfg.pseudo_groups if cfg.pseudo_groups is not None else bool(defaults["groups"])
    flip = cfg.pseudo_flip if cfg.pseudo_flip is not None else bool(defaults["flip"])
    share = cfg.source_share if cfg.source_share is not None else float(defaults["source_share"])
    extra: dict[str, Any] = {} if cfg.keep is None else {"keep": cfg.keep}
    return PseudoConfig(rounds=cfg.rounds, source_share=share, groups=groups, flip=flip,
                        lr_scale=cfg.pseudo_lr_scale, min_threshold=cfg.min_threshold, **extra)


def run_adapt_report(cfg: AdaptReportConfig) -> AdaptReport:
    """Adapt and score every (row, seed); see the module docstring."""
    from avminer.engines.bundle import load_bundle
    from avminer.evaluation.segmentation import ensemble_predictor, evaluate
    from avminer.models import load_ensemble
    from avminer.trainer.adapt import AdaptConfig, adapt
    from avminer.trainer.train import TrainConfig, set_threads

    set_threads(cfg.threads)
    bundle = load_bundle(cfg.bundle)
    if bundle.torch_path is None:
        raise ConfigError(f"{cfg.bundle}: the bundle has no model.pt to fine-tune", "--model")
    size = (bundle.input_height, bundle.input_width)
    splits = adaptation_splits(cfg.camvid, cfg.idd, size, thin=cfg.thin, validation=cfg.validation)
    base_model = load_ensemble(bundle.torch_path)
    # The starting weights the sweep averages with (only a sweep needs its own copy; adapt() keeps one per run).
    base_state = {k: v.detach().clone() for k, v in base_model.state_dict().items()} if cfg.interpolate_sweep else {}

    def score(model: Any) -> dict[str, float]:
        report = evaluate(ensemble_predictor(model), splits.eval_slices)
        return {s.condition: s.miou_common for s in report.slices}

    rows: list[AdaptRow] = []
    picked: list[int] | None = None
    for row in cfg.rows:
        if row == "baseline":
            t0 = time.perf_counter()
            rows.append(AdaptRow(row, None, score(base_model), 0, 0, 0, 0.0, time.perf_counter() - t0))
            log.info("%s: %s", row, rows[-1].miou)
            continue
        for seed in cfg.seeds:
            averaged = row.endswith("+wise")
            methods = {"labels50+pseudo": ("pseudo",), "labels_all": ()}.get(row, tuple(row.removesuffix("+wise").split("+")))
            sweep = cfg.interpolate_sweep if averaged else ()
            weight = cfg.interpolate if averaged and not sweep else 1.0
            train = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, seed=seed, threads=cfg.threads, eval_every=10_000,
                                progress=cfg.progress, coarse_taxonomy=IDD_LEVEL1.name, synth_mix=dict(cfg.synth_mix),
                                synth_keep_clear=cfg.synth_keep_clear)
            acfg = AdaptConfig(methods, train=train, pseudo=pseudo_settings(cfg, "mix" in methods),
                               max_source_frames=cfg.max_source_frames, interpolate=weight,
                               source_bn=cfg.source_bn and "adabn" not in methods)
            target, labeled = splits.target, None
            if row == "labels50+pseudo":
                if picked is None:
                    picked = pick_by_uncertainty(base_model, splits.india_labeled, cfg.label_budget)
                labeled = splits.india_labeled.subset(picked)
                keep = set(labeled.frame_ids)
                target = target.subset([i for i, f in enumerate(target.frame_ids) if f not in keep])
            elif row == "labels_all":
                labeled = LabeledFrames.concat([splits.india_labeled, splits.dusk_labeled])
            model = copy.deepcopy(base_model)
            _, record = adapt(model, splits.source, target, acfg, target_labeled=labeled)
            for name, variant in ([(row, model)] if not sweep else
                                  [(f"{row}@{a:g}", _averaged(model, base_state, a, acfg, splits.source, target))
                                   for a in sweep]):
                rows.append(AdaptRow(name, seed, score(variant), record.labels_used, record.target_labels_used,
                                     len(record.pseudo_frames), record.pseudo_pixel_share, record.seconds))
                log.info("%s seed %d: %s (%.0f s)", name, seed, rows[-1].miou, record.seconds)
    conf = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()}
    conf["mix_pseudo"] = {k: getattr(pseudo_settings(cfg, True), k) for k in ("groups", "flip", "source_share")}
    sizes = {"source": len(splits.source), "target_unlabeled": len(splits.target),
             "india_adapt": len(splits.india_labeled), "dusk_adapt": len(splits.dusk_labeled),
             **{f"eval:{s.condition}": len(s.frames) for s in splits.eval_slices},
             ("india_eval_unused" if cfg.validation else "india_val_unused"): splits.india_unused_frames}
    return AdaptReport(rows, conf, sizes)


def _averaged(model: Any, initial: dict[str, Any], a: float, acfg: Any, source: LabeledFrames,
              target: LabeledFrames) -> Any:
    """A copy of the adapted ``model`` with its weights averaged with ``initial`` at weight ``a`` (1: the copy)."""
    from avminer.trainer.adapt import wise

    out = copy.deepcopy(model)
    if a < 1:
        wise(out, initial, a, acfg, source, target)
    return out
