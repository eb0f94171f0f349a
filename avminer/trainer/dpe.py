"""Deep Probabilistic Ensembles: the KL regulariser that keeps jointly trained members diverse.

Chitta, Alvarez, Lesnikowski, "Deep Probabilistic Ensembles: Approximate Variational Inference through KL
Regularization", NeurIPS 2018 Workshop on Bayesian Deep Learning (arXiv:1811.02640).

The K members are read as K samples of an approximate posterior that is Gaussian per weight, with mean
μ_i and variance σ_i² estimated across the members. The regulariser is

    Ω = Σ_i [ log σ_i² + σ_p²/σ_i² + (μ_i − μ_p)²/σ_i² ]

which is 2·KL(prior ‖ q_i) up to the constant (1 + log σ_p²) per weight:
2·KL(N(μ_p, σ_p²) ‖ N(μ_i, σ_i²)) = log σ_i² − log σ_p² + σ_p²/σ_i² + (μ_i − μ_p)²/σ_i² − 1 ≥ 0,
zero exactly when σ_i² = σ_p² and μ_i = μ_p. With ``centered=True`` the constant is subtracted, so the
value is that non-negative KL; gradients are the same either way.

Priors (:func:`avminer.models.ensemble.weight_priors`): conv kernels N(0, 2/(n_out·k_h·k_w)) (He), BatchNorm
scales N(1, 0.01). Biases and BatchNorm shifts are not regularised.

The training loss is Σ_members CE(member) + β·Ω, with β = 1e-5 by default as in the re-implementations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avminer.errors import TrainerError
from avminer.models.ensemble import Ensemble, weight_priors
from avminer.taxonomy import CAMVID

if TYPE_CHECKING:
    from avminer.taxonomy import TaxonomyMapping

DEFAULT_BETA = 1e-5
VARIANCE_EPS = 1e-8  # keeps log σ² and 1/σ² finite should two members ever coincide


def kl_omega(
    weights: Tensor, prior_mean: float, prior_var: float, centered: bool = True, eps: float = VARIANCE_EPS
) -> Tensor:
    """Ω summed over the weights of one parameter stacked across members.

    Args:
        weights: [K, ...] the same parameter of each of the K members (K >= 2).
        prior_mean: μ_p of every weight of this parameter.
        prior_var: σ_p² of every weight of this parameter (> 0).
        centered: subtract (1 + log σ_p²) per weight so the result is Σ 2·KL(prior ‖ q_i) >= 0.
        eps: added to the across-member variance.

    Returns:
        A scalar tensor.
    """
    if weights.shape[0] < 2:
        raise TrainerError("DPE needs at least 2 members to estimate a per-weight variance")
    mu = weights.mean(dim=0)  # [...]
    var = weights.var(dim=0, unbiased=False) + eps  # [...] population variance across members
    omega = torch.log(var) + (prior_var + (mu - prior_mean) ** 2) / var  # [...]
    if centered:
        omega = omega - (1.0 + math.log(prior_var))
    return omega.sum()


def dpe_regularizer(members: Sequence[nn.Module] | Ensemble, centered: bool = True) -> Tensor:
    """Ω over every prior-covered parameter of the ensemble's members (which must share their shapes)."""
    nets = list(members.members) if isinstance(members, Ensemble) else list(members)
    priors = weight_priors(nets[0])
    params = [dict(net.named_parameters()) for net in nets]
    total = torch.zeros((), device=next(nets[0].parameters()).device)
    for name, (mean, var) in priors.items():
        try:
            stacked = torch.stack([p[name] for p in params])  # [K, *shape]
        except (KeyError, RuntimeError) as exc:
            raise TrainerError(
                f"DPE needs members of identical shapes; parameter {name} differs ({exc}). "
                "Set trainer dpe_beta to 0 for members pruned differently."
            ) from exc
        total = total + kl_omega(stacked, mean, var, centered=centered)
    return total


def ensemble_cross_entropy(
    logits: Tensor, target: Tensor, class_weights: Tensor | None = None, ignore_index: int = CAMVID.void
) -> Tensor:
    """Σ over members of each member's (class-weighted) mean pixel cross-entropy.

    Args:
        logits: [K, N, C, H, W].
        target: [N, H, W] int64 class ids; ``ignore_index`` (void) pixels do not count.
        class_weights: [C] or None.
    """
    k = logits.shape[0]
    flat = logits.flatten(0, 1)  # [K·N, C, H, W]
    tgt = target.repeat(k, 1, 1)  # [K·N, H, W]
    summed = F.cross_entropy(flat, tgt, weight=class_weights, ignore_index=ignore_index, reduction="sum")
    valid = target != ignore_index  # [N, H, W]
    if class_weights is None:
        denom = valid.sum().to(logits.dtype)
    else:
        denom = class_weights[target.clamp(max=class_weights.numel() - 1)][valid].sum()
    # Each member's mean CE is summed / (K · denom); Σ over the K members gives summed / denom.
    return summed / denom.clamp(min=1e-6)


def dpe_loss(
    model: Ensemble,
    logits: Tensor,
    target: Tensor,
    beta: float = DEFAULT_BETA,
    class_weights: Tensor | None = None,
    ignore_index: int = CAMVID.void,
    coarse: TaxonomyMapping | None = None,
    group_weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Σ_members CE + β·Ω; returns (loss, cross-entropy part, Ω (centered)).

    With one member or β = 0 the Ω term is skipped (returned as 0). With ``coarse`` (the declared mapping
    of labels in another taxonomy, :mod:`avminer.trainer.coarse`), pixels labeled with a group count with
    the NLL of the group's summed probability (weighted by ``group_weights``), pooled with the fine pixels;
    a batch without such pixels gives exactly the fine-only loss.
    """
    if coarse is not None:
        from avminer.trainer.coarse import COARSE_BASE, coarse_nll_sum, has_coarse

    if coarse is not None and has_coarse(target):
        fine_target = torch.where(target >= COARSE_BASE, torch.full_like(target, ignore_index), target)
        k = logits.shape[0]
        fine_sum = F.cross_entropy(logits.flatten(0, 1), fine_target.repeat(k, 1, 1), weight=class_weights,
                                   ignore_index=ignore_index, reduction="sum")
        valid = fine_target != ignore_index
        if class_weights is None:
            fine_denom = valid.sum().to(logits.dtype)
        else:
            fine_denom = class_weights[fine_target.clamp(max=class_weights.numel() - 1)][valid].sum()
        coarse_sum, coarse_denom = coarse_nll_sum(logits, target, coarse, group_weights)
        ce = (fine_sum + coarse_sum) / (fine_denom + coarse_denom).clamp(min=1e-6)
    else:
        ce = ensemble_cross_entropy(logits, target, class_weights, ignore_index)
    if beta > 0 and model.num_members >= 2:
        omega = dpe_regularizer(model)
    else:
        omega = torch.zeros((), device=logits.device)
    return ce + beta * omega, ce, omega
