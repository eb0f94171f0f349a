"""Deep Probabilistic Ensembles regulariser: what is provably true of Ω, checked on random weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from avminer.errors import TrainerError
from avminer.models import build_ensemble, erfnet_arch, weight_priors
from avminer.trainer.dpe import dpe_loss, dpe_regularizer, ensemble_cross_entropy, kl_omega

members = st.integers(min_value=2, max_value=6)
sizes = st.integers(min_value=1, max_value=40)
prior_vars = st.floats(min_value=1e-3, max_value=2.0)
prior_means = st.floats(min_value=-1.0, max_value=1.0)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def at_prior(k: int, n: int, mean: float, var: float, seed: int) -> torch.Tensor:
    """[K, n] weights whose across-member mean is exactly ``mean`` and population variance exactly ``var``."""
    z = torch.randn(k, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = (z - z.mean(0)) / z.std(0, unbiased=False)
    return mean + math.sqrt(var) * z


@settings(max_examples=60, deadline=None)
@given(members, sizes, prior_means, prior_vars, st.floats(min_value=0.01, max_value=3.0), seeds)
def test_centered_omega_is_a_nonnegative_kl(k: int, n: int, mu_p: float, var_p: float, spread: float, seed: int) -> None:
    w = torch.randn(k, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * spread
    omega = kl_omega(w, mu_p, var_p, centered=True, eps=0.0)
    assert torch.isfinite(omega)
    assert omega.item() >= -1e-9 * n


@settings(max_examples=60, deadline=None)
@given(members, sizes, prior_means, prior_vars, seeds)
def test_omega_vanishes_and_is_stationary_at_the_prior(k: int, n: int, mu_p: float, var_p: float, seed: int) -> None:
    w = at_prior(k, n, mu_p, var_p, seed).requires_grad_(True)
    omega = kl_omega(w, mu_p, var_p, centered=True, eps=0.0)
    assert abs(omega.item()) < 1e-8 * n
    (grad,) = torch.autograd.grad(omega, w)
    assert grad.abs().max().item() < 1e-6 / var_p


@settings(max_examples=40, deadline=None)
@given(members, sizes, prior_means, prior_vars, seeds)
def test_centering_only_drops_the_constant(k: int, n: int, mu_p: float, var_p: float, seed: int) -> None:
    w = torch.randn(k, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    raw = kl_omega(w, mu_p, var_p, centered=False, eps=0.0)
    centered = kl_omega(w, mu_p, var_p, centered=True, eps=0.0)
    assert raw.item() - centered.item() == pytest.approx(n * (1 + math.log(var_p)), rel=1e-9, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(members, sizes, seeds)
def test_omega_ignores_member_order(k: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, n, generator=g, dtype=torch.float64)
    perm = torch.randperm(k, generator=g)
    # Permuting members reorders the float64 sums behind the mean and variance: equal up to rounding
    # (hypothesis found a 1.06e-12 relative difference where near-equal members make Omega ~1e8).
    assert kl_omega(w[perm], 0.0, 0.5).item() == pytest.approx(kl_omega(w, 0.0, 0.5).item(), rel=1e-9)


def test_one_member_is_refused() -> None:
    with pytest.raises(TrainerError, match="at least 2 members"):
        kl_omega(torch.zeros(1, 3), 0.0, 1.0)


def test_priors_follow_the_paper() -> None:
    model = build_ensemble(erfnet_arch(width=0.25, members=2), seed=0)
    priors = weight_priors(model.members[0])
    conv = model.members[0].blocks[2].conv3x1_1  # [out, in, 3, 1]
    assert priors["blocks.2.conv3x1_1.weight"] == (0.0, pytest.approx(2.0 / (conv.out_channels * 3 * 1)))
    deconv = model.members[0].blocks[-1].deconv  # ConvTranspose2d: [in, out, 2, 2]
    assert priors[f"blocks.{len(model.members[0].blocks) - 1}.deconv.weight"][1] == pytest.approx(
        2.0 / (deconv.out_channels * 4)
    )
    assert priors["blocks.0.bn.weight"] == (1.0, 0.01)
    assert not any(name.endswith("bias") for name in priors)


def test_gradients_reach_every_member() -> None:
    model = build_ensemble(erfnet_arch(width=0.25, members=3), seed=0)
    omega = dpe_regularizer(model)
    assert torch.isfinite(omega) and omega.item() >= 0
    omega.backward()  # type: ignore[no-untyped-call]
    for member in model.members:
        names = weight_priors(member)
        for name, p in member.named_parameters():
            if name in names:
                assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_cross_entropy_sums_member_means() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 11, 4, 5, generator=g)
    target = torch.randint(0, 12, (2, 4, 5), generator=g)  # 11 = void
    weights = torch.rand(11, generator=g) + 0.5
    expected = sum(F.cross_entropy(logits[k], target, weight=weights, ignore_index=11) for k in range(3))
    torch.testing.assert_close(ensemble_cross_entropy(logits, target, weights), expected)
    all_void = torch.full((2, 4, 5), 11)
    assert ensemble_cross_entropy(logits, all_void).item() == 0.0


def test_loss_is_ce_plus_beta_omega() -> None:
    model = build_ensemble(erfnet_arch(width=0.25, members=2), seed=0)
    x = torch.rand(1, 3, 32, 48) * 255
    target = torch.randint(0, 11, (1, 32, 48))
    logits, _ = model.member_outputs(x)
    loss, ce, omega = dpe_loss(model, logits, target, beta=1e-3)
    torch.testing.assert_close(loss, ce + 1e-3 * omega)
    loss0, ce0, omega0 = dpe_loss(model, logits, target, beta=0.0)
    assert omega0.item() == 0.0 and loss0.item() == ce0.item()
