"""ExpandNets: train a compact net through a linear over-parameterisation, then contract it exactly.

Guo, Alvarez, Salzmann, "ExpandNets: Linear Over-parameterization to Train Compact Convolutional
Networks", NeurIPS 2020. Every ``kh×kw`` conv ``I -> O`` of the compact net is replaced, for training
only, by a chain of linear layers with no nonlinearity in between, at expansion rate ``r`` (4 here):

- ``1×1`` conv ``I -> r·I``, then
- the ``kh×kw`` conv ``r·I -> r·O`` (kernels with a side >= 5 become a stack of 3×3-or-smaller convs
  ``r·I -> r·I -> ... -> r·O`` whose sizes add up to the original receptive field), then
- ``1×1`` conv ``r·O -> O``.

The chain is affine, so after training it contracts algebraically into one ``kh×kw`` conv of the
original shape (:func:`contract`): the kernels compose by full 2-D convolution of the kernels, and each
bias is pushed through the layers after it (a constant feature map times a kernel is its sum).

Padding and biases. Zero-padding the k×k layer's input is *not* the same as zero-padding the compact
conv's input once the 1×1 before it has a bias: the expanded net would see zeros at the border where
the contracted one sees the bias propagated through the 1×1. :class:`ExpandedConv` therefore pads once,
on the input, with the conv's own padding and padding mode, and runs every layer of the chain as a valid
(unpadded) convolution. That is exactly what the contracted conv computes, for every bias and at every
border pixel; stride sits on the last spatial layer and dilation on every spatial layer (composition
commutes with dilation and a strided last layer samples the composite at the strided positions).

:class:`ExpandedConv` lives in :mod:`avminer.models.erfnet`, so an arch can name it too
(``arch["convs"][path] = {"expand": r}`` builds the same chain); :func:`expand_model` swaps it in for
every conv of a built net, :func:`contract_ensemble` folds an ensemble back to its compact arch.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avminer.errors import TrainerError
from avminer.models.arch import validate_arch
from avminer.models.ensemble import Ensemble
from avminer.models.erfnet import ExpandedConv, as_pair, stack_kernels

__all__ = [
    "ExpandedConv", "compose_chain", "contract", "contract_ensemble", "contract_model", "contraction_error",
    "expand_model", "stack_kernels",
]


def _compose(
    weight: Tensor, bias: Tensor, layer_w: Tensor, layer_b: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(kernel, bias) of ``layer ∘ current`` for valid stride-1 convs with a common dilation.

    ``weight [C1, C0, a1, b1]`` then ``layer_w [C2, C1, a2, b2]`` -> ``[C2, C0, a1+a2-1, b1+b2-1]``: the
    composite kernel is the full 2-D *convolution* of the kernels, ``K[u] = Σ_v W2[v]·W1[u-v]``, which is
    a cross-correlation with the flipped second kernel over the first one padded by ``a2-1, b2-1``.
    """
    a2, b2 = layer_w.shape[2], layer_w.shape[3]
    # Treat the C0 input channels as a batch of C1-channel images: [C0, C1, a1, b1] -> [C0, C2, ...].
    composed = F.conv2d(weight.transpose(0, 1), layer_w.flip(2, 3), padding=(a2 - 1, b2 - 1)).transpose(0, 1)
    # A constant map c through a valid conv is the constant (Σ_spatial W)·c.
    new_bias = layer_w.sum(dim=(2, 3)) @ bias  # [C2, C1] @ [C1]
    if layer_b is not None:
        new_bias = new_bias + layer_b
    return composed, new_bias


