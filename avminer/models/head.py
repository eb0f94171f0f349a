"""The scoring head: ensemble logits -> the compact outputs of :mod:`avminer.engines.contract`, in the graph.

The maths is that of :mod:`avminer.scoring.uncertainty` (DPE, Chitta et al. 2018; BALD, Houlsby et al.
2011), written in torch ops that export to plain ONNX (Softmax, Log, ReduceSum, ArgMax, TopK, Slice,
Gather) so ONNX Runtime, TensorRT and torch all compute it next to the net: on a GPU only a few
kilobytes per frame cross to the host.

Everything here runs in float32 whatever the net's precision: entropies of FP16 probabilities lose
their small terms, and the head costs little next to the convolutions.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn


class HeadParams(Protocol):
    """The head's settings (:class:`avminer.engines.contract.HeadSpec`, recorded in every bundle)."""

    @property
    def map_stride(self) -> int: ...

    @property
    def rare_classes(self) -> tuple[int, ...]: ...

    @property
    def rare_class_weight(self) -> float: ...

    @property
    def map_dtype(self) -> str: ...

    def map_hw(self, input_hw: tuple[int, int]) -> tuple[int, int]: ...

    def topk_count(self, input_hw: tuple[int, int]) -> int: ...

    def map_scale(self, num_classes: int) -> float: ...

    @property
    def grid(self) -> int: ...

_EPS = 1e-12  # probabilities are clamped here before log, as in avminer.scoring.uncertainty


def _f32(x: Tensor) -> Tensor:
    """``x`` in float32; no Cast node in graphs exported from a float32 model (FP16 converters trip on them)."""
    return x if x.dtype == torch.float32 else x.float()


