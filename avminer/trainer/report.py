"""The compression report: a baseline member and each compression method's variant, side by side.

For each method (``baseline``, ``prune``, ``lowrank``, ``expandnet``) one ERFNet member is trained from the
same initial seed on the same frames, compressed as the method says, and measured:

- params: parameters of the deployed (compressed) net;
- MACs: multiply-accumulates of every conv, transposed conv and linear layer for one frame at the input
  size, counted analytically from the layer shapes (FLOPs ≈ 2 × MACs);
- latency: median ms per frame at batch 1 on the CPU, torch eager and ONNX Runtime, at ``threads`` threads;
- mIoU per slice (time of day) on held-out frames.

Data, as for the starter bundle (:func:`avminer.trainer.run.load_camvid_splits` with ``day_only``): train on
the CamVid ``train`` day frames, evaluate on the ``val`` split (day) and on every dusk frame (a slice the
model never saw, so the dusk column measures how compression changes robustness under shift).

Settings.

- full (``avminer train report --data DIR``): the ``trainer`` settings (width 0.25, 176×240, 30 epochs,
  batch 8, Adam 2e-3 with a poly schedule), λ_g = 0.5, τ = 0.3, energy 0.99, r = 4. ``--width 0.5`` is the
  issue's probe (ERFNet-half, ~19 s per baseline epoch over 468 frames on two cores); ExpandNets' expanded
  member costs roughly 5-10× a baseline epoch, so the full report takes hours on two cores.
- quick (``--quick``): width 0.25 at 88×120 on every second day training frame (153 frames, 19 steps per
  epoch) for 12 epochs at learning rate 5e-3, λ_g = 0.6: the total shrinkage a group sees is
  ``Σ η · λ_g · sqrt(|g|)``, and the higher rate makes Σ η large enough for ~230 steps to reach the
  initial group norms (λ_g itself must stay below 1 under Adam, see :mod:`avminer.trainer.prune`).
  Minutes on an idle two-core machine; it shows the structure of the results (layer counts, params,
  MACs, latency, contraction error), not converged accuracies.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avminer.errors import TrainerError
from avminer.models.arch import erfnet_arch
from avminer.models.ensemble import Ensemble, build_ensemble
from avminer.taxonomy import CAMVID
from avminer.trainer.data import NUM_CLASSES, LabeledFrames
from avminer.trainer.expandnet import contract_ensemble, contraction_error, expand_model
from avminer.trainer.lowrank import NuclearNorm, lowrank_ensemble
from avminer.trainer.prune import (
    LayerCounts,
    SparseGroupLasso,
    neuron_layers,
    plot_layer_counts,
    prune_ensemble,
)
from avminer.trainer.train import TrainConfig, TrainResult, evaluate, train_ensemble

log = logging.getLogger(__name__)

METHODS = ("baseline", "prune", "lowrank", "expandnet")
PLOT_TITLES = {"prune": "Learned number of neurons (sparse group lasso)", "lowrank": "Learned rank per conv (nuclear norm)"}


@dataclass
class ReportConfig:
    """What the compression report trains and how it measures.

    Attributes:
        data_dir: CamVid-layout directory (``manifest.csv``).
        width: member width multiplier.
        input_hw: (height, width), multiples of 8.
        epochs, batch_size, lr: training of every variant (Adam, poly schedule, as the trainer).
        train_stride: keep every n-th training frame (1: all).
        methods: which rows to produce.
        prune_group: λ_g of the sparse group lasso (per ``sqrt(|g|)·||θ_g||``).
        prune_l1: λ₁ of its l1 term.
        nuclear: τ of the nuclear-norm regulariser.
        rank_energy: fraction of ``Σ s²`` each conv keeps when split.
        expand_rate: ExpandNets' r.
        threads: CPU threads for training and latency.
        latency_runs: timed forward passes per latency figure (after warm-up).
        out_dir: where plots (and nothing else) go; None: no plots.
        seed: initial weights and data order; the same for every method.
    """

    data_dir: Path
    width: float = 0.5
    input_hw: tuple[int, int] = (176, 240)
    epochs: int = 30
    batch_size: int = 8
    lr: float = 2e-3
    train_stride: int = 1
    methods: tuple[str, ...] = METHODS
    prune_group: float = 0.5
    prune_l1: float = 0.0
    nuclear: float = 0.3
    rank_energy: float = 0.99
    expand_rate: int = 4
    threads: int = 2
    latency_runs: int = 20
    out_dir: Path | None = None
    seed: int = 0
    progress: bool = False

    @classmethod
    def quick(cls, data_dir: Path, **overrides: Any) -> ReportConfig:
        """Settings that finish in a few minutes on two cores (see the module docstring)."""
        base: dict[str, Any] = dict(width=0.25, input_hw=(88, 120), epochs=12, lr=5e-3, train_stride=2,
                                    latency_runs=10, prune_group=0.6)
        base.update(overrides)
        return cls(Path(data_dir), **base)

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise TrainerError(f"unknown compression methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
        if self.input_hw[0] % 8 or self.input_hw[1] % 8:
            raise TrainerError(f"input size {self.input_hw} must be multiples of 8 (three downsamplers)")


@dataclass
class MethodRow:
    """One method's measurements.

    Attributes:
        miou: mIoU per time of day (``day``, ``dusk``, ...) and ``all``.
        extra: method-specific figures (kept fraction, ranks split, contraction errors).
    """

    method: str
    params: int
    macs: int
    latency_ms: float
    ort_latency_ms: float
    miou: dict[str, float]
    train_s_per_epoch: float
    train_params: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompressionReport:
    """Rows per method, layer counts for the plots, the settings that produced them."""

    rows: list[MethodRow]
    layers: dict[str, LayerCounts]
    plots: dict[str, str]
    settings: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "rows": [asdict(r) for r in self.rows],
            "layers": {k: v.as_dict() for k, v in self.layers.items()},
            "plots": self.plots,
        }

    def table(self) -> str:
        """The one table: method | params | MACs | latency | mIoU per slice | train time."""
        slices = sorted({k for r in self.rows for k in r.miou if k != "all"}) + ["all"]
        head = ["method", "params", "GMAC", "torch ms", "ORT ms", *[f"mIoU {s}" for s in slices], "train s/ep"]
        lines = []
        for r in self.rows:
            lines.append([
                r.method, f"{r.params / 1e6:.3f}M", f"{r.macs / 1e9:.3f}", f"{r.latency_ms:.1f}",
                f"{r.ort_latency_ms:.1f}", *[f"{r.miou.get(s, float('nan')):.3f}" for s in slices],
                f"{r.train_s_per_epoch:.1f}",
            ])
        widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(head)]
        fmt = " | ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
        out = [fmt.format(*head), "-+-".join("-" * w for w in widths)]
        out += [fmt.format(*row) for row in lines]
        return "\n".join(out)


# -- measurements ------------------------------------------------------------------------------------------


def count_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_hw: tuple[int, int]) -> int:
    """Multiply-accumulates for one frame at ``input_hw`` over every conv, transposed conv and linear.

    Conv: ``out_elements · (in/groups) · kh · kw``; transposed conv: ``in_elements · (out/groups) · kh · kw``
    (each input element is scattered through the kernel); linear: ``out_elements · in``. The shapes come
    from one forward pass on a zero frame.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):
            kh, kw = module.kernel_size
            total += inputs[0][0].numel() * (module.out_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output[0].numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output[0].numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_hw))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def torch_latency_ms(model: nn.Module, input_hw: tuple[int, int], runs: int = 20, threads: int = 2) -> float:
    """Median wall time (ms) of one batch-1 forward pass in eval mode, after three warm-up passes."""
    torch.set_num_threads(threads)
    model.eval()
    x = torch.rand(1, 3, *input_hw) * 255.0
    times = []
    with torch.inference_mode():
        for i in range(runs + 3):
            t0 = time.perf_counter()
            model(x)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def ort_latency_ms(model: Ensemble, input_hw: tuple[int, int], runs: int = 20, threads: int = 2) -> float:
    """As :func:`torch_latency_ms` through ONNX Runtime (the miner's CPU backend); NaN if export fails."""
    import numpy as np
    import onnxruntime as ort

    from avminer.engines.contract import HeadSpec
    from avminer.engines.export import compact_model, export_onnx
    from avminer.errors import EngineError

    # The graph the miner runs: the members plus the in-graph scoring head (what a release exports).
    head = HeadSpec.for_classes(CAMVID.classes)
    try:
        onnx_bytes = export_onnx(compact_model(copy.deepcopy(model), head, input_hw, with_probs=True), input_hw)
    except EngineError as exc:
        log.warning("ONNX export failed, no ORT latency: %s", exc)
        return float("nan")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = (np.random.default_rng(0).random((1, 3, *input_hw)) * 255).astype(np.float32)
    times = []
    for i in range(runs + 3):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def miou_by_time_of_day(model: Ensemble, frames: LabeledFrames) -> dict[str, float]:
    """mIoU per time of day (the first part of the slice key) and over all frames."""
    tod = LabeledFrames(frames.images, frames.labels, frames.frame_ids,
                        [s.split("/")[0] for s in frames.slices], frames.sequences)
    return {k: round(m.miou, 4) for k, m in evaluate(model, tod).items()}