def compose_chain(layers: list[nn.Conv2d]) -> tuple[Tensor, Tensor, tuple[int, int], tuple[int, int]]:
    """Contract a chain of valid convs into one: (kernel float64, bias float64, stride, dilation).

    Every spatial layer shares one dilation, and one layer may stride if only 1×1 layers follow it
    (they are pointwise, so subsampling commutes with them).

    Raises:
        TrainerError: the chain breaks those rules (or is padded, grouped).
    """
    spatial = [j for j, layer in enumerate(layers) if as_pair(layer.kernel_size) != (1, 1)]
    dilations = {as_pair(layers[j].dilation) for j in spatial} or {(1, 1)}
    if len(dilations) != 1:
        raise TrainerError(f"cannot contract convs with different dilations {sorted(dilations)}")
    stride = (1, 1)
    first = layers[0]
    weight = torch.zeros(first.in_channels, first.in_channels, 1, 1, dtype=torch.float64)
    weight[:, :, 0, 0] = torch.eye(first.in_channels, dtype=torch.float64)
    bias = torch.zeros(first.in_channels, dtype=torch.float64)
    for j, layer in enumerate(layers):
        if layer.groups != 1 or any(as_pair(layer.padding)):
            raise TrainerError("contract: chain layers must be ungrouped and unpadded (pad once, on the input)")
        if as_pair(layer.stride) != (1, 1):
            if stride != (1, 1) or any(k > j for k in spatial):
                raise TrainerError("contract: only one layer may stride, and only 1×1 layers may follow it")
            stride = as_pair(layer.stride)
        layer_b = layer.bias.detach().double() if layer.bias is not None else None
        weight, bias = _compose(weight, bias, layer.weight.detach().double(), layer_b)
    return weight, bias, stride, dilations.pop()


def contract(module: nn.Module) -> nn.Conv2d:
    """The compact conv an :class:`ExpandedConv` computes, exactly (float64 algebra, cast back)."""
    if not isinstance(module, ExpandedConv):
        raise TrainerError(f"contract: {type(module).__name__} is not an expanded conv")
    layers = module.layers()
    pw, _, ph, _ = module.pad
    padding, mode = (ph, pw), module.padding_mode
    weight, bias, stride, dilation = compose_chain(layers)
    dtype = layers[-1].weight.dtype
    out = nn.Conv2d(
        weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), stride, padding, dilation,  # type: ignore[arg-type]
        bias=layers[-1].bias is not None, padding_mode=mode,  # type: ignore[arg-type]
    ).to(device=layers[-1].weight.device, dtype=dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if out.bias is not None:
            out.bias.copy_(bias)
    return out


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def expand_model(
    model: nn.Module, rate: int = 4, large_kernel: int = 5, generator: torch.Generator | None = None
) -> list[str]:
    """Replace, in place, every plain conv with a kernel larger than 1×1 by its :class:`ExpandedConv`.

    The new layers are drawn fresh, N(0, 1/fan_in) (variance-preserving for a linear chain), biases zero:
    ExpandNets trains the expanded net from scratch. Transposed convs are left as they are.

    Returns:
        The module paths that were expanded.
    """
    names = [
        name for name, m in model.named_modules()
        if type(m) is nn.Conv2d and m.groups == 1 and as_pair(m.kernel_size) != (1, 1)
    ]
    for name in names:
        conv = model.get_submodule(name)
        expanded = ExpandedConv(conv, rate, large_kernel).to(conv.weight.device)  # type: ignore[arg-type]
        with torch.no_grad():
            for layer in expanded.layers():
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(fan_in))
                if layer.bias is not None:
                    layer.bias.zero_()
        _replace(model, name, expanded)
    return names


def contract_model(model: nn.Module) -> list[str]:
    """Replace, in place, every expanded conv by its exact compact conv; returns the paths contracted."""
    names = [name for name, m in model.named_modules() if isinstance(m, ExpandedConv)]
    for name in names:
        _replace(model, name, contract(model.get_submodule(name)))
    return names


def contract_ensemble(model: Ensemble) -> Ensemble:
    """A compact ensemble equal to an expanded one: contracted convs, ``expand`` overrides dropped.

    Works for ensembles expanded by :func:`expand_model` and for arch-built ``{"expand": r}`` ones; the
    result rebuilds from its ``arch`` (the compact layout) and keeps the input's train/eval mode.
    """
    compact = copy.deepcopy(model)
    contract_model(compact)
    arch = validate_arch(model.arch)
    arch["convs"] = {name: spec for name, spec in arch["convs"].items() if "expand" not in spec}
    out = Ensemble(arch).to(next(model.parameters()).dtype)
    out.load_state_dict(compact.state_dict())
    out.train(model.training)
    return out


def contraction_error(expanded: nn.Module, contracted: nn.Module, inputs: Tensor) -> float:
    """Max |expanded(x) - contracted(x)| over the outputs (both put in eval mode, no grad)."""
    expanded.eval()
    contracted.eval()
    with torch.no_grad():
        a, b = expanded(inputs), contracted(inputs)
    if isinstance(a, tuple):
        return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
    return float((a - b).abs().max())
