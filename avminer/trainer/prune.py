"""Joint training and pruning: learn the number of neurons with a sparse group lasso.

Alvarez & Salzmann, "Learning the Number of Neurons in Deep Networks", NeurIPS 2016. Every neuron (output
channel) of a prunable layer owns a group ``g`` of parameters; training adds

    R(θ) = Σ_layers Σ_g  λ_g · sqrt(|g|) · ||θ_g||₂  +  λ₁ · ||θ_g||₁

and, since R is not differentiable at zero, it is not put in the loss: after each optimiser step the
weights take a proximal step, ``θ ← prox_{η·R}(θ)`` with ``η`` the step's learning rate. The prox of the
sparse group lasso is elementwise soft-thresholding by ``η·λ₁`` followed by group soft-thresholding by
``η·λ_g·sqrt(|g|)`` (the composition is exact for this regulariser). Groups hit exactly zero and stay
there unless the data gradient pulls them out, so the net learns how many neurons each layer needs.

Scale of λ_g under Adam (the trainer's optimiser; the paper used SGD): Adam moves every weight by about
the learning rate per step, so a group grows by at most ``η·sqrt(|g|)`` per step while the prox shrinks it
by ``η·λ_g·sqrt(|g|)``. λ_g is thus compared with how consistently the data pulls on the group: groups
whose normalised gradient stays below λ_g die, and λ_g >= 1 eventually removes every neuron. Values
around 0.2-0.6 prune; how many steps it takes scales like (initial group norm) / (η·λ_g·sqrt(|g|)).

After training, :func:`prune_ensemble` removes the zero neurons *physically*: the conv's output channels,
the BatchNorm entries behind it and the next conv's input channels go, and a smaller dense net comes out
that rebuilds from its ``arch`` (``member_blocks`` carries each member's ``mid`` channel counts).

Which neurons are prunable in ERFNet. Only the inner channels of non-bottleneck-1D blocks
(``conv3x1_1``, ``conv1x3_1``, ``conv3x1_2``: the block's ``mid``). The block output (``conv1x3_2``) is
summed with the block input, so its width is the residual stream's width, shared by every block of a
stage, by the downsampler that opens it and by the pooled feature taps; pruning it would couple all of
them into one group. Keeping the residual width fixed keeps the surgery local to one block, and the
inner convs hold three quarters of every block's weights.

A neuron's group is its conv kernel row and bias **and**, where BatchNorm follows, its BN scale and shift.
With all of them zero the channel's output is exactly zero in train and eval mode (BN: ``0·x̂ + 0``), so
removing it changes nothing downstream: the pruned net computes the same function.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avminer.errors import TrainerError
from avminer.models.arch import member_blocks, validate_arch
from avminer.models.ensemble import Ensemble
from avminer.models.erfnet import NonBottleneck1D

# The three inner convs of a non-bottleneck-1D block and the BatchNorm (if any) right behind each.
NB1D_INNER: tuple[tuple[str, str | None], ...] = (("conv3x1_1", None), ("conv1x3_1", "bn1"), ("conv3x1_2", None))
# The conv that consumes each inner conv's output.
NB1D_NEXT = ("conv1x3_1", "conv3x1_2", "conv1x3_2")


@dataclass
class NeuronLayer:
    """The neurons of one prunable layer: tensors whose dim 0 indexes the neuron.

    Attributes:
        name: module path of the conv inside its member (``blocks.4.conv3x1_1``).
        member: ensemble member index.
        block: block index inside the member.
        slot: position in the block's ``mid`` list (0, 1, 2).
        tensors: conv weight ``[O, I, kh, kw]``, conv bias ``[O]``, BN weight and bias ``[O]`` when present.
    """

    name: str
    member: int
    block: int
    slot: int
    tensors: list[Tensor]

    @property
    def neurons(self) -> int:
        return int(self.tensors[0].shape[0])

    @property
    def group_size(self) -> int:
        """|g|: parameters per neuron."""
        return sum(t[0].numel() for t in self.tensors)

    def norms(self) -> Tensor:
        """l2 norm of each neuron's group, ``[O]``."""
        return torch.sqrt(sum(t.detach().reshape(t.shape[0], -1).pow(2).sum(1) for t in self.tensors))  # type: ignore[arg-type]


def soft_threshold(x: Tensor, t: float) -> Tensor:
    """Elementwise soft-thresholding ``sign(x)·max(|x| - t, 0)``: the prox of ``t·||x||₁``."""
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0.0)


def group_soft_threshold(rows: Tensor, t: float | Tensor) -> Tensor:
    """Group soft-thresholding of each row of ``rows [G, P]``: the prox of ``t·Σ_g ||row_g||₂``.

    A row with norm ``<= t`` becomes exactly zero; a longer one is shortened by ``t`` along its direction.
    """
    return rows * shrink_factors(rows.norm(dim=1), t).unsqueeze(1)  # [G, P] * [G, 1]


