"""ExpandNets: the expanded chain contracts exactly, padding and biases included."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from avminer.errors import TrainerError
from avminer.models import build_ensemble, erfnet, erfnet_arch, load_ensemble, save_ensemble
from avminer.trainer.expandnet import (
    ExpandedConv,
    contract,
    contract_ensemble,
    contraction_error,
    expand_model,
    stack_kernels,
)

M = TypeVar("M", bound=nn.Module)


def randomise(module: M, seed: int = 0, std: float = 0.3) -> M:
    """Every parameter random, biases included (trained nets have nonzero biases everywhere).

    Kernels are N(0, 1/fan_in) so activations stay of order one through the chain, as in a trained net;
    biases and other vectors are N(0, std²).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            scale = p[0].numel() ** -0.5 if p.dim() > 1 else std
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


CASES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=1, stride=2),
    dict(kernel_size=(3, 1), padding=(1, 0)),
    dict(kernel_size=(1, 3), padding=(0, 1)),
    dict(kernel_size=(3, 1), padding=(4, 0), dilation=(4, 1)),
    dict(kernel_size=(1, 3), padding=(0, 2), dilation=(1, 2), stride=(1, 2)),
    dict(kernel_size=3, padding=2, dilation=2, stride=2),
    dict(kernel_size=5, padding=2),  # a stack of two 3×3
    dict(kernel_size=7, padding=3, stride=2, dilation=2),  # three 3×3, dilated, strided
    dict(kernel_size=(5, 1), padding=(2, 0)),
    dict(kernel_size=6, padding=1, stride=3),  # even: 3×3, 3×3, 2×2
    dict(kernel_size=3, padding=0),
    dict(kernel_size=3, padding=1, bias=False),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=(3, 5), padding=(1, 2), padding_mode="replicate"),
]


@pytest.mark.parametrize("spec", CASES, ids=[str(c) for c in CASES])
def test_contraction_is_exact(spec: dict[str, object]) -> None:
    conv = nn.Conv2d(3, 4, **spec)  # type: ignore[arg-type]
    expanded = randomise(ExpandedConv(conv, rate=4)).double()
    compact = contract(expanded)
    assert compact.weight.shape == conv.weight.shape and compact.stride == conv.stride
    assert compact.padding == conv.padding and compact.dilation == conv.dilation
    x = torch.randn(2, 3, 15, 17, dtype=torch.float64)
    with torch.no_grad():
        out = expanded(x)
        assert out.shape == conv.double()(x).shape
        assert (out - compact(x)).abs().max() <= 1e-10
    # float32: the same contraction, only round-off left
    expanded32 = expanded.float()
    with torch.no_grad():
        assert (expanded32(x.float()) - contract(expanded32)(x.float())).abs().max() <= 1e-5


