"""Joint training of the K ensemble members, evaluation per slice, checkpoints and resume.

One Adam optimiser over all members; the loss is Σ_members CE + β·Ω (:mod:`avminer.trainer.dpe`), the
learning rate follows a poly (or cosine) schedule per step. Rare classes are up-weighted with ENet's
logarithmic weighting. A checkpoint (weights, optimiser, schedule, RNG states, history) is written
atomically after every epoch, and :func:`train_ensemble` picks it up again when it finds one.

Several GPUs (or processes): launch the same command under ``torchrun``; :func:`train_ensemble` sees
``WORLD_SIZE > 1`` in the environment torchrun sets and trains data-parallel::

    torchrun --standalone --nproc_per_node 4 -m avminer.cli.main train run \
        --data /data/camvid --out bundles/v2 --device cuda --threads 4

Each process joins the process group (NCCL on CUDA, one GPU per process by ``LOCAL_RANK``; gloo on the
CPU), wraps the ensemble in ``DistributedDataParallel`` (gradients averaged across processes every step,
so every rank holds the same weights) and trains on its own shard of every epoch
(``DistributedSampler``, shuffled by seed and epoch, so a resumed run sees the same shards). The batch
size is per process: the effective batch is ``batch_size × world size``. BatchNorm statistics are per
process while training and rank 0's are copied to every rank at the end. Only rank 0 evaluates, shows
progress, writes checkpoints and (in :mod:`avminer.trainer.run`) the bundle; every rank resumes from the
same checkpoint, so the work directory must be shared (one machine, or a shared filesystem).

Why one module of ~550 lines: the training loop, its checkpoint/resume and its distributed set-up share
one state (``_Loop``); evaluation helpers beside it are the ones the loop calls every epoch.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from avminer.errors import ConfigError, TrainerError
from avminer.models.ensemble import Ensemble, load_plain
from avminer.taxonomy import TaxonomyMapping, confusion, iou_per_class, mean_iou
from avminer.trainer.coarse import coarse_class_weights
from avminer.trainer.data import VOID, LabeledFrames, augment_batch, batches, enet_class_weights, to_tensors
from avminer.trainer.dpe import DEFAULT_BETA, dpe_loss
from avminer.trainer.synth import SynthMix, synthesize_batch

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """How to train (defaults mirror :class:`avminer.config.TrainerSettings`)."""

    epochs: int = 30
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.0
    beta: float = DEFAULT_BETA
    schedule: str = "poly"  # poly | cosine | constant
    poly_power: float = 0.9
    class_weighting: bool = True
    augment: bool = True
    seed: int = 0
    threads: int = 0  # 0: all cores; 1 on a loaded machine (OpenMP threads spin and fight over cores)
    device: str = "cpu"  # cpu | cuda[:N] (CUDA run on an H200: tools/gpu_check.sh part 4)
    eval_every: int = 5  # epochs between evaluations (the last epoch is always evaluated)
    eval_batch: int = 16
    progress: bool = True
    # Share of training frames rendered in each synthetic condition (avminer.trainer.synth), e.g.
    # {"fog": 0.15, "dusk": 0.25}; empty: none. Labels carry over.
    synth_mix: dict[str, float] = field(default_factory=dict)
    # With synth_mix: a rendered frame is trained on beside its clear original (same batch, the batch grows
    # by the rendered share) instead of in its place, so the clear frames are seen as often as without it.
    synth_keep_clear: bool = False
    # Taxonomy of the coarse labels among the training frames (avminer.trainer.coarse), e.g. "idd_level1";
    # "": every label is a CamVid id.
    coarse_taxonomy: str = ""

    def __post_init__(self) -> None:
        if self.schedule not in {"poly", "cosine", "constant"}:
            raise TrainerError(f"schedule must be poly, cosine or constant, got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainerError("epochs and batch_size must be >= 1")
        SynthMix.parse(self.synth_mix, "synth_mix")
        coarse_mapping(self.coarse_taxonomy)


@dataclass
class SliceMetrics:
    """Segmentation quality of the ensemble (argmax of the mean probabilities) on one slice."""

    miou: float
    pixel_accuracy: float
    iou: list[float]  # per class; NaN where the class is absent from both truth and prediction
    frames: int


@dataclass
class TrainResult:
    """What a training run produced."""

    model: Ensemble
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, SliceMetrics] = field(default_factory=dict)  # rank 0 only when distributed
    seconds_per_epoch: float = float("nan")  # mean over every epoch of the run, resumed ones included
    epochs_run: int = 0  # epochs run by this call
    completed: bool = True  # False: stopped early (until_epoch or should_stop), a checkpoint to resume from
    rank: int = 0  # this process's rank (0 unless launched by torchrun with WORLD_SIZE > 1)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run (world size 1: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this call initialised the process group, so it tears it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_context(device: str) -> DistContext:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_*``).

    NCCL when training on CUDA (each process on GPU ``LOCAL_RANK``), gloo on the CPU. A group that is
    already initialised (a caller's own) is used as it is.

    Raises:
        TrainerError: WORLD_SIZE > 1 but torch.distributed is unavailable or the environment is incomplete.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    if not dist.is_available():
        raise TrainerError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise TrainerError(f"WORLD_SIZE={world} but {', '.join(missing)} unset; launch with torchrun")
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local, owns)


class _MemberOutputs(torch.nn.Module):
    """``Ensemble.member_outputs`` as a module's forward, so DistributedDataParallel sees the training pass."""

    def __init__(self, model: Ensemble) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.member_outputs(images)