def shrink_factors(norms: Tensor, t: float | Tensor) -> Tensor:
    """``max(1 - t/||g||, 0)`` per group: what group soft-thresholding multiplies each group by."""
    return torch.clamp(1.0 - t / torch.clamp(norms, min=torch.finfo(norms.dtype).tiny), min=0.0)


@dataclass
class SparseGroupLasso:
    """The sparse group lasso over neuron groups, with its proximal step.

    Args:
        layers: the prunable layers (:func:`neuron_layers`).
        group: λ_g, weight of ``Σ_g sqrt(|g|)·||θ_g||₂``.
        l1: λ₁, weight of ``||θ||₁`` on the same parameters.
    """

    layers: list[NeuronLayer]
    group: float = 0.1
    l1: float = 0.0

    def penalty(self) -> float:
        """R(θ) at the current weights (for logging: it is applied by :meth:`step`, not backpropagated)."""
        total = 0.0
        for layer in self.layers:
            total += self.group * math.sqrt(layer.group_size) * float(layer.norms().sum())
            total += self.l1 * sum(float(t.detach().abs().sum()) for t in layer.tensors)
        return total

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """Proximal step for a gradient step of size ``lr``: l1 shrink, then group shrink, in place."""
        for layer in self.layers:
            if self.l1 > 0:
                for t in layer.tensors:
                    t.copy_(soft_threshold(t, lr * self.l1))
            scale = shrink_factors(layer.norms(), lr * self.group * math.sqrt(layer.group_size))  # [O]
            for t in layer.tensors:
                t.mul_(scale.view(-1, *([1] * (t.dim() - 1))))

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Hook for a training loop: the prox with the optimiser's current learning rate."""
        self.step(float(optimizer.param_groups[0]["lr"]))


def members_of(model: nn.Module) -> list[nn.Module]:
    """The member nets of an :class:`Ensemble`, or ``[model]`` for a single member."""
    return list(model.members) if isinstance(model, Ensemble) else [model]


def neuron_layers(model: nn.Module) -> list[NeuronLayer]:
    """Every prunable layer (inner convs of non-bottleneck-1D blocks) of an ensemble or a member.

    Raises:
        TrainerError: a block's inner conv is low-rank or expanded (prune the plain net first).
    """
    layers: list[NeuronLayer] = []
    for k, member in enumerate(members_of(model)):
        for i, block in enumerate(member.blocks):  # type: ignore[arg-type]
            if not isinstance(block, NonBottleneck1D):
                continue
            for slot, (conv_name, bn_name) in enumerate(NB1D_INNER):
                conv = getattr(block, conv_name)
                if type(conv) is not nn.Conv2d:
                    raise TrainerError(
                        f"member {k} blocks.{i}.{conv_name} is a {type(conv).__name__}; pruning needs plain "
                        "convs (train the pruned net first, then apply low-rank or ExpandNets)"
                    )
                tensors: list[Tensor] = [conv.weight]
                if conv.bias is not None:
                    tensors.append(conv.bias)
                if bn_name is not None:
                    bn = getattr(block, bn_name)
                    tensors += [bn.weight, bn.bias]
                layers.append(NeuronLayer(f"blocks.{i}.{conv_name}", k, i, slot, tensors))
    return layers


@dataclass
class LayerCounts:
    """Units per layer before and after compression: neurons (pruning) or ranks (low-rank).

    Attributes:
        layers: layer names (``blocks.4.conv3x1_1``), in network order.
        initial: units per layer before (the same for every member).
        learned: ``learned[k][j]``: units member ``k`` keeps in layer ``j``.
        unit: what is counted ("neurons", "rank").
    """

    layers: list[str] = field(default_factory=list)
    initial: list[int] = field(default_factory=list)
    learned: list[list[int]] = field(default_factory=list)
    unit: str = "neurons"

    @property
    def kept_fraction(self) -> float:
        """Kept units / initial units over all layers and members."""
        total = sum(self.initial) * max(1, len(self.learned))
        return sum(map(sum, self.learned)) / total if total else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "layers": self.layers, "initial": self.initial, "learned": self.learned,
                "kept_fraction": self.kept_fraction}


def _take(t: Tensor, rows: Tensor | None, cols: Tensor | None) -> Tensor:
    if rows is not None:
        t = t.index_select(0, rows)
    if cols is not None:
        t = t.index_select(1, cols)
    return t


