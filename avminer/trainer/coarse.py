"""Labels in another (coarser) taxonomy: train the 11-class ensemble on frames labeled in IDD's 7 groups.

A label vendor that annotates in a coarser scheme still says something exact about the fine model: the
probability of the labeled *group* is the sum of the probabilities of its fine classes (the declared
:class:`avminer.taxonomy.TaxonomyMapping`, never guessed). The loss on such a pixel is therefore

    -log Σ_{c ∈ g} softmax(z)_c  =  -(logsumexp_{c ∈ g} z_c − logsumexp_c z_c)

which rewards the model for putting mass anywhere in the group and says nothing about how the mass is
shared inside it (the gradient w.r.t. the logits of group members is ``p_c − p_c / P_g``, i.e. it only
moves the group total). This is the partial-label / "coarse-to-fine" likelihood used by e.g. Lambert et
al., "MSeg: A Composite Dataset for Multi-domain Semantic Segmentation" (CVPR 2020) for merged taxonomies.

Coarse labels travel through the trainer in the same uint8 label arrays as fine ones, offset by
:data:`COARSE_BASE`: a pixel ``COARSE_BASE + g`` means "group g of the coarse taxonomy"; fine ids stay
``0..10`` and void ``11``. Batching, augmentation (nearest-neighbour on labels) and class counting need no
change, and a batch without coarse pixels takes exactly the old loss path.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor

from avminer.errors import TrainerError
from avminer.taxonomy import TaxonomyMapping

COARSE_BASE = 128
"""Label value of coarse group 0; group g is ``COARSE_BASE + g`` (fine ids and void stay below it)."""

IGNORE = -100  # torch's default ignore index for nll_loss


def encode_coarse(labels: NDArray[np.integer], mapping: TaxonomyMapping, fine_void: int) -> NDArray[np.uint8]:
    """Coarse-taxonomy label ids -> the trainer's encoding (``COARSE_BASE + g``; coarse void -> ``fine_void``).

    Raises:
        TrainerError: the coarse taxonomy has too many groups for the encoding.
    """
    groups = mapping.target.num_classes
    if COARSE_BASE + groups > 255:
        raise TrainerError(f"{mapping.target.name} has {groups} groups; at most {255 - COARSE_BASE} fit the encoding")
    lut = np.full(256, fine_void, np.uint8)
    lut[:groups] = COARSE_BASE + np.arange(groups, dtype=np.uint8)
    return lut[np.asarray(labels, dtype=np.uint8)]


def has_coarse(target: Tensor) -> bool:
    """True when any pixel of ``target`` carries a coarse label."""
    return bool((target >= COARSE_BASE).any())


def group_log_probs(logits: Tensor, mapping: TaxonomyMapping) -> Tensor:
    """log Σ_{c∈g} softmax(logits)_c for every group: [..., C, H, W] (classes on dim -3) -> [..., G, H, W]."""
    logp = F.log_softmax(logits, dim=-3)  # [..., C, H, W]
    matrix = mapping.matrix  # [G, C] 0/1
    out = []
    for g in range(matrix.shape[0]):
        members = torch.as_tensor(np.flatnonzero(matrix[g]), device=logits.device)
        if members.numel() == 0:  # a declared-empty group can never be predicted: log 0
            out.append(torch.full_like(logp.select(-3, 0), float("-inf")))
        else:
            out.append(torch.logsumexp(logp.index_select(-3, members), dim=-3))
    return torch.stack(out, dim=-3)


def coarse_nll_sum(
    logits: Tensor, target: Tensor, mapping: TaxonomyMapping, group_weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(Σ over members and coarse pixels of the weighted group NLL, Σ of the pixel weights of one member).

    Args:
        logits: [K, N, C, H, W].
        target: [N, H, W] int64 in the trainer's encoding; only ``COARSE_BASE + g`` pixels count here.
        mapping: the declared fine -> coarse mapping.
        group_weights: [G] or None.
    """
    k = logits.shape[0]
    groups = mapping.target.num_classes
    coarse = (target >= COARSE_BASE) & (target < COARSE_BASE + groups)  # [N, H, W]
    tgt = torch.where(coarse, target - COARSE_BASE, torch.full_like(target, IGNORE))  # [N, H, W]
    glogp = group_log_probs(logits, mapping).flatten(0, 1)  # [K·N, G, H, W]
    summed = F.nll_loss(glogp, tgt.repeat(k, 1, 1), weight=group_weights, ignore_index=IGNORE, reduction="sum")
    denom = coarse.sum().to(logits.dtype) if group_weights is None else group_weights[tgt[coarse]].sum()
    return summed, denom


def coarse_class_weights(labels: NDArray[np.uint8], groups: int, c: float = 1.02) -> NDArray[np.float32]:
    """ENet weights ``1 / ln(c + p_g)`` of the coarse groups, from the encoded labels (as for fine classes)."""
    vals = labels[labels >= COARSE_BASE].astype(np.int64) - COARSE_BASE
    counts = np.bincount(vals[vals < groups], minlength=groups).astype(np.float64)
    p = counts / max(counts.sum(), 1.0)
    return np.asarray(1.0 / np.log(c + p), dtype=np.float32)
