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

from collections import OrderedDict
from typing import Any

import torch
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


class ExpandedConv2d(nn.Sequential):
    """ExpandNets' expansion of a k×k conv: 1×1 (in -> r·in), k×k (r·in -> r·out), 1×1 (r·out -> out).

    Only the last layer has a bias, so zero padding of the k×k layer sees the same zeros the compact conv
    would see and the three contract exactly into one k×k conv (Guo, Alvarez, Salzmann, "ExpandNets:
    Linear Over-parameterization to Train Compact Convolutional Networks", NeurIPS 2020).
    """

    def __init__(self, conv: nn.Conv2d, rate: int) -> None:
        cin, cout = conv.in_channels, conv.out_channels
        expand = nn.Conv2d(cin, rate * cin, 1, bias=False)
        core = nn.Conv2d(
            rate * cin, rate * cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False  # type: ignore[arg-type]
        )
        project = nn.Conv2d(rate * cout, cout, 1, bias=conv.bias is not None)
        super().__init__(OrderedDict(expand=expand, core=core, project=project))


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
        return ExpandedConv2d(conv, int(spec["expand"]))
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
