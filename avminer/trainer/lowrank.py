"""Compression-aware training: a nuclear-norm regulariser, then a truncated-SVD split of every conv.

Alvarez & Salzmann, "Compression-aware Training of Deep Networks", NeurIPS 2017. Each conv's kernel
``[O, I, kh, kw]`` is read as a matrix ``Θ [O, P = I·kh·kw]`` (one row per output filter); training adds
``τ · Σ_convs sqrt(O·P)·||Θ||_*`` (the nuclear norm, the convex surrogate of the rank; the layer weight
is explained at :class:`NuclearNorm`) through a proximal step after each optimiser step: singular value
thresholding, ``Θ ← U · diag(max(s - η·τ·sqrt(O·P), 0)) · Vᵀ`` with ``η`` the step's learning rate.
Small singular values hit exactly zero during training, so the net learns to live in low rank instead
of being truncated blindly.

Afterwards, each conv of rank ``r`` (the smallest ``r`` whose singular values keep an ``energy`` fraction
of ``Σ s²``) becomes two thinner convs when that saves parameters, ``r·(I·kh·kw + O) < O·I·kh·kw``:

- a ``kh×kw`` conv ``I -> r`` holding the ``r`` rows of ``Vᵀ`` as filters, with the original stride,
  padding and dilation and no bias, then
- a ``1×1`` conv ``r -> O`` holding ``U·S`` and the original bias.

A 3×1 or 1×3 conv of ERFNet splits the same way (3×1 ``I -> r`` then 1×1): its matrix is ``[O, 3·I]``.
Since a 1×1 conv is pointwise it commutes with padding, stride and dilation, so at full rank the pair is
the original conv exactly. The split rebuilds from ``arch["convs"][path] = {"rank": r}``; the rank is
the maximum over the ensemble members because the arch's overrides are shared (a member whose own rank
is lower simply carries a few zero singular values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from avminer.errors import TrainerError
from avminer.models.arch import validate_arch
from avminer.models.ensemble import Ensemble
from avminer.models.erfnet import LowRankConv2d
from avminer.trainer.prune import LayerCounts, members_of


def conv_matrix(weight: Tensor) -> Tensor:
    """Kernel ``[O, I, kh, kw]`` -> matrix ``[O, I·kh·kw]`` (a view when contiguous)."""
    return weight.reshape(weight.shape[0], -1)


def singular_value_threshold(matrix: Tensor, t: float) -> Tensor:
    """``U·diag(max(s - t, 0))·Vᵀ``: the prox of ``t·||·||_*`` at ``matrix`` ``[..., O, P]`` (batched)."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    out: Tensor = (u * torch.clamp(s - t, min=0.0).unsqueeze(-2)) @ vh  # [..., O, r] * [..., 1, r] @ [..., r, P]
    return out


def energy_rank(singular_values: Tensor, energy: float) -> int:
    """Smallest ``r`` with ``Σ_{i<r} s_i² >= energy · Σ s_i²`` (at least 1; s sorted descending)."""
    if not 0.0 < energy <= 1.0:
        raise TrainerError(f"rank energy must be in (0, 1], got {energy}")
    sq = singular_values.double().pow(2)
    total = float(sq.sum())
    if total == 0.0:
        return 1
    # The tolerance makes energy=1.0 mean "every nonzero singular value", not "fail on round-off".
    cum = torch.cumsum(sq, 0) / total
    return max(1, int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=torch.float64)).item()) + 1)