@settings(max_examples=30, deadline=None)
@given(
    kh=st.integers(1, 7), kw=st.integers(1, 7), stride=st.integers(1, 3), dilation=st.integers(1, 3),
    ph=st.integers(0, 4), pw=st.integers(0, 4), rate=st.integers(1, 4), seed=st.integers(0, 2**31 - 1),
)
def test_contraction_is_exact_for_any_shape(
    kh: int, kw: int, stride: int, dilation: int, ph: int, pw: int, rate: int, seed: int
) -> None:
    conv = nn.Conv2d(2, 3, (kh, kw), stride=stride, padding=(ph, pw), dilation=dilation)
    expanded = randomise(ExpandedConv(conv, rate=rate), seed).double()
    x = torch.randn(1, 2, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert (expanded(x) - contract(expanded)(x)).abs().max() <= 1e-10


def test_padding_the_inner_layer_instead_would_not_be_exact() -> None:
    # Why ExpandedConv pads once, on the input: with a biased 1×1 in front, zero-padding the k×k layer's
    # input differs from the compact conv at the border (it sees 0 where the compact conv sees the bias).
    expanded = randomise(ExpandedConv(nn.Conv2d(3, 4, 3, padding=1), rate=2)).double()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    core = expanded.layers()[1]
    with torch.no_grad():
        naive = expanded.project(F.conv2d(expanded.expand(x), core.weight, core.bias, padding=1))
        diff = (naive - contract(expanded)(x)).abs()
    assert diff[..., 1:-1, 1:-1].max() <= 1e-10  # the interior agrees
    assert diff[..., 0, :].max() > 1e-3  # the border does not


def test_one_expanded_conv_for_arch_and_trainer() -> None:
    # The arch's {"expand": r} override and expand_model build the same module, so one contract serves both.
    from avminer.trainer import expandnet

    assert expandnet.ExpandedConv is erfnet.ExpandedConv
    assert not hasattr(erfnet, "ExpandedConv2d")
    with pytest.raises(TrainerError, match="not an expanded conv"):
        contract(nn.Sequential(nn.Conv2d(3, 4, 1)))


def test_arch_built_expanded_ensemble_contracts_within_float32_round_off() -> None:
    """Every ERFNet conv expanded through the arch (biases, padding, dilation, stride), then contracted."""
    arch = erfnet_arch(width=0.25, members=2, dropout=(0.0, 0.0))
    member = build_ensemble(arch).members[0]
    convs = [n for n, m in member.named_modules() if type(m) is nn.Conv2d and m.kernel_size != (1, 1)]
    arch["convs"] = {name: {"expand": 2} for name in convs}
    model = build_ensemble(arch, seed=0)
    assert all(isinstance(model.members[0].get_submodule(n), ExpandedConv) for n in convs)
    randomise(model, std=0.1)  # nonzero biases on every layer of every chain
    model.eval()
    compact = contract_ensemble(model)
    assert compact.arch["convs"] == {}
    assert not any(isinstance(m, ExpandedConv) for m in compact.modules())
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(5)) * 255
    assert contraction_error(model, compact, x) <= 1e-5
    model64 = model.double()
    assert contraction_error(model64, contract_ensemble(model64), x.double()) <= 1e-10


def test_stack_kernels() -> None:
    assert stack_kernels(3, 3) == [(3, 3)]
    assert stack_kernels(3, 1) == [(3, 1)]
    assert stack_kernels(5, 5) == [(3, 3), (3, 3)]
    assert stack_kernels(7, 1) == [(3, 1), (3, 1), (3, 1)]
    assert stack_kernels(5, 3) == [(3, 3), (3, 1)]
    assert stack_kernels(6, 6) == [(3, 3), (3, 3), (2, 2)]


def test_expanded_ensemble_contracts_to_the_compact_arch(tmp_path: Path) -> None:
    arch = erfnet_arch(width=0.25, members=2, dropout=(0.0, 0.0))
    compact_params = sum(p.numel() for p in build_ensemble(arch).parameters())
    model = build_ensemble(arch, seed=0)
    names = expand_model(model, rate=4, generator=torch.Generator().manual_seed(0))
    assert len(names) == 2 * (3 + 4 * 17)  # per member: 3 downsampler convs, 4 per non-bottleneck-1D
    assert sum(p.numel() for p in model.parameters()) > 10 * compact_params
    randomise(model, std=0.1)  # biases on every layer of every chain, BN shifts, ...
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.add_(1.0)
                m.running_var = torch.full_like(m.weight, 1.5)
    model.eval()
    compact = contract_ensemble(model)
    assert compact.arch == arch | {"convs": {}} or compact.arch["convs"] == {}
    assert sum(p.numel() for p in compact.parameters()) == compact_params
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(3)) * 255
    assert contraction_error(model, compact, x) <= 1e-5
    model64 = model.double()
    assert contraction_error(model64, contract_ensemble(model64), x.double()) <= 1e-10
    reloaded = load_ensemble(save_ensemble(compact, None, tmp_path / "model.pt"))
    assert contraction_error(compact, reloaded, x) == 0.0
