"""Domain adaptation of a trained ensemble to new conditions with few or no target labels.

Three methods, composable (:func:`adapt`), applied to a model fine-tuned from an existing bundle:

- ``synth``: train with synthetic conditions rendered on the labeled source frames
  (:mod:`avminer.trainer.synth`; labels carry over); its ``target_style`` condition borrows the look of the
  unlabeled target frames, so ``synth`` uses them too when the mix has it.
- ``adabn``: re-estimate every BatchNorm's statistics on unlabeled target frames (Li et al., "Revisiting
  Batch Normalization For Practical Domain Adaptation", ICLR-W 2017). One model serves every condition,
  so the statistics are re-estimated on the target frames pooled with an equal number of source frames
  (``adabn_source_share``); 0 is the paper's target-only variant. Cheap: one forward pass, no labels.
- ``pseudo``: self-training on unlabeled target frames, a few rounds. A pixel becomes a target only where
  the members agree (mutual information below a quantile of the target pixels' MI) and the ensemble mean
  is confident, with class-balanced thresholds: per predicted class, the confidence quantile that keeps
  the top ``keep`` share of that class's pixels, so rare classes are not drowned by road and sky (Zou et
  al., "Unsupervised Domain Adaptation for Semantic Segmentation via Class-Balanced Self-Training", ECCV
  2018). ``keep`` grows each round as the model improves. Everything else is void. Every self-training
  epoch keeps the source frames at least ``source_share`` of the frames it trains on (a seeded subset of
  the pseudo-labeled frames per round when there are more of them): the model serves the source
  condition too, and a target-dominated mix is what made day mIoU fall. With ``adabn`` the statistics are
  re-estimated after every round, so the next round's pseudo-labels come from target statistics again.
  Options (:class:`PseudoConfig`): pseudo-labels in the coarse taxonomy's groups (``groups``: IDD's 7
  level-1 groups, each one's probability the sum of its classes', trained through the group likelihood of
  :mod:`avminer.trainer.coarse`), and from probabilities averaged over the frame and its mirror (``flip``).
- ``mix``: self-training through cross-domain mixing (DACS, Tranheden et al., "DACS: Domain Adaptation via
  Cross-domain Mixed Sampling", WACV 2021): as ``pseudo``, but every pseudo-labeled target frame trained on
  carries the pixels of half the classes of a labeled frame, pasted with their labels (ClassMix masks,
  Olsson et al., WACV 2021; :func:`class_mix`), so the labeled classes are learnt in target context and
  the pseudo-labels beside them.

Target frames labeled in another taxonomy (IDD-lite's 7 groups) join the labeled set through the declared
mapping (:mod:`avminer.trainer.coarse`). Pseudo-labeled frames are recorded as such, never as human labels
(:attr:`AdaptRecord.pseudo_frames`; :func:`record_pseudo_labels` marks them in the catalog).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from avminer.errors import ConfigError, TrainerError
from avminer.models.ensemble import Ensemble
from avminer.taxonomy import TaxonomyMapping
from avminer.trainer.coarse import COARSE_BASE
from avminer.trainer.data import VOID, LabeledFrames, batches, to_tensors
from avminer.trainer.train import TrainConfig, coarse_mapping, train_ensemble

log = logging.getLogger(__name__)

METHODS = ("synth", "adabn", "pseudo", "mix")
"""Adaptation methods, in the order :func:`adapt` applies them (``pseudo`` and ``mix`` are two forms of
self-training; one run takes one of them)."""

DEFAULT_SYNTH_MIX = {"fog": 0.05, "dusk": 0.2, "night": 0.05, "rain": 0.05, "appearance": 0.1, "target_style": 0.1}
"""Synthetic share per condition when ``synth`` is on and no mix is given (as ``trainer.synth_mix``'s default).
55 % of the frames are rendered, the rest stay clear. A fifth of them take a new geography's look (random
appearance, the target frames' style) rather than light: chosen on the validation slices of
``avminer train report --adapt --validation`` (two seeds), where it gained India without losing day against
the lighting-only mix ``fog=0.1,dusk=0.3,night=0.1,rain=0.05`` (README, Domain adaptation)."""


def parse_methods(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"synth,adabn"`` -> ("synth", "adabn") in :data:`METHODS` order; ``none`` or empty -> ().

    Raises:
        ConfigError: an unknown method (names ``--adapt``).
    """
    items = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in items if m not in (*METHODS, "none")]
    if unknown:
        raise ConfigError(f"unknown adaptation method(s) {unknown}; known: {list(METHODS)} (comma-separated)", "--adapt")
    methods = tuple(m for m in METHODS if m in items)
    if "pseudo" in methods and "mix" in methods:
        raise ConfigError("pseudo and mix are two forms of self-training; pick one", "--adapt")
    return methods


