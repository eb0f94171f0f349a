"""ERFNet-style real-time segmentation members, written from the paper's description.

Romera, Álvarez, Bergasa, Arroyo, "ERFNet: Efficient Residual Factorized ConvNet for Real-Time Semantic
Segmentation", IEEE T-ITS 2017. The building blocks:

- downsampler: concatenation of a strided 3×3 convolution and a 2×2 max-pool, then BatchNorm and ReLU;
- non-bottleneck-1D: a residual block of factorised convolutions (3×1 then 1×3), the second pair dilated,
  BatchNorm after each pair, dropout before the residual sum;
- a light decoder of transposed convolutions and non-bottleneck-1D blocks.

Every block's channel counts come from the ``arch`` dict (:mod:`avminer.models.arch`), so pruned and
low-rank members rebuild from it. Ops are kept to what ONNX and TensorRT take without fuss: Conv,
ConvTranspose, BatchNormalization (folded on export), Relu, MaxPool, Concat, Add, ReduceMean.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avminer.errors import TrainerError
from avminer.models.arch import block_out_channels

Overrides = dict[str, dict[str, int]]


class LowRankConv2d(nn.Sequential):
    """A k×k conv split in two: k×k (in -> rank, no bias) then 1×1 (rank -> out).

    Truncated SVD of the kernel reshaped to ``[out, in·kh·kw]`` fills it: ``first`` holds ``Vᵀ`` rows,
    ``second`` holds ``U·S`` (see ``avminer.trainer.lowrank``).
    """

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        first = nn.Conv2d(
            conv.in_channels, rank, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False  # type: ignore[arg-type]
        )
        second = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)
        super().__init__(OrderedDict(first=first, second=second))


_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def as_pair(v: Any) -> tuple[int, int]:
    """``3`` or ``(3, 1)`` as ``(h, w)`` (torch conv attributes come both ways)."""
    return (int(v[0]), int(v[1])) if isinstance(v, tuple | list) else (int(v), int(v))


def stack_kernels(kh: int, kw: int, large: int = 5) -> list[tuple[int, int]]:
    """Kernel sizes of the spatial layers that replace a ``kh×kw`` kernel in :class:`ExpandedConv`.

    Kernels with a side ``>= large`` become a stack of at most 3×3 kernels with the same receptive
    field (``1 + Σ(k_i - 1) = k`` on each axis): 5×5 -> two 3×3, 7×1 -> three 3×1, 6×6 -> 3×3, 3×3, 2×2.
    """
    if max(kh, kw) < large:
        return [(kh, kw)]
    layers = math.ceil((max(kh, kw) - 1) / 2)
    sizes = []
    left_h, left_w = kh - 1, kw - 1
    for _ in range(layers):
        step_h, step_w = min(2, left_h), min(2, left_w)
        sizes.append((step_h + 1, step_w + 1))
        left_h, left_w = left_h - step_h, left_w - step_w
    return sizes


class ExpandedConv(nn.Module):
    """ExpandNets' linear expansion of a ``kh×kw`` conv at rate ``r``: pad once, 1×1, spatial stack, 1×1.

    Guo, Alvarez, Salzmann, "ExpandNets: Linear Over-parameterization to Train Compact Convolutional
    Networks", NeurIPS 2020. The chain is ``1×1 (I -> r·I)``, the spatial layers (``kh×kw``, ``r·I -> r·O``;
    a kernel with a side >= ``large_kernel`` becomes a stack of 3×3-or-smaller layers, :func:`stack_kernels`),
    then ``1×1 (r·O -> O)``, with no nonlinearity in between, every layer biased when the conv is.

    The input is padded once, with the conv's own padding and padding mode, and every layer of the chain
    is a valid (unpadded) convolution: that is exactly what the one contracted conv computes, biases and
    border pixels included (padding the inner k×k layer instead would show it zeros where the compact conv
    sees the first 1×1's bias). Stride sits on the last spatial layer, dilation on every spatial layer.
    :func:`avminer.trainer.expandnet.contract` folds the chain into that conv.

    Attributes:
        pad: ``(left, right, top, bottom)`` applied once to the input, with ``pad_mode``.
        expand: 1×1 ``I -> r·I``.
        cores: spatial layers (valid, dilated; the last one strided).
        project: 1×1 ``r·O -> O``.
    """

    def __init__(self, conv: nn.Conv2d, rate: int = 4, large_kernel: int = 5) -> None:
        super().__init__()
        if conv.groups != 1 or isinstance(conv.padding, str):
            raise TrainerError("ExpandNets expands plain convs (groups=1, numeric padding)")
        if rate < 1:
            raise TrainerError(f"expansion rate must be >= 1, got {rate}")
        cin, cout = conv.in_channels, conv.out_channels
        ph, pw = as_pair(conv.padding)
        self.pad = (pw, pw, ph, ph)
        self.pad_mode = _PAD_MODES[conv.padding_mode]
        sizes = stack_kernels(*as_pair(conv.kernel_size), large=large_kernel)
        bias = conv.bias is not None
        self.expand = nn.Conv2d(cin, rate * cin, 1, bias=bias)
        widths = [rate * cin] * len(sizes) + [rate * cout]
        self.cores = nn.ModuleList(
            nn.Conv2d(
                widths[j], widths[j + 1], sizes[j], stride=conv.stride if j == len(sizes) - 1 else 1,  # type: ignore[arg-type]
                dilation=conv.dilation, bias=bias,  # type: ignore[arg-type]
            )
            for j in range(len(sizes))
        )
        self.project = nn.Conv2d(rate * cout, cout, 1, bias=bias)

    @property
    def padding_mode(self) -> str:
        """The torch ``padding_mode`` name of ``pad_mode`` (what the contracted conv is built with)."""
        return {v: k for k, v in _PAD_MODES.items()}[self.pad_mode]

    def layers(self) -> list[nn.Conv2d]:
        """The chain, input to output."""
        return [self.expand, *cast(list[nn.Conv2d], list(self.cores)), self.project]

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, mode=self.pad_mode)
        for layer in self.layers():
            x = layer(x)
        return x


def make_conv(
    path: str,
    overrides: Overrides,
    cin: int,
    cout: int,
    kernel: tuple[int, int],
    stride: int = 1,
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    bias: bool = True,
) -> nn.Module:
    """One convolution, or its low-rank / expanded form when ``overrides[path]`` asks for it."""
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=bias)
    spec = overrides.get(path)
    if not spec:
        return conv
    if "rank" in spec:
        return LowRankConv2d(conv, int(spec["rank"]))
    if "expand" in spec:
        return ExpandedConv(conv, int(spec["expand"]))
    raise TrainerError(f"arch convs[{path!r}]: unknown override {spec!r}")


class Downsampler(nn.Module):
    """concat(conv3×3 stride 2, maxpool 2×2) -> BN -> ReLU; halves H and W."""

    def __init__(self, path: str, overrides: Overrides, cin: int, cconv: int) -> None:
        super().__init__()
        self.conv = make_conv(f"{path}.conv", overrides, cin, cconv, (3, 3), stride=2, padding=(1, 1))
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(cin + cconv, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        # [N, Cc, H/2, W/2] ++ [N, Ci, H/2, W/2] -> [N, Ci+Cc, H/2, W/2]
        return torch.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class NonBottleneck1D(nn.Module):
    """ERFNet's residual block of factorised (3×1, 1×3) convolutions, the second pair dilated."""

    def __init__(
        self, path: str, overrides: Overrides, ch: int, mid: list[int], dilation: int, dropout: float
    ) -> None:
        super().__init__()
        m1, m2, m3 = (int(m) for m in mid)
        d = int(dilation)
        self.conv3x1_1 = make_conv(f"{path}.conv3x1_1", overrides, ch, m1, (3, 1), padding=(1, 0))
        self.conv1x3_1 = make_conv(f"{path}.conv1x3_1", overrides, m1, m2, (1, 3), padding=(0, 1))
        self.bn1 = nn.BatchNorm2d(m2, eps=1e-3)
        self.conv3x1_2 = make_conv(
            f"{path}.conv3x1_2", overrides, m2, m3, (3, 1), padding=(d, 0), dilation=(d, 1)
        )
        self.conv1x3_2 = make_conv(
            f"{path}.conv1x3_2", overrides, m3, ch, (1, 3), padding=(0, d), dilation=(1, d)
        )
        self.bn2 = nn.BatchNorm2d(ch, eps=1e-3)
        # Dropout2d drops whole channels, as in the paper; p=0 keeps the module (MC dropout toggles it).
        self.drop = nn.Dropout2d(float(dropout))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.conv3x1_1(x))
        y = torch.relu(self.bn1(self.conv1x3_1(y)))
        y = torch.relu(self.conv3x1_2(y))
        y = self.drop(self.bn2(self.conv1x3_2(y)))
        return torch.relu(y + x)