def plain_convs(member: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """``(path, conv)`` of every plain (not transposed, not yet split) Conv2d of a member."""
    return [(name, m) for name, m in member.named_modules() if type(m) is nn.Conv2d and m.groups == 1]


@dataclass
class NuclearNorm:
    """The nuclear-norm regulariser over every conv of a model, with its proximal step.

    Each conv's term is weighted by ``sqrt(O·I·kh·kw)``, the size of its matrix, as the group lasso
    weights each group by ``sqrt(|g|)``: under Adam a step moves each weight by about the learning rate,
    so the most a step can grow a singular value scales with ``sqrt(O·P)``; with that weighting one
    ``τ`` means the same for every layer, and ``τ`` of order 1 and beyond leaves no singular value alive.

    Args:
        model: an :class:`Ensemble` or a single member.
        weight: τ, weight of ``Σ_convs sqrt(O·P)·||Θ||_*``.
    """

    model: nn.Module
    weight: float = 0.1

    def __post_init__(self) -> None:
        kernels: list[Tensor] = [conv.weight for member in members_of(self.model) for _, conv in plain_convs(member)]
        # Same-shaped kernels share one batched SVD per step (ERFNet repeats a handful of shapes).
        self.by_shape: dict[tuple[int, ...], list[Tensor]] = {}
        for w in kernels:
            self.by_shape.setdefault(tuple(w.shape), []).append(w)

    def layer_weight(self, shape: tuple[int, ...]) -> float:
        """τ·sqrt(O·I·kh·kw) for a kernel of ``shape``."""
        return self.weight * math.sqrt(math.prod(shape))

    def penalty(self) -> float:
        """Σ τ·sqrt(O·P)·||Θ||_* at the current weights (for logging: it is applied by :meth:`step`)."""
        total = 0.0
        for shape, ws in self.by_shape.items():
            stacked = torch.stack([conv_matrix(w.detach()) for w in ws])  # [B, O, P]
            total += self.layer_weight(shape) * float(torch.linalg.matrix_norm(stacked, ord="nuc").sum())
        return total

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """Singular value thresholding by ``lr·τ·sqrt(O·P)`` of every kernel, in place."""
        for shape, ws in self.by_shape.items():
            stacked = torch.stack([conv_matrix(w) for w in ws])  # [B, O, P]
            shrunk = singular_value_threshold(stacked, lr * self.layer_weight(shape))
            for w, new in zip(ws, shrunk, strict=True):
                w.copy_(new.view_as(w))

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Hook for a training loop: the prox with the optimiser's current learning rate."""
        self.step(float(optimizer.param_groups[0]["lr"]))


def _conv(member: nn.Module, name: str) -> nn.Conv2d:
    return cast(nn.Conv2d, member.get_submodule(name))


def split_weights(conv: nn.Conv2d, rank: int) -> tuple[Tensor, Tensor]:
    """Truncated SVD of ``conv``: (first ``[r, I, kh, kw]`` = Vᵀ rows, second ``[O, r, 1, 1]`` = U·S)."""
    w = conv.weight.detach()
    u, s, vh = torch.linalg.svd(conv_matrix(w).double(), full_matrices=False)
    if not 1 <= rank <= s.numel():
        raise TrainerError(f"rank {rank} is outside 1..{s.numel()} for a {tuple(w.shape)} kernel")
    first = vh[:rank].reshape(rank, *w.shape[1:])  # [r, I, kh, kw]
    second = (u[:, :rank] * s[:rank]).reshape(w.shape[0], rank, 1, 1)  # [O, r, 1, 1]
    return first.to(w.dtype), second.to(w.dtype)


def split_conv(conv: nn.Conv2d, rank: int) -> LowRankConv2d:
    """The conv as a rank-``rank`` pair (exact at full rank), same device and dtype."""
    first, second = split_weights(conv, rank)
    pair = LowRankConv2d(conv, rank).to(device=conv.weight.device, dtype=conv.weight.dtype)
    state = {"first.weight": first, "second.weight": second}
    if conv.bias is not None:
        state["second.bias"] = conv.bias.detach()
    pair.load_state_dict(state)
    return pair


def saves_parameters(conv: nn.Conv2d, rank: int) -> bool:
    """True if the split ``kh×kw (I->r)`` + ``1×1 (r->O)`` has fewer weights than the conv."""
    o, i, kh, kw = conv.weight.shape
    return rank * (i * kh * kw + o) < o * i * kh * kw


def lowrank_ensemble(model: Ensemble, energy: float = 0.99) -> tuple[Ensemble, LayerCounts]:
    """Split every conv whose energy rank saves parameters into a low-rank pair; rebuildable from arch.

    Args:
        model: a trained ensemble with plain convs (``arch["convs"]`` empty).
        energy: fraction of ``Σ s²`` each conv keeps (1.0: every nonzero singular value).

    Returns:
        (low-rank ensemble in the input's train/eval mode, ranks per conv: initial = full rank, learned =
        each member's energy rank; ``arch["convs"]`` of the result names the convs actually split).
    """
    arch = validate_arch(model.arch)
    if arch["convs"]:
        raise TrainerError("lowrank_ensemble needs plain convs; arch convs overrides are already set")
    members = members_of(model)
    counts = LayerCounts(unit="rank")
    ranks: dict[str, int] = {}
    per_member: list[list[int]] = [[] for _ in members]
    for name, conv in plain_convs(members[0]):
        counts.layers.append(name)
        counts.initial.append(min(conv_matrix(conv.weight).shape))
        rank = 1
        for k, member in enumerate(members):
            s = torch.linalg.svdvals(conv_matrix(_conv(member, name).weight.detach()).double())
            r_k = energy_rank(s, energy)
            per_member[k].append(r_k)
            rank = max(rank, r_k)
        if saves_parameters(conv, rank):
            ranks[name] = rank
    # Each member's own energy rank; the split uses the members' maximum, convs that would not shrink stay.
    counts.learned = per_member
    new_arch: dict[str, Any] = dict(arch, convs={name: {"rank": r} for name, r in ranks.items()})
    split = Ensemble(new_arch).to(next(model.parameters()).dtype)
    state = {name: t.detach().clone() for name, t in model.state_dict().items()}
    for k, member in enumerate(members):
        for name, rank in ranks.items():
            first, second = split_weights(_conv(member, name), rank)
            prefix = f"members.{k}.{name}"
            del state[f"{prefix}.weight"]
            state[f"{prefix}.first.weight"] = first
            state[f"{prefix}.second.weight"] = second
            if f"{prefix}.bias" in state:
                state[f"{prefix}.second.bias"] = state.pop(f"{prefix}.bias")
    split.load_state_dict(state)
    split.train(model.training)
    return split, counts