@dataclass(frozen=True)
class PseudoConfig:
    """Self-training settings.

    Attributes:
        rounds: pseudo-label / retrain rounds.
        keep: per-class share of a class's (agreeing) pixels kept in the first round.
        keep_step: added to ``keep`` every round (capped at ``max_keep``).
        max_keep: upper bound of ``keep``.
        mi_quantile: pixels whose member disagreement (mutual information) is above this quantile of the
            target pixels' MI are void.
        max_threshold: a class's confidence threshold never exceeds this (keeps some pixels of every class
            the model predicts confidently at all).
        min_threshold: nor falls below this: a class the model is never confident about gets no pixels
            (0: the class-balanced quantile alone, as in CBST).
        epochs_per_round: training epochs per round.
        source_share: least share of labeled (source and labeled target) frames among the frames of a
            self-training epoch; pseudo-labeled frames beyond it are left out of that round (a seeded
            subset is kept, a different one each round). 0: every pseudo-labeled frame, whatever the mix.
        groups: pseudo-label in the groups of the coarse taxonomy the run trains with
            (``TrainConfig.coarse_taxonomy``, IDD's 7 level-1 groups in the report) rather than in the fine
            classes: a group's probability is the sum of its classes' probabilities, the members' agreement
            (MI) and the confidence are measured on the groups, and a kept pixel trains through the group
            likelihood (:mod:`avminer.trainer.coarse`), which says nothing about the fine class inside it.
        flip: the ensemble's probabilities are averaged over the frame and its mirror image before the
            pseudo-labels are chosen.
        lr_scale: the self-training rounds train at this multiple of the fine-tuning learning rate.

    Whether the pseudo-labeled frames are mixed with labeled ones is the method's choice (``mix``, not
    ``pseudo``), not a setting here.
    """

    rounds: int = 2
    keep: float = 0.2
    keep_step: float = 0.15
    max_keep: float = 0.5
    mi_quantile: float = 0.5
    max_threshold: float = 0.9
    min_threshold: float = 0.0
    epochs_per_round: int = 1
    source_share: float = 0.5
    groups: bool = False
    flip: bool = False
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        checks = [
            (self.rounds >= 1, "pseudo.rounds", f"must be >= 1, got {self.rounds}"),
            (0 < self.keep <= 1, "pseudo.keep", f"must be in (0, 1], got {self.keep}"),
            (self.keep_step >= 0, "pseudo.keep_step", f"must be >= 0, got {self.keep_step}"),
            (0 < self.max_keep <= 1, "pseudo.max_keep", f"must be in (0, 1], got {self.max_keep}"),
            (0 < self.mi_quantile <= 1, "pseudo.mi_quantile", f"must be in (0, 1], got {self.mi_quantile}"),
            (0 < self.max_threshold <= 1, "pseudo.max_threshold", f"must be in (0, 1], got {self.max_threshold}"),
            (0 <= self.min_threshold <= self.max_threshold, "pseudo.min_threshold",
             f"must be in [0, max_threshold], got {self.min_threshold}"),
            (self.epochs_per_round >= 1, "pseudo.epochs_per_round", f"must be >= 1, got {self.epochs_per_round}"),
            (0 <= self.source_share < 1, "pseudo.source_share", f"must be in [0, 1), got {self.source_share}"),
            (0 < self.lr_scale <= 10, "pseudo.lr_scale", f"must be in (0, 10], got {self.lr_scale}"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise ConfigError(message, name)

    def keep_at(self, round_index: int) -> float:
        return min(self.max_keep, self.keep + self.keep_step * round_index)

    def pseudo_frames_for(self, labeled_frames: int) -> int | None:
        """Most pseudo-labeled frames one round trains on beside ``labeled_frames`` (None: no limit)."""
        if self.source_share == 0:
            return None
        return int(labeled_frames * (1 - self.source_share) / self.source_share)


@dataclass
class AdaptRecord:
    """What an adaptation run did (for reports and provenance).

    Attributes:
        methods: the methods applied.
        labels_used: labeled frames trained on (source + target, any taxonomy).
        target_labels_used: of those, labeled target frames.
        pseudo_frames: ids of the frames trained on with pseudo-labels (never human labels).
        pseudo_pixels: pseudo-labeled pixels in the last round.
        pseudo_pixel_share: their share of the target pixels.
        rounds: per-round stats (keep share, thresholds, pixels).
        seconds: wall time of the adaptation.
    """

    methods: tuple[str, ...]
    labels_used: int = 0
    target_labels_used: int = 0
    pseudo_frames: list[str] = field(default_factory=list)
    pseudo_pixels: int = 0
    pseudo_pixel_share: float = 0.0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"methods": list(self.methods), "labels_used": self.labels_used,
                "target_labels_used": self.target_labels_used, "pseudo_frames": len(self.pseudo_frames),
                "pseudo_pixels": self.pseudo_pixels, "pseudo_pixel_share": round(self.pseudo_pixel_share, 4),
                "rounds": self.rounds, "seconds": round(self.seconds, 1)}


# -- AdaBN ------------------------------------------------------------------------------------------------


def adabn(model: Ensemble, frames: LabeledFrames, batch_size: int = 16) -> Ensemble:
    """Re-estimate every BatchNorm's running mean and variance on ``frames`` (labels unused), in place.

    The statistics become the exact average over the frames (cumulative moving average, ``momentum=None``)
    rather than an exponential one; dropout stays off so the activations are the inference ones.
    """
    if len(frames) == 0:
        raise TrainerError("AdaBN needs at least one target frame")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for module in model.modules():
            if isinstance(module, nn.Dropout | nn.Dropout2d):
                module.eval()
        with torch.no_grad():
            for index in batches(len(frames), batch_size, shuffle=False):
                if len(index) < 2 and len(frames) >= 2:
                    index = np.arange(len(frames) - 2, len(frames))  # a BN batch of one has no variance
                images, _ = to_tensors(frames, index)
                model.member_outputs(images.to(device))
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return model


# -- pseudo-labels ----------------------------------------------------------------------------------------


@dataclass
class PseudoLabels:
    """Pseudo-labeled target frames and how they were chosen."""

    frames: LabeledFrames  # labels: fine class ids where kept, VOID elsewhere
    thresholds: dict[int, float]  # class id -> confidence threshold
    mi_threshold: float
    pixels: int
    share: float


def ensemble_pixel_scores(
    model: Ensemble, frames: LabeledFrames, batch_size: int = 16, *, groups: NDArray[np.float32] | None = None,
    flip: bool = False,
) -> tuple[NDArray[np.uint8], NDArray[np.float32], NDArray[np.float32]]:
    """(predicted class [N, H, W], mean confidence [N, H, W], mutual information [N, H, W]) of the ensemble.

    Args:
        groups: ``[G, C]`` 0/1 membership matrix (``TaxonomyMapping.matrix``): score the groups, each one's
            probability the sum of its classes' (per member), and predict group ids; None: the classes.
        flip: average every member's probabilities over the frame and its mirror image (flipped back).
    """
    n, (h, w) = len(frames), frames.size
    pred = np.empty((n, h, w), np.uint8)
    conf = np.empty((n, h, w), np.float32)
    mi = np.empty((n, h, w), np.float32)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    matrix = None if groups is None else torch.as_tensor(groups, dtype=torch.float32)
    try:
        with torch.no_grad():
            for index in batches(n, batch_size, shuffle=False):
                images, _ = to_tensors(frames, index)
                images = images.to(device)
                probs, _ = model(images)  # [K, B, C, H, W]
                probs = probs.float().cpu()
                if flip:
                    mirrored, _ = model(images.flip(-1))
                    probs = 0.5 * (probs + mirrored.float().cpu().flip(-1))
                if matrix is not None:
                    probs = torch.einsum("gc,kbchw->kbghw", matrix, probs)
                mean = probs.mean(0)  # [B, C, H, W]
                total = -(mean * torch.log(mean.clamp_min(1e-12))).sum(1)  # [B, H, W] entropy of the mean
                expected = -(probs * torch.log(probs.clamp_min(1e-12))).sum(2).mean(0)  # [B, H, W]
                c, p = mean.max(1)
                pred[index], conf[index] = p.numpy().astype(np.uint8), c.numpy()
                mi[index] = (total - expected).clamp_min(0).numpy()
    finally:
        model.train(was_training)
    return pred, conf, mi


def class_balanced_pseudo_labels(
    pred: NDArray[np.uint8], conf: NDArray[np.float32], mi: NDArray[np.float32], *, keep: float,
    mi_quantile: float, max_threshold: float, num_classes: int, void: int = VOID, min_threshold: float = 0.0,
) -> tuple[NDArray[np.uint8], dict[int, float], float]:
    """Pixel targets where members agree and the mean is confident, with a confidence threshold per class.

    Args:
        pred, conf, mi: per pixel (any shape, the same for all three).
        keep: per class, the share of its agreeing pixels kept (the top ``keep`` by confidence).
        mi_quantile: pixels with MI above this quantile of all pixels' MI are void.
        max_threshold: cap of every class threshold.
        min_threshold: floor of every class threshold (applied after the cap).
        num_classes: classes of ``pred``.
        void: the label of everything not kept.

    Returns:
        (labels, class id -> threshold, the MI threshold).
    """
    mi_thr = float(np.quantile(mi, mi_quantile)) if mi_quantile < 1 else float("inf")
    agree = mi <= mi_thr
    thresholds: dict[int, float] = {}
    labels = np.full(pred.shape, void, np.uint8)
    for c in range(num_classes):
        mask = agree & (pred == c)
        if not mask.any():
            continue
        thr = max(min(float(np.quantile(conf[mask], 1.0 - keep)), max_threshold), min_threshold)
        thresholds[c] = thr
        labels[mask & (conf >= thr)] = c
    return labels, thresholds, mi_thr


def pseudo_label(model: Ensemble, frames: LabeledFrames, cfg: PseudoConfig, round_index: int = 0,
                 batch_size: int = 16, coarse: TaxonomyMapping | None = None) -> PseudoLabels:
    """Pseudo-label ``frames`` (their labels are ignored) with the ensemble at round ``round_index``.

    With ``cfg.groups`` the labels are the groups of ``coarse`` in the trainer's coarse encoding
    (``COARSE_BASE + g``) and the thresholds are per group.

    Raises:
        ConfigError: ``cfg.groups`` without a coarse mapping.
    """
    if cfg.groups and coarse is None:
        raise ConfigError("group pseudo-labels need the coarse taxonomy the run trains with", "train.coarse_taxonomy")
    matrix = coarse.matrix if cfg.groups and coarse is not None else None
    pred, conf, mi = ensemble_pixel_scores(model, frames, batch_size, groups=matrix, flip=cfg.flip)
    num = model.num_classes if matrix is None else matrix.shape[0]
    labels, thresholds, mi_thr = class_balanced_pseudo_labels(
        pred, conf, mi, keep=cfg.keep_at(round_index), mi_quantile=cfg.mi_quantile,
        max_threshold=cfg.max_threshold, num_classes=num, void=255, min_threshold=cfg.min_threshold,
    )
    kept_mask = labels != 255
    if matrix is not None:
        labels = np.where(kept_mask, labels.astype(np.int64) + COARSE_BASE, VOID).astype(np.uint8)
    else:
        labels[~kept_mask] = VOID
    kept = int(kept_mask.sum())
    out = LabeledFrames(frames.images, labels, [f"{f}+pseudo" for f in frames.frame_ids], list(frames.slices),
                        list(frames.sequences))
    return PseudoLabels(out, thresholds, mi_thr, kept, kept / max(labels.size, 1))


def class_mix(target: LabeledFrames, labeled: LabeledFrames, rng: np.random.Generator,
              void: int = VOID) -> tuple[LabeledFrames, list[str]]:
    """Cross-domain ClassMix: paste half the classes of a random labeled frame onto every target frame.

    For target frame ``i`` a labeled frame ``j`` is drawn; of the label values present in ``j`` (void
    excluded; fine ids and coarse-encoded groups alike) ``ceil(n / 2)`` are drawn, and where ``j``'s label
    is one of them both the pixel and the label of ``j`` replace the target's. Elsewhere the target frame
    keeps its own pixels and (pseudo-)labels. Frame ids, slices and sequences stay the target's: the frame
    is still the pseudo-labeled target frame, with labeled pixels on it.

    Returns:
        (the mixed frames, the ids of the labeled frames pasted from, one per target frame).
    """
    if len(labeled) == 0:
        raise TrainerError("ClassMix needs labeled frames to paste from")
    if labeled.size != target.size:
        raise TrainerError(f"ClassMix: labeled frames are {labeled.size}, target frames {target.size}")
    images, labels = target.images.copy(), target.labels.copy()
    sources: list[str] = []
    for i, j in enumerate(rng.integers(len(labeled), size=len(target))):
        lab = labeled.labels[j]
        present = np.unique(lab[lab != void])
        sources.append(labeled.frame_ids[j])
        if not len(present):
            continue
        chosen = rng.choice(present, (len(present) + 1) // 2, replace=False)
        mask = np.isin(lab, chosen)
        images[i][mask] = labeled.images[j][mask]
        labels[i][mask] = lab[mask]
    return LabeledFrames(images, labels, list(target.frame_ids), list(target.slices), list(target.sequences)), sources


# -- the adaptation run -----------------------------------------------------------------------------------


@dataclass
class AdaptConfig:
    """How to adapt.

    Attributes:
        methods: subset of :data:`METHODS`.
        train: fine-tuning configuration (epochs: of the ``synth``/labels stage; lr small: we start trained).
        pseudo: self-training settings.
        adabn_source_share: AdaBN pools this many source frames per target frame (0: target only).
        max_source_frames: at most this many source frames per epoch (a random, seeded subset; None: all).
        interpolate: the returned weights are ``(1 - a) · initial + a · fine-tuned`` (Wortsman et al., "Robust
            fine-tuning of zero-shot models", CVPR 2022: the average keeps most of the target gain and
            forgets less of the source); 1: the fine-tuned weights as they are. With ``adabn`` the
            BatchNorm statistics are re-estimated on the interpolated weights.
        source_bn: at the end, every BatchNorm's statistics are re-estimated on the source frames (labels
            unused; :func:`adabn` on the ``max_source_frames`` subset): training on target frames moved the
            running statistics towards the target mix, and the source condition is normalised with its own
            statistics again. Not with ``adabn`` (which sets them from the target frames on purpose).
    """

    methods: tuple[str, ...]
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=5e-4, eval_every=1000))
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    adabn_source_share: float = 1.0
    max_source_frames: int | None = None
    interpolate: float = 1.0
    source_bn: bool = False

    def __post_init__(self) -> None:
        self.methods = parse_methods(self.methods)
        if self.source_bn and "adabn" in self.methods:
            raise ConfigError("source_bn re-estimates the statistics on the source frames; adabn on the target "
                              "frames: pick one", "source_bn")
        if not 0 < self.interpolate <= 1:
            raise ConfigError(f"must be in (0, 1], got {self.interpolate}", "interpolate")
        if self.adabn_source_share < 0:
            raise ConfigError(f"must be >= 0, got {self.adabn_source_share}", "adabn_source_share")
        if "synth" in self.methods and not self.train.synth_mix:
            self.train = replace(self.train, synth_mix=dict(DEFAULT_SYNTH_MIX))
        if "synth" not in self.methods and self.train.synth_mix:
            self.train = replace(self.train, synth_mix={})