def _shard_batches(sampler: Any, epoch: int, batch_size: int) -> list[NDArray[np.int64]]:
    """This rank's index batches of ``epoch`` (every rank gets the same number of frames)."""
    sampler.set_epoch(epoch)
    local = np.fromiter(iter(sampler), dtype=np.int64)
    return [local[s : s + batch_size] for s in range(0, len(local), batch_size)]


def set_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads (0: every core) and return the number used."""
    n = threads if threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def _lr_factor(cfg: TrainConfig, total_steps: int) -> Any:
    def factor(step: int) -> float:
        t = min(step / max(total_steps, 1), 1.0)
        if cfg.schedule == "poly":
            return float((1.0 - t) ** cfg.poly_power)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0

    return factor


# -- inference and evaluation -------------------------------------------------------------------------


def predict(
    model: Ensemble, frames: LabeledFrames, batch_size: int = 16
) -> Iterator[tuple[NDArray[np.int64], torch.Tensor, torch.Tensor]]:
    """(index, probs [K, B, C, H, W], features [B, D]) per batch, model in eval mode, no gradients."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for index in batches(len(frames), batch_size, shuffle=False):
                images, _ = to_tensors(frames, index)
                probs, feats = model(images.to(device))
                yield index, probs.cpu(), feats.cpu()
    finally:
        model.train(was_training)


def extract_features(model: Ensemble, frames: LabeledFrames, batch_size: int = 16) -> NDArray[np.float32]:
    """Pooled features [N, D] of every frame (what the shift reference is fitted on)."""
    out = np.empty((len(frames), model.feature_dim), np.float32)
    for index, _, feats in predict(model, frames, batch_size):
        out[index] = feats.numpy()
    return out


def metrics_from_confusion(cm: NDArray[np.int64], frames: int) -> SliceMetrics:
    """mIoU (mean over classes present in truth or prediction) and pixel accuracy."""
    iou = iou_per_class(cm)
    total = cm.sum()
    return SliceMetrics(mean_iou(cm), float(np.diag(cm).sum() / total) if total else float("nan"),
                        [float(v) for v in iou], frames)


def evaluate(
    model: Ensemble,
    frames: LabeledFrames,
    batch_size: int = 16,
    groups: Sequence[Sequence[str]] | None = None,
) -> dict[str, SliceMetrics]:
    """Per-slice metrics of the ensemble's mean prediction.

    Args:
        model: the ensemble.
        frames: labeled frames at the model's input size.
        batch_size: frames per forward pass.
        groups: the keys each frame counts towards (``groups[i]`` for frame ``i``); None: its slice key,
            plus ``"all"`` over every frame.
    """
    c = model.num_classes
    per_key: dict[str, NDArray[np.int64]] = {}
    counts: dict[str, int] = {}
    for index, probs, _ in predict(model, frames, batch_size):
        pred = probs.mean(dim=0).argmax(dim=1).numpy()  # [B, H, W]
        for j, i in enumerate(index):
            cm = confusion(pred[j], frames.labels[i].astype(np.int64), c)
            for key in (frames.slices[i], "all") if groups is None else groups[i]:
                per_key[key] = per_key.get(key, 0) + cm
                counts[key] = counts.get(key, 0) + 1
    return {k: metrics_from_confusion(per_key[k], counts[k]) for k in sorted(per_key)}