class ScoringHead(nn.Module):
    """Logits ``[K, N, C, H, W]`` -> (scores ``[N, S]``, umap ``[N, h, w]``, argmax ``[N, H, W]`` uint8).

    Args:
        spec: pooling and map settings (recorded in the bundle's manifest).
        num_classes: C.
        input_hw: (H, W) of the logits (fixes the top-k count and the grid cells, as ONNX needs).
    """

    class_weight: Tensor  # [C] weight of each predicted class's pixels in the mi scores
    classes: Tensor  # [1, 1, C, 1, 1] class ids, for the members' votes

    def __init__(self, spec: HeadParams, num_classes: int, input_hw: tuple[int, int]) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.input_hw = input_hw
        mh, mw = spec.map_hw(input_hw)
        self.topk = spec.topk_count(input_hw)
        gh, gw = min(spec.grid, mh), min(spec.grid, mw)
        # Same cell edges as avminer.scoring.uncertainty.aggregate: sizes differ by at most one.
        self.row_edges = [int(v) for v in np.linspace(0, mh, gh + 1).astype(np.int64)]
        self.col_edges = [int(v) for v in np.linspace(0, mw, gw + 1).astype(np.int64)]
        weights = torch.ones(num_classes)
        for c in spec.rare_classes:
            if 0 <= c < num_classes:
                weights[c] = spec.rare_class_weight
        self.register_buffer("class_weight", weights, persistent=False)
        self.register_buffer("classes", torch.arange(num_classes).view(1, 1, -1, 1, 1), persistent=False)
        self.map_scale = spec.map_scale(num_classes)

    def forward(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """logits [K, N, C, H, W] -> (scores [N, S] f32, umap [N, h, w], argmax [N, H, W] u8, probs [K, N, C, H, W])."""
        k = logits.shape[0]
        probs = torch.softmax(_f32(logits), dim=2)  # [K, N, C, H, W]
        argmax = probs.sum(dim=0).argmax(dim=1).to(torch.uint8)  # [N, H, W]; the sum ranks like the mean
        s = self.spec.map_stride
        p = probs[..., ::s, ::s] if s > 1 else probs  # [K, N, C, h, w]
        mean_p = p.mean(dim=0)  # [N, C, h, w]
        log_mean = torch.log(mean_p.clamp_min(_EPS))
        pe = (-(mean_p * log_mean).sum(dim=1)).clamp_min(0.0)  # [N, h, w]
        log_p = torch.log(p.clamp_min(_EPS))  # [K, N, C, h, w]
        ee = torch.minimum((-(p * log_p).sum(dim=2).mean(dim=0)).clamp_min(0.0), pe)  # EE <= PE (Jensen)
        # MI as E_k KL(p_k || p̄): a sum of non-negative terms, no cancellation when the members agree.
        mi = torch.minimum(((p * (log_p - log_mean)).sum(dim=2).mean(dim=0)).clamp_min(0.0), pe)
        votes = (p.argmax(dim=2, keepdim=True) == self.classes).sum(dim=0)  # [N, C, h, w] member votes
        vr = 1.0 - votes.max(dim=1).values.float() / float(k)  # [N, h, w]
        top2 = torch.topk(mean_p, 2, dim=1).values  # [N, 2, h, w]
        margin = (1.0 - (top2[:, 0] - top2[:, 1])).clamp(0.0, 1.0)
        msp = 1.0 - top2[:, 0].flatten(1).mean(dim=1)  # [N]: max-softmax baseline (Hendrycks & Gimpel 2017)
        # Soft rare-class weight 1 + (w - 1) * p̄(rare classes): a pixel counts more in mi the more the
        # ensemble believes it is a rare class. Unlike a weight picked by the argmax it is continuous in the
        # probabilities, so backends agree on it to rounding (a near-tie cannot flip it from 1 to w).
        weight = (mean_p * self.class_weight.view(1, -1, 1, 1)).sum(dim=1)  # [N, h, w]
        maps = torch.stack([mi * weight, pe, ee, vr, margin], dim=1)  # [N, M, h, w], order of MEASURES
        pooled = torch.stack([self._mean(maps), self._topk(maps), self._grid(maps)], dim=2)  # [N, M, P]
        scores = torch.cat([pooled.flatten(1), msp[:, None]], dim=1)  # [N, M*P + 1]
        if self.spec.map_dtype == "uint8":
            umap = torch.round(mi / self.map_scale).clamp(0.0, 255.0).to(torch.uint8)
        else:
            umap = mi.to(torch.float16)
        return scores, umap, argmax, probs

    @staticmethod
    def _mean(maps: Tensor) -> Tensor:
        return maps.flatten(2).mean(dim=2)  # [N, M]

    def _topk(self, maps: Tensor) -> Tensor:
        return torch.topk(maps.flatten(2), self.topk, dim=2).values.mean(dim=2)  # [N, M]

    def _grid(self, maps: Tensor) -> Tensor:
        r, c = self.row_edges, self.col_edges
        cells = [
            maps[:, :, r[i]:r[i + 1], c[j]:c[j + 1]].mean(dim=(2, 3))  # [N, M] one cell's mean
            for i in range(len(r) - 1) for j in range(len(c) - 1)
        ]
        return torch.stack(cells, dim=2).max(dim=2).values  # [N, M]: the most uncertain cell wins


class CompactEnsemble(nn.Module):
    """An :class:`~avminer.models.ensemble.Ensemble` followed by its :class:`ScoringHead`.

    ``forward(images [N, 3, H, W] RGB 0..255) -> (scores, features, umap, argmax)``, plus ``probs`` last
    when built with ``with_probs=True``: the graph that bundles export and every backend runs.
    """

    def __init__(self, ensemble: nn.Module, spec: HeadParams, input_hw: tuple[int, int], with_probs: bool = False
                 ) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.head = ScoringHead(spec, int(ensemble.num_classes), input_hw)  # type: ignore[arg-type]
        self.with_probs = with_probs

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        logits, feats = self.ensemble.member_outputs(images)  # type: ignore[operator]
        scores, umap, argmax, probs = self.head(logits)
        features = _f32(feats).mean(dim=0)  # [N, D]
        if self.with_probs:
            return scores, features, umap, argmax, probs
        return scores, features, umap, argmax