def _subsample(frames: LabeledFrames, limit: int | None, seed: int) -> LabeledFrames:
    if limit is None or len(frames) <= limit:
        return frames
    return frames.subset(np.sort(np.random.default_rng(seed).choice(len(frames), limit, replace=False)))


def _adabn_pool(source: LabeledFrames, target: LabeledFrames, share: float, seed: int) -> LabeledFrames:
    extra = int(round(len(target) * share))
    if extra == 0:
        return target
    return LabeledFrames.concat([target, _subsample(source, extra, seed)])


def _adabn_on_target(model: Ensemble, cfg: AdaptConfig, source: LabeledFrames, target: LabeledFrames) -> None:
    """The ``adabn`` method's re-estimation: the target frames pooled with ``adabn_source_share`` source frames."""
    adabn(model, _adabn_pool(source, target, cfg.adabn_source_share, cfg.train.seed), cfg.train.eval_batch)


def interpolate_weights(model: nn.Module, initial: dict[str, torch.Tensor], a: float) -> None:
    """In place: every floating-point parameter and buffer becomes ``(1 - a) · initial + a · current``."""
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value.mul_(a).add_(initial[name].to(value.device), alpha=1 - a)


def wise(model: Ensemble, initial: dict[str, torch.Tensor], a: float, cfg: AdaptConfig, source: LabeledFrames,
         target: LabeledFrames) -> None:
    """In place: the adapted weights averaged with the starting ones (``AdaptConfig.interpolate``, WiSE-FT).

    ``(1 - a) · initial + a · adapted`` for every floating-point parameter and buffer; with ``adabn`` among
    the methods the BatchNorm statistics are then re-estimated on the target pool, as :func:`adapt` leaves them.
    """
    interpolate_weights(model, initial, a)
    if "adabn" in cfg.methods:
        _adabn_on_target(model, cfg, source, target)