def _keep_indices(norms: Tensor, tol: float) -> Tensor:
    keep = torch.nonzero(norms > tol).flatten()
    if keep.numel() == 0:
        # A layer whose neurons all died still needs one channel to stay a valid conv; a zero channel
        # contributes nothing, so keeping it changes no output.
        keep = torch.zeros(1, dtype=torch.long)
    return keep


def prune_ensemble(model: Ensemble, tol: float = 0.0) -> tuple[Ensemble, LayerCounts]:
    """Remove every inner non-bottleneck-1D neuron whose group norm is ``<= tol``, physically.

    Each member keeps its own channel counts (``arch["member_blocks"]``); the residual widths, and with
    them the feature taps, are unchanged. With ``tol=0`` only exactly-zero neurons go and the pruned
    ensemble computes the same outputs as the input one.

    Returns:
        (pruned ensemble in the input's train/eval mode, report of neurons per layer).
    """
    arch = validate_arch(model.arch)
    if arch["convs"]:
        raise TrainerError("prune before low-rank or ExpandNets: arch convs overrides are set")
    layers = neuron_layers(model)
    keep: dict[tuple[int, int, int], Tensor] = {
        (lay.member, lay.block, lay.slot): _keep_indices(lay.norms(), tol) for lay in layers
    }
    report = LayerCounts()
    new_member_blocks: list[list[dict[str, Any]]] = []
    for k in range(model.num_members):
        blocks = [dict(b) for b in member_blocks(arch, k)]
        learned: list[int] = []
        for i, block in enumerate(blocks):
            if block["type"] != "nb1d":
                continue
            mids = [int(keep[(k, i, s)].numel()) for s in range(3)]
            if k == 0:
                report.layers += [f"blocks.{i}.{name}" for name, _ in NB1D_INNER]
                report.initial += [int(m) for m in block["mid"]]
            learned += mids
            block["mid"] = mids
        report.learned.append(learned)
        new_member_blocks.append(blocks)
    new_arch = dict(arch, member_blocks=new_member_blocks)
    pruned = Ensemble(new_arch).to(next(model.parameters()).dtype)
    pruned.load_state_dict(_pruned_state(model, keep))
    pruned.train(model.training)
    return pruned, report


def _pruned_state(model: Ensemble, keep: dict[tuple[int, int, int], Tensor]) -> dict[str, Tensor]:
    """The input's state dict with pruned rows (outputs) and columns (next conv's inputs) dropped."""
    state = {name: t.detach().clone() for name, t in model.state_dict().items()}
    for (k, i, slot), idx in keep.items():
        prefix = f"members.{k}.blocks.{i}"
        conv_name, bn_name = NB1D_INNER[slot]
        for suffix in ("weight", "bias"):
            key = f"{prefix}.{conv_name}.{suffix}"
            if key in state:
                state[key] = _take(state[key], idx, None)
        if bn_name is not None:
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                key = f"{prefix}.{bn_name}.{suffix}"
                state[key] = _take(state[key], idx, None)
        nxt = f"{prefix}.{NB1D_NEXT[slot]}.weight"
        state[nxt] = _take(state[nxt], None, idx)
    return state


def plot_layer_counts(report: LayerCounts, path: str | Path, title: str = "Learned number of neurons") -> Path:
    """Bar plot of initial vs learned units per layer, like the talk's (a PNG; matplotlib's Agg backend).

    With several members the learned bar is their mean and the whisker spans min..max.
    """
    from avminer.utils.plots import pyplot, save_png

    plt = pyplot()
    import numpy as np

    learned = np.asarray(report.learned, dtype=np.float64)  # [K, L]
    x = np.arange(len(report.layers))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.22 * len(x)), 4.0))
    ax.bar(x - 0.2, report.initial, width=0.4, label="initial", color="#9bb7d4")
    mean = learned.mean(axis=0)
    yerr = None
    if learned.shape[0] > 1:
        yerr = np.stack([mean - learned.min(axis=0), learned.max(axis=0) - mean])
    ax.bar(x + 0.2, mean, width=0.4, yerr=yerr, label="learned", color="#d9534f", capsize=1.5)
    ax.set_xticks(x)
    ax.set_xticklabels([name.replace("blocks.", "b") for name in report.layers], rotation=90, fontsize=6)
    ax.set_ylabel(report.unit)
    ax.set_title(f"{title} (kept {100 * report.kept_fraction:.0f}%)")
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def zero_neurons(model: nn.Module, which: Iterable[tuple[int, int, int, int]]) -> None:
    """Zero whole neuron groups, ``(member, block, slot, neuron)`` each (tests and what-if studies)."""
    by_key = {(lay.member, lay.block, lay.slot): lay for lay in neuron_layers(model)}
    with torch.no_grad():
        for k, i, slot, o in which:
            for t in by_key[(k, i, slot)].tensors:
                t[o] = 0