class Upsampler(nn.Module):
    """ConvTranspose 3×3 stride 2 -> BN -> ReLU; doubles H and W exactly."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn(self.deconv(x)))


class OutputConv(nn.Module):
    """ConvTranspose 2×2 stride 2 to class logits at the input resolution."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(cin, classes, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.deconv(x)  # type: ignore[no-any-return]


def build_block(i: int, block: dict[str, Any], overrides: Overrides) -> nn.Module:
    """The module for block ``i`` of an arch block list."""
    path = f"blocks.{i}"
    kind = block["type"]
    if kind == "down":
        return Downsampler(path, overrides, int(block["in"]), int(block["conv"]))
    if kind == "nb1d":
        return NonBottleneck1D(
            path, overrides, int(block["ch"]), block["mid"], int(block.get("dilation", 1)),
            float(block.get("dropout", 0.0)),
        )
    if kind == "up":
        return Upsampler(int(block["in"]), int(block["out"]))
    if kind == "out":
        return OutputConv(int(block["in"]), int(block["out"]))
    raise TrainerError(f"arch block {i}: unknown type {kind!r}")


class ERFNet(nn.Module):
    """One ensemble member: normalised images -> (logits, pooled features).

    Args:
        blocks: the member's block list (``arch["blocks"]``).
        feature_taps: indices of blocks whose outputs are globally average-pooled and concatenated.
        overrides: ``arch["convs"]`` (low-rank / expanded convolutions by module path).
    """

    def __init__(
        self, blocks: list[dict[str, Any]], feature_taps: list[int], overrides: Overrides | None = None
    ) -> None:
        super().__init__()
        overrides = overrides or {}
        self.blocks = nn.ModuleList(build_block(i, b, overrides) for i, b in enumerate(blocks))
        self.feature_taps = [int(t) for t in feature_taps]
        self.feature_dim = sum(block_out_channels(blocks[t]) for t in self.feature_taps)
        unknown = set(overrides) - {name for name, _ in self.named_modules()}
        if unknown:
            raise TrainerError(f"arch convs name modules that do not exist: {sorted(unknown)}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [N, 3, H, W] normalised -> (logits [N, C, H, W], features [N, D])."""
        pooled: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.feature_taps:
                pooled.append(x.mean(dim=(2, 3)))  # [N, Ci]
        return x, torch.cat(pooled, dim=1)  # [N, C, H, W], [N, D]