# -- the report ------------------------------------------------------------------------------------------


def load_report_frames(cfg: ReportConfig) -> tuple[LabeledFrames, LabeledFrames]:
    """(train, held-out): day ``train`` frames (every ``train_stride``-th); ``val`` plus every dusk frame."""
    from avminer.trainer.run import RunSpec, load_camvid_splits

    spec = RunSpec(data_dir=cfg.data_dir, out_dir=Path("."), work_dir=Path("."), input_hw=cfg.input_hw,
                   day_only=True, train=TrainConfig(progress=cfg.progress))
    train, held = load_camvid_splits(spec)
    if cfg.train_stride > 1:
        train = train.subset(list(range(0, len(train), cfg.train_stride)))
    return train, held


def _train(cfg: ReportConfig, model: Ensemble, frames: LabeledFrames,
           after_step: Callable[[torch.optim.Optimizer], None] | None = None) -> TrainResult:
    train_cfg = TrainConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, beta=0.0, seed=cfg.seed, threads=cfg.threads,
        progress=cfg.progress,
    )
    return train_ensemble(model, frames, train_cfg, work_dir=None, after_step=after_step)


def run_report(cfg: ReportConfig, frames: tuple[LabeledFrames, LabeledFrames] | None = None) -> CompressionReport:
    """Train, compress and measure every method of ``cfg.methods``.

    Args:
        cfg: settings.
        frames: (train, held-out) frames already at ``cfg.input_hw``; loaded from ``cfg.data_dir`` if None.
    """
    train, held = frames if frames is not None else load_report_frames(cfg)
    arch = erfnet_arch(width=cfg.width, num_classes=NUM_CLASSES, members=1)
    log.info("compression report: %d training frames, %d held out, methods %s", len(train), len(held), cfg.methods)
    rows: list[MethodRow] = []
    layers: dict[str, LayerCounts] = {}
    plots: dict[str, str] = {}

    def fresh() -> Ensemble:
        return build_ensemble(arch, seed=cfg.seed)

    def measure(method: str, model: Ensemble, result: TrainResult, train_params: int, **extra: Any) -> None:
        model.eval()
        row = MethodRow(
            method=method, params=count_params(model), macs=count_macs(model, cfg.input_hw),
            latency_ms=torch_latency_ms(model, cfg.input_hw, cfg.latency_runs, cfg.threads),
            ort_latency_ms=ort_latency_ms(model, cfg.input_hw, cfg.latency_runs, cfg.threads),
            miou=miou_by_time_of_day(model, held), train_s_per_epoch=round(result.seconds_per_epoch, 2),
            train_params=train_params, extra=extra,
        )
        log.info("%s: %d params, %.3f GMAC, %.1f ms torch, %.1f ms ORT, mIoU %s", method, row.params,
                 row.macs / 1e9, row.latency_ms, row.ort_latency_ms, row.miou)
        rows.append(row)

    for method in cfg.methods:
        t0 = time.perf_counter()
        model = fresh()
        if method == "baseline":
            result = _train(cfg, model, train)
            measure(method, model, result, count_params(model))
        elif method == "prune":
            sgl = SparseGroupLasso(neuron_layers(model), group=cfg.prune_group, l1=cfg.prune_l1)
            result = _train(cfg, model, train, sgl.after_step)
            pruned, counts = prune_ensemble(model)
            layers[method] = counts
            measure(method, pruned, result, count_params(model), kept_neurons=round(counts.kept_fraction, 4),
                    arch_blocks=pruned.arch["member_blocks"][0] if pruned.arch["member_blocks"] else None)
        elif method == "lowrank":
            nuc = NuclearNorm(model, weight=cfg.nuclear)
            result = _train(cfg, model, train, nuc.after_step)
            split, counts = lowrank_ensemble(model, energy=cfg.rank_energy)
            layers[method] = counts
            measure(method, split, result, count_params(model), convs_split=len(split.arch["convs"]),
                    kept_rank=round(counts.kept_fraction, 4), energy=cfg.rank_energy)
        elif method == "expandnet":
            expand_model(model, rate=cfg.expand_rate, generator=torch.Generator().manual_seed(cfg.seed))
            result = _train(cfg, model, train)
            train_params = count_params(model)
            compact = contract_ensemble(model)
            measure(method, compact, result, train_params, **_contraction_errors(model, compact, cfg.input_hw))
        if cfg.out_dir is not None and method in layers:  # written as soon as known: full runs take hours
            plots[method] = str(plot_layer_counts(layers[method], Path(cfg.out_dir) / f"{method}_layers.png",
                                                  PLOT_TITLES[method]))
        log.info("%s done in %.0f s", method, time.perf_counter() - t0)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    settings.update(train_frames=len(train), held_out_frames=len(held))
    return CompressionReport(rows, layers, plots, settings)


def _contraction_errors(expanded: Ensemble, compact: Ensemble, input_hw: tuple[int, int]) -> dict[str, float]:
    """Max |expanded - contracted| over probabilities and features.

    ``fp32``: the deployed float32 nets. ``fp64``: both in float64, contracted in float64 (the exactness of
    the algebra). ``fp32_floor``: the expanded float32 net against itself in float64, i.e. what float32
    round-off alone costs through this many layers; ``fp32`` should be of that order.
    """
    x = torch.rand(2, 3, *input_hw, generator=torch.Generator().manual_seed(1)) * 255.0
    expanded64 = copy.deepcopy(expanded).double()
    expanded.eval()
    expanded64.eval()
    with torch.no_grad():
        floor = max(float((a.double() - b).abs().max()) for a, b in zip(expanded(x), expanded64(x.double()), strict=True))
    return {
        "contraction_err_fp32": contraction_error(expanded, compact, x),
        "contraction_err_fp64": contraction_error(expanded64, contract_ensemble(expanded64), x.double()),
        "fp32_floor": floor,
    }