def adapt(
    model: Ensemble,
    source: LabeledFrames,
    target: LabeledFrames,
    cfg: AdaptConfig,
    *,
    target_labeled: LabeledFrames | None = None,
    work_dir: Any = None,
) -> tuple[Ensemble, AdaptRecord]:
    """Adapt a trained ensemble towards the ``target`` frames, in place.

    Args:
        model: the trained ensemble (fine-tuned from its weights).
        source: labeled source frames (fine CamVid ids).
        target: unlabeled target frames (labels ignored), every target condition pooled; also the styles of
            the ``target_style`` synthetic condition.
        cfg: methods and settings.
        target_labeled: labeled target frames (fine ids, or coarse ones encoded by
            :func:`avminer.trainer.coarse.encode_coarse` with ``cfg.train.coarse_taxonomy`` set).
        work_dir: unused by design (fine-tuning runs are short and not resumed); kept None.

    Returns:
        The model and the record of what was done.
    """
    del work_dir
    t0 = time.perf_counter()
    record = AdaptRecord(cfg.methods)
    labeled = source if target_labeled is None or not len(target_labeled) else LabeledFrames.concat([source, target_labeled])
    record.target_labels_used = 0 if target_labeled is None else len(target_labeled)
    train_cfg = cfg.train
    stage = 0

    def fit(frames: LabeledFrames, epochs: int, pseudo: LabeledFrames | None = None, mix: bool = False) -> tuple[int, int]:
        """Train on ``frames`` (source subsampled to ``max_source_frames``) and, balanced, ``pseudo``.

        With ``mix`` every pseudo-labeled frame trained on gets classes of one of this stage's labeled
        frames pasted onto it (:func:`class_mix`).

        Returns:
            (labeled frames, pseudo-labeled frames) trained on.
        """
        nonlocal stage
        rng = np.random.default_rng([train_cfg.seed, stage])
        picked = frames
        if cfg.max_source_frames is not None:
            # Source frames subsampled, labeled target frames all kept.
            is_source = np.array([fid in source_ids for fid in frames.frame_ids])
            src_idx = np.flatnonzero(is_source)
            if len(src_idx) > cfg.max_source_frames:
                src_idx = rng.choice(src_idx, cfg.max_source_frames, replace=False)
            picked = frames.subset(np.sort(np.concatenate([src_idx, np.flatnonzero(~is_source)])))
        used.update(picked.frame_ids)
        counts = (len(picked), 0)
        if pseudo is not None:
            limit = cfg.pseudo.pseudo_frames_for(len(picked))
            if limit is not None and len(pseudo) > limit:
                pseudo = pseudo.subset(np.sort(rng.choice(len(pseudo), limit, replace=False)))
            pseudo_used.update(pseudo.frame_ids)
            if mix:
                pseudo, pasted = class_mix(pseudo, picked, np.random.default_rng([train_cfg.seed, stage, 1]))
                used.update(pasted)
            counts = (len(picked), len(pseudo))
            picked = LabeledFrames.concat([picked, pseudo])
        lr = train_cfg.lr * (cfg.pseudo.lr_scale if pseudo is not None else 1.0)
        train_ensemble(model, picked, replace(train_cfg, epochs=epochs, seed=train_cfg.seed + stage, lr=lr), None,
                       resume=False, styles=target.images if len(target) else None)
        stage += 1
        return counts

    initial = {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.interpolate < 1 else None
    source_ids = set(source.frame_ids)
    used: set[str] = set()  # labeled frames (source or target, not pseudo) any stage trained on
    pseudo_used: set[str] = set()  # pseudo-labeled frames any round trained on
    # Stage 1: labels (source, labeled target) with synthetic conditions if asked.
    if "synth" in cfg.methods or record.target_labels_used:
        fit(labeled, train_cfg.epochs)
    if "adabn" in cfg.methods:
        _adabn_on_target(model, cfg, source, target)
    if "pseudo" in cfg.methods or "mix" in cfg.methods:
        pcfg, mix = cfg.pseudo, "mix" in cfg.methods
        coarse = coarse_mapping(train_cfg.coarse_taxonomy)
        for r in range(pcfg.rounds):
            pl = pseudo_label(model, target, pcfg, r, train_cfg.eval_batch, coarse)
            record.rounds.append({"round": r + 1, "keep": pcfg.keep_at(r), "pixels": pl.pixels,
                                  "share": round(pl.share, 4), "mi_threshold": pl.mi_threshold,
                                  "thresholds": {str(k): round(v, 4) for k, v in pl.thresholds.items()},
                                  "groups": pcfg.groups, "flip": pcfg.flip, "classmix": mix})
            log.info("pseudo-label round %d: %.1f%% of target pixels kept", r + 1, 100 * pl.share)
            record.rounds[-1]["labeled_frames"], record.rounds[-1]["pseudo_frames"] = fit(
                labeled, pcfg.epochs_per_round, pl.frames, mix=mix)
            record.pseudo_pixels, record.pseudo_pixel_share = pl.pixels, pl.share
            if "adabn" in cfg.methods:  # training moved the statistics towards the training mix; re-estimate
                _adabn_on_target(model, cfg, source, target)
        record.pseudo_frames = sorted(pseudo_used)
    if initial is not None and stage > 0:
        wise(model, initial, cfg.interpolate, cfg, source, target)
    if cfg.source_bn and stage > 0:
        adabn(model, _subsample(source, cfg.max_source_frames, train_cfg.seed), train_cfg.eval_batch)
    record.labels_used = len(used)
    model.eval().cpu()
    record.seconds = time.perf_counter() - t0
    return model, record


def record_pseudo_labels(catalog: Any, frame_ids: Sequence[str], model_version: str) -> int:
    """Mark ``frame_ids`` (suffix ``+pseudo`` stripped) as pseudo-labeled by ``model_version`` in the catalog.

    Returns:
        How many catalog samples were marked (frames the catalog does not know are skipped).
    """
    ids = [f.removesuffix("+pseudo") for f in frame_ids]
    return int(catalog.mark_pseudo_labeled(ids, model_version))
