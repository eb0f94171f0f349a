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

from avminer.errors import TrainerError
from avminer.models.ensemble import Ensemble
from avminer.taxonomy import confusion, iou_per_class, mean_iou
from avminer.trainer.data import VOID, LabeledFrames, augment_batch, batches, enet_class_weights, to_tensors
from avminer.trainer.dpe import DEFAULT_BETA, dpe_loss

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
    device: str = "cpu"  # cpu | cuda[:N] (the CUDA path is written but was not run here: no GPU)
    eval_every: int = 5  # epochs between evaluations (the last epoch is always evaluated)
    eval_batch: int = 16
    progress: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in {"poly", "cosine", "constant"}:
            raise TrainerError(f"schedule must be poly, cosine or constant, got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainerError("epochs and batch_size must be >= 1")


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
    import pickle

    try:
        # weights_only: tensors and plain containers only; a planted checkpoint cannot run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # corrupt, not planted
            raise TrainerError(f"{path}: not a readable checkpoint file (bad pickle data)") from exc
        raise TrainerError(f"{path}: refused: the checkpoint holds objects other than tensors and plain "
                           "values (it may run code); delete it to start over") from exc
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrainerError(f"{path}: unreadable checkpoint ({first}); delete it to start over") from exc
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
) -> TrainResult:
    """Train the members jointly; checkpoint after every epoch; resume from ``work_dir`` if it holds one.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this alike and trains data-parallel (see
    the module docstring); only rank 0 evaluates and writes the checkpoint.

    Args:
        model: a built ensemble (its weights are replaced by the checkpoint's when resuming).
        train: training frames (already at the model's input size).
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

    Returns:
        The trained model, per-epoch history, final per-slice metrics and mean seconds per epoch.
    """
    from tqdm import tqdm

    from avminer import metrics as prom

    if len(train) < 2:
        raise TrainerError(f"need at least 2 training frames, got {len(train)}")
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    ctx = distributed_context(cfg.device)
    device = torch.device(f"cuda:{ctx.local_rank}" if ctx.enabled and cfg.device.startswith("cuda") else cfg.device)
    model.to(device)
    weights = (
        torch.from_numpy(enet_class_weights(train.labels, model.num_classes)).to(device) if cfg.class_weighting else None
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler: Any = None
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = model.member_outputs
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data.distributed import DistributedSampler

        # The sampler only needs len(); the indices it hands out select frames of ``train``.
        sampler = DistributedSampler(range(len(train)), ctx.world_size, ctx.rank, shuffle=True,  # type: ignore[arg-type]
                                     seed=cfg.seed)
        steps_per_epoch = max(1, sum(1 for b in _shard_batches(sampler, 0, cfg.batch_size) if len(b) >= 2))
    else:
        steps_per_epoch = max(1, sum(1 for b in batches(len(train), cfg.batch_size, False) if len(b) >= 2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(cfg, cfg.epochs * steps_per_epoch))
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt_path = Path(work_dir) / CHECKPOINT if work_dir is not None else None
    if resume and ckpt_path is not None and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if state.get("arch") != model.arch:
            raise TrainerError(f"{ckpt_path}: checkpoint is for another architecture; delete it or use another work dir")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["numpy_rng"]
        gen.set_state(state["torch_rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        log.info("resuming from %s at epoch %d/%d", ckpt_path, start_epoch, cfg.epochs)
    if ctx.enabled:
        # DDP averages the gradients of what its forward computed; the DPE term reads the parameters
        # directly, which is fine: every rank adds the same β·Ω, so its averaged gradient is unchanged.
        forward = DistributedDataParallel(_MemberOutputs(model), device_ids=[device.index] if device.type == "cuda" else None)

    metrics: dict[str, SliceMetrics] = {}
    epoch_times: list[float] = []
    stop = cfg.epochs if until_epoch is None else min(cfg.epochs, until_epoch)
    completed = True
    for epoch in range(start_epoch, stop):
        model.train()
        t0 = time.perf_counter()
        sums = torch.zeros(4, dtype=torch.float64)  # loss, ce, omega, steps
        if sampler is not None:
            epoch_batches = _shard_batches(sampler, epoch, cfg.batch_size)
            # Each rank augments its own frames differently, reproducibly per epoch (no RNG state to resume).
            gen.manual_seed(cfg.seed * 1_000_003 + epoch * ctx.world_size + ctx.rank)
        else:
            epoch_batches = list(batches(len(train), cfg.batch_size, True, rng))
        bar = tqdm(
            [b for b in epoch_batches if len(b) >= 2],
            desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not (cfg.progress and ctx.is_main), leave=False,
        )
        for index in bar:
            images, labels = to_tensors(train, index)  # [B, 3, H, W], [B, H, W]
            if cfg.augment:
                images, labels = augment_batch(images, labels, gen)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits, _ = forward(images)  # [K, B, C, H, W]
            loss, ce, omega = dpe_loss(model, logits, labels, cfg.beta, weights, VOID)
            if not torch.isfinite(loss):
                raise TrainerError(f"loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            if after_step is not None:
                after_step(opt)
            sched.step()
            sums += torch.tensor([float(loss.detach()), float(ce.detach()), float(omega.detach()), 1.0], dtype=torch.float64)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        stop_now = should_stop() if should_stop is not None else False
        if ctx.enabled:
            import torch.distributed as dist

            # One collective for the epoch's mean loss over every rank and for "does anyone stop?".
            flags = torch.cat([sums, torch.tensor([float(stop_now)], dtype=torch.float64)]).to(device)
            dist.all_reduce(flags)
            flags = flags.cpu()
            sums, stop_now = flags[:4], bool(flags[4] > 0)
        seconds = time.perf_counter() - t0
        epoch_times.append(seconds)
        n = max(float(sums[3]), 1.0)
        row: dict[str, Any] = {"loss": float(sums[0]) / n, "ce": float(sums[1]) / n, "omega": float(sums[2]) / n}
        row.update(epoch=epoch + 1, seconds=seconds, lr=sched.get_last_lr()[0])
        last = epoch + 1 == cfg.epochs
        if (ctx.is_main and eval_frames is not None and len(eval_frames)
                and (last or (epoch + 1) % max(cfg.eval_every, 1) == 0)):
            metrics = evaluate(model, eval_frames, cfg.eval_batch)
            row["miou"] = {k: m.miou for k, m in metrics.items()}
        history.append(row)
        if ctx.is_main:
            prom.TRAIN_EPOCH.set(epoch + 1)
            prom.TRAIN_LOSS.set(row["loss"])
        log.log(
            logging.INFO if ctx.is_main else logging.DEBUG,
            "epoch %d/%d loss %.4f (ce %.4f, omega %.1f) %.1fs%s", epoch + 1, cfg.epochs, row["loss"], row["ce"],
            row["omega"], seconds, f" miou {row['miou']}" if "miou" in row else "",
        )
        if ckpt_path is not None and ctx.is_main:
            save_checkpoint(ckpt_path, {
                "arch": model.arch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "numpy_rng": rng.bit_generator.state,
                "torch_rng": gen.get_state(), "history": history, "epoch": epoch + 1, "config": asdict(cfg),
            })
        if stop_now and epoch + 1 < stop:
            log.info("stopping after epoch %d/%d as asked; resume from %s", epoch + 1, cfg.epochs, ckpt_path)
            completed = False
            break
    completed = completed and (start_epoch >= cfg.epochs or len(history) >= cfg.epochs)
    if ctx.enabled:
        _finish_distributed(model, ctx)
    if ctx.is_main and eval_frames is not None and len(eval_frames) and not metrics and completed:
        metrics = evaluate(model, eval_frames, cfg.eval_batch)
    if ctx.owns_group:
        import torch.distributed as dist

        dist.barrier()  # rank 0's last evaluation done before anyone tears the group down
        dist.destroy_process_group()
    model.eval().cpu()  # exporters and engines take it from here on the CPU
    return TrainResult(
        model, history, metrics,
        float(np.mean([h["seconds"] for h in history])) if history else float("nan"),  # resumed epochs too
        len(epoch_times), completed, ctx.rank,
    )


def _finish_distributed(model: Ensemble, ctx: DistContext) -> None:
    """Give every rank rank 0's BatchNorm statistics (weights already agree: DDP averaged every step)."""
    import torch.distributed as dist

    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
