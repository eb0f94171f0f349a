"""Compression-aware training: singular value thresholding, energy ranks, the exact SVD split."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from avminer.errors import TrainerError
from avminer.models import build_ensemble, erfnet_arch, load_ensemble, save_ensemble
from avminer.models.erfnet import LowRankConv2d
from avminer.trainer.lowrank import (
    NuclearNorm,
    conv_matrix,
    energy_rank,
    lowrank_ensemble,
    saves_parameters,
    singular_value_threshold,
    split_conv,
)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.integers(1, 9), st.floats(0.0, 4.0), st.integers(0, 2**31 - 1))
def test_svt_shrinks_every_singular_value_by_t(o: int, p: int, t: float, seed: int) -> None:
    m = torch.randn(o, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    s = torch.linalg.svdvals(m)
    out = singular_value_threshold(m, t)
    assert torch.allclose(torch.linalg.svdvals(out), torch.clamp(s - t, min=0), atol=1e-10)
    assert torch.linalg.matrix_rank(out, atol=1e-9) == int((s > t + 1e-9).sum())


def test_svt_is_batched() -> None:
    m = torch.randn(3, 4, 6, dtype=torch.float64)
    batched = singular_value_threshold(m, 0.5)
    for i in range(3):
        assert torch.allclose(batched[i], singular_value_threshold(m[i], 0.5), atol=1e-12)


def test_energy_rank() -> None:
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert energy_rank(s, 1.0) == 3  # every nonzero singular value
    assert energy_rank(s, 9 / 14) == 1
    assert energy_rank(s, 0.93) == 3  # 13/14 = 0.9286 < 0.93
    assert energy_rank(torch.zeros(3), 0.9) == 1
    with pytest.raises(TrainerError, match="energy"):
        energy_rank(s, 0.0)


CONVS = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 1), padding=(2, 0), dilation=(2, 1)),
    dict(kernel_size=(1, 3), padding=(0, 4), dilation=(1, 4)),
    dict(kernel_size=(3, 1), padding=(1, 0), bias=False),
]


@pytest.mark.parametrize("spec", CONVS)
def test_split_at_full_rank_reproduces_the_conv(spec: dict[str, object]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, **spec)  # type: ignore[arg-type]
    pair = split_conv(conv, min(conv_matrix(conv.weight).shape))
    assert isinstance(pair, LowRankConv2d)
    x = torch.randn(2, 6, 13, 11)
    with torch.no_grad():
        assert (conv(x) - pair(x)).abs().max() <= 1e-5


def test_split_of_a_low_rank_conv_is_exact_and_smaller() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 16, (3, 1), padding=(1, 0))
    with torch.no_grad():
        conv.weight.copy_((torch.randn(16, 2) @ torch.randn(2, 48) / 10).view_as(conv.weight))
    assert energy_rank(torch.linalg.svdvals(conv_matrix(conv.weight.detach())), 1.0) == 2
    assert saves_parameters(conv, 2)
    pair = split_conv(conv, 2)
    with torch.no_grad():
        x = torch.randn(1, 16, 9, 9)
        assert (conv(x) - pair(x)).abs().max() <= 1e-5
    assert sum(p.numel() for p in pair.parameters()) < sum(p.numel() for p in conv.parameters()) / 4


def test_nuclear_prox_lowers_ranks_and_the_ensemble_splits_exactly(tmp_path: Path) -> None:
    model = build_ensemble(erfnet_arch(width=0.25, members=2, dropout=(0.0, 0.0)), seed=0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    reg = NuclearNorm(model, weight=0.05)
    before = reg.penalty()
    reg.step(lr=1.0)  # one big proximal step: many singular values hit zero
    assert reg.penalty() < 0.7 * before
    model.eval()
    split, ranks = lowrank_ensemble(model, energy=1.0)
    assert split.arch["convs"] and all("rank" in spec for spec in split.arch["convs"].values())
    assert sum(p.numel() for p in split.parameters()) < sum(p.numel() for p in model.parameters())
    assert ranks.unit == "rank" and any(lr < full for lr, full in zip(ranks.learned[0], ranks.initial, strict=True))

    # Full energy keeps every nonzero singular value: the split net computes the same function (the
    # singular values the float32 prox left at round-off level, ~1e-7, are dropped: hence 1e-7, not 1e-12).
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(2)) * 255
    m64, s64 = copy.deepcopy(model).double(), lowrank_ensemble(copy.deepcopy(model).double(), energy=1.0)[0]
    with torch.no_grad():
        assert (m64(x.double())[0] - s64(x.double())[0]).abs().max() <= 1e-7
        p0, p1 = model(x)[0], split(x)[0]
    assert (p0 - p1).abs().max() <= 1e-5

    reloaded = load_ensemble(save_ensemble(split, None, tmp_path / "model.pt"))
    with torch.no_grad():
        assert torch.equal(reloaded(x)[0], p1)


def test_lowrank_refuses_an_already_split_net() -> None:
    arch = erfnet_arch(width=0.25, members=1)
    arch["convs"] = {"blocks.2.conv3x1_1": {"rank": 2}}
    with pytest.raises(TrainerError, match="plain convs"):
        lowrank_ensemble(build_ensemble(arch))