# -- checkpoints ----------------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (a crash mid-write leaves the previous checkpoint intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`train_ensemble`.

    Raises:
        TrainerError: unreadable or not a checkpoint.
    """
    state = load_plain(path, "checkpoint", hint="; delete it to start over")
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise TrainerError(f"{path}: not an avminer training checkpoint; delete it to start over")
    return state


# -- training -------------------------------------------------------------------------------------------


def train_ensemble(
    model: Ensemble,
    train: LabeledFrames,
    cfg: TrainConfig,
    work_dir: str | Path | None = None,
    eval_frames: LabeledFrames | None = None,
    resume: bool = True,
    after_step: Callable[[torch.optim.Optimizer], None] | None = None,
    until_epoch: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    styles: NDArray[np.uint8] | None = None,
) -> TrainResult:
    """Train the members jointly; checkpoint after every epoch; resume from ``work_dir`` if it holds one.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this alike and trains data-parallel (see
    the module docstring); only rank 0 evaluates and writes the checkpoint.

    Args:
        model: a built ensemble (its weights are replaced by the checkpoint's when resuming).
        train: training frames (already at the model's input size). Labels may mix fine ids and coarse
            groups (:mod:`avminer.trainer.coarse`) when ``cfg.coarse_taxonomy`` names their taxonomy.
        cfg: training configuration.
        work_dir: where ``checkpoint.pt`` lives (None: no checkpoints).
        eval_frames: held-out frames evaluated per slice every ``cfg.eval_every`` epochs and at the end.
        resume: continue from an existing checkpoint.
        until_epoch: stop (checkpoint written) after this epoch even if ``cfg.epochs`` is larger; a later
            call with ``resume`` continues the same schedule (time-sliced training, tests).
        after_step: called with the optimiser after every optimiser step, before the schedule moves on
            (proximal steps of the compression regularisers, :mod:`avminer.trainer.prune` / ``lowrank``).
        should_stop: asked after every epoch (its checkpoint written); True stops the run there, resumable
            like ``until_epoch`` (a service shutting down).
        styles: uint8 [N, H, W, 3] unlabeled target frames whose style the ``target_style`` synthetic
            condition borrows (:mod:`avminer.trainer.synth`); None: that condition is refused.

    Returns:
        The trained model, per-epoch history, final per-slice metrics and mean seconds per epoch.
    """
    if len(train) < 2:
        raise TrainerError(f"need at least 2 training frames, got {len(train)}")
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    ctx = distributed_context(cfg.device)
    device = torch.device(f"cuda:{ctx.local_rank}" if ctx.enabled and cfg.device.startswith("cuda") else cfg.device)
    model.to(device)
    loop = _Loop(model, train, cfg, ctx, device, after_step, styles)
    ckpt_path = Path(work_dir) / CHECKPOINT if work_dir is not None else None
    if resume and ckpt_path is not None and ckpt_path.exists():
        loop.resume_from(ckpt_path)
    loop.wrap_distributed()

    metrics: dict[str, SliceMetrics] = {}
    epochs_run = 0
    stop = cfg.epochs if until_epoch is None else min(cfg.epochs, until_epoch)
    completed = True
    for epoch in range(loop.start_epoch, stop):
        row, stop_now = loop.run_epoch(epoch, should_stop)
        epochs_run += 1
        if (ctx.is_main and eval_frames is not None and len(eval_frames)
                and (epoch + 1 == cfg.epochs or (epoch + 1) % max(cfg.eval_every, 1) == 0)):
            metrics = evaluate(model, eval_frames, cfg.eval_batch)
            row["miou"] = {k: m.miou for k, m in metrics.items()}
        loop.record(row)
        if ckpt_path is not None and ctx.is_main:
            save_checkpoint(ckpt_path, loop.checkpoint(epoch + 1))
        if stop_now and epoch + 1 < stop:
            log.info("stopping after epoch %d/%d as asked; resume from %s", epoch + 1, cfg.epochs, ckpt_path)
            completed = False
            break
    completed = completed and (loop.start_epoch >= cfg.epochs or len(loop.history) >= cfg.epochs)
    if ctx.enabled:
        _finish_distributed(model, ctx)
    if ctx.is_main and eval_frames is not None and len(eval_frames) and not metrics and completed:
        metrics = evaluate(model, eval_frames, cfg.eval_batch)
    if ctx.owns_group:
        import torch.distributed as dist

        dist.barrier()  # rank 0's last evaluation done before anyone tears the group down
        dist.destroy_process_group()
    model.eval().cpu()  # exporters and engines take it from here on the CPU
    history = loop.history
    return TrainResult(
        model, history, metrics,
        float(np.mean([h["seconds"] for h in history])) if history else float("nan"),  # resumed epochs too
        epochs_run, completed, ctx.rank,
    )


class _Loop:
    """The state of one training run (optimiser, schedule, RNGs, history) and its steps, epoch by epoch."""

    def __init__(self, model: Ensemble, train: LabeledFrames, cfg: TrainConfig, ctx: DistContext,
                 device: torch.device, after_step: Callable[[torch.optim.Optimizer], None] | None,
                 styles: NDArray[np.uint8] | None = None) -> None:
        self.model, self.train, self.cfg, self.ctx, self.device = model, train, cfg, ctx, device
        self.after_step, self.styles = after_step, styles
        self.weights, self.group_weights = _class_weights(train, cfg, model.num_classes, device)
        self.coarse = coarse_mapping(cfg.coarse_taxonomy)
        self.synth = SynthMix.parse(cfg.synth_mix, "synth_mix")
        if self.synth is not None and self.synth.ratios.get("target_style") and (styles is None or not len(styles)):
            raise ConfigError("target_style borrows the style of unlabeled target frames; none were given",
                              "synth_mix.target_style")
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sampler: Any = None
        if ctx.enabled:
            from torch.utils.data.distributed import DistributedSampler

            # The sampler only needs len(); the indices it hands out select frames of ``train``.
            self.sampler = DistributedSampler(range(len(train)), ctx.world_size, ctx.rank, shuffle=True,  # type: ignore[arg-type]
                                              seed=cfg.seed)
            steps = sum(1 for b in _shard_batches(self.sampler, 0, cfg.batch_size) if len(b) >= 2)
        else:
            steps = sum(1 for b in batches(len(train), cfg.batch_size, False) if len(b) >= 2)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_factor(cfg, cfg.epochs * max(1, steps)))
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = model.member_outputs

    def resume_from(self, path: Path) -> None:
        state = load_checkpoint(path)
        if state.get("arch") != self.model.arch:
            raise TrainerError(f"{path}: checkpoint is for another architecture; delete it or use another work dir")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.gen.set_state(state["torch_rng"])
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"])
        log.info("resuming from %s at epoch %d/%d", path, self.start_epoch, self.cfg.epochs)

    def wrap_distributed(self) -> None:
        if not self.ctx.enabled:
            return
        from torch.nn.parallel import DistributedDataParallel

        # DDP averages the gradients of what its forward computed; the DPE term reads the parameters
        # directly, which is fine: every rank adds the same β·Ω, so its averaged gradient is unchanged.
        self.forward = DistributedDataParallel(_MemberOutputs(self.model),
                                               device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def epoch_batches(self, epoch: int) -> list[NDArray[np.int64]]:
        if self.sampler is not None:
            # Each rank augments its own frames differently, reproducibly per epoch (no RNG state to resume).
            self.gen.manual_seed(self.cfg.seed * 1_000_003 + epoch * self.ctx.world_size + self.ctx.rank)
            found = _shard_batches(self.sampler, epoch, self.cfg.batch_size)
        else:
            found = list(batches(len(self.train), self.cfg.batch_size, True, self.rng))
        return [b for b in found if len(b) >= 2]

    def load_batch(self, index: NDArray[np.int64], synth_rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W], labels [B, H, W] on the device: synthetic conditions, then augmentation."""
        if self.synth is not None:
            originals, label_arr = self.train.images[index], self.train.labels[index]
            batch, drawn = synthesize_batch(originals, label_arr, self.synth, synth_rng, styles=self.styles)
            if self.cfg.synth_keep_clear:  # the originals, then the renders of the frames drawn a condition
                changed = [i for i, cond in enumerate(drawn) if cond != "clear"]
                batch = np.concatenate([originals, batch[changed]])
                label_arr = np.concatenate([label_arr, label_arr[changed]])
            images = torch.from_numpy(batch).permute(0, 3, 1, 2).float().contiguous()
            labels = torch.from_numpy(label_arr).long()
        else:
            images, labels = to_tensors(self.train, index)  # [B, 3, H, W], [B, H, W]
        if self.cfg.augment:
            images, labels = augment_batch(images, labels, self.gen)
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def step(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        """One optimiser step; returns (loss, ce, omega) detached as float64 [3]."""
        logits, _ = self.forward(images)  # [K, B, C, H, W]
        loss, ce, omega = dpe_loss(self.model, logits, labels, self.cfg.beta, self.weights, VOID,
                                   coarse=self.coarse, group_weights=self.group_weights)
        if not torch.isfinite(loss):
            raise TrainerError(f"loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.opt.step()
        if self.after_step is not None:
            self.after_step(self.opt)
        self.sched.step()
        return torch.tensor([float(loss.detach()), float(ce.detach()), float(omega.detach())], dtype=torch.float64)

    def run_epoch(self, epoch: int, should_stop: Callable[[], bool] | None) -> tuple[dict[str, Any], bool]:
        """Train one epoch; returns its history row (mean losses, time, lr) and whether to stop after it."""
        from tqdm import tqdm

        self.model.train()
        t0 = time.perf_counter()
        sums = torch.zeros(4, dtype=torch.float64)  # loss, ce, omega, steps
        # Synthetic renders are drawn per epoch from the seed: reproducible on resume without saved state.
        synth_rng = np.random.default_rng([self.cfg.seed, epoch, self.ctx.rank])
        bar = tqdm(self.epoch_batches(epoch), desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch",
                   disable=not (self.cfg.progress and self.ctx.is_main), leave=False)
        for index in bar:
            losses = self.step(*self.load_batch(index, synth_rng), epoch)
            sums += torch.cat([losses, torch.ones(1, dtype=torch.float64)])
            bar.set_postfix(loss=f"{float(losses[0]):.3f}")
        stop_now = should_stop() if should_stop is not None else False
        if self.ctx.enabled:
            import torch.distributed as dist

            # One collective for the epoch's mean loss over every rank and for "does anyone stop?".
            flags = torch.cat([sums, torch.tensor([float(stop_now)], dtype=torch.float64)]).to(self.device)
            dist.all_reduce(flags)
            flags = flags.cpu()
            sums, stop_now = flags[:4], bool(flags[4] > 0)
        n = max(float(sums[3]), 1.0)
        row: dict[str, Any] = {"loss": float(sums[0]) / n, "ce": float(sums[1]) / n, "omega": float(sums[2]) / n}
        row.update(epoch=epoch + 1, seconds=time.perf_counter() - t0, lr=self.sched.get_last_lr()[0])
        return row, stop_now

    def record(self, row: dict[str, Any]) -> None:
        from avminer import metrics as prom

        self.history.append(row)
        if self.ctx.is_main:
            prom.TRAIN_EPOCH.set(row["epoch"])
            prom.TRAIN_LOSS.set(row["loss"])
        log.log(
            logging.INFO if self.ctx.is_main else logging.DEBUG,
            "epoch %d/%d loss %.4f (ce %.4f, omega %.1f) %.1fs%s", row["epoch"], self.cfg.epochs, row["loss"],
            row["ce"], row["omega"], row["seconds"], f" miou {row['miou']}" if "miou" in row else "",
        )

    def checkpoint(self, epoch: int) -> dict[str, Any]:
        return {
            "arch": self.model.arch, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": self.gen.get_state(), "history": self.history, "epoch": epoch, "config": asdict(self.cfg),
        }


def _class_weights(
    train: LabeledFrames, cfg: TrainConfig, num_classes: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """ENet weights of the fine classes and (with coarse labels) of the coarse groups; None without weighting."""
    if not cfg.class_weighting:
        return None, None
    fine = torch.from_numpy(enet_class_weights(train.labels, num_classes)).to(device)
    mapping = coarse_mapping(cfg.coarse_taxonomy)
    if mapping is None:
        return fine, None
    groups = torch.from_numpy(coarse_class_weights(train.labels, mapping.target.num_classes)).to(device)
    return fine, groups


def coarse_mapping(taxonomy: str) -> TaxonomyMapping | None:
    """The declared CamVid -> ``taxonomy`` mapping ("" -> None).

    Raises:
        ConfigError: unknown taxonomy or no declared mapping (names the ``coarse_taxonomy`` field).
    """
    if not taxonomy:
        return None
    from avminer.taxonomy import CAMVID, TAXONOMIES, TaxonomyError, mapping

    try:
        found = mapping(CAMVID, TAXONOMIES[taxonomy])
    except KeyError:
        raise ConfigError(f"unknown taxonomy {taxonomy!r}; known: {sorted(TAXONOMIES)}", "coarse_taxonomy") from None
    except TaxonomyError as exc:
        raise ConfigError(str(exc), "coarse_taxonomy") from exc
    if found is None:
        raise ConfigError("is the model's own taxonomy; coarse labels need another one", "coarse_taxonomy")
    return found


def _finish_distributed(model: Ensemble, ctx: DistContext) -> None:
    """Give every rank rank 0's BatchNorm statistics (weights already agree: DDP averaged every step)."""
    import torch.distributed as dist

    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
