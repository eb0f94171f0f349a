"""Learning the number of neurons: the proximal operators, the regulariser at work, physical pruning."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from avminer.errors import TrainerError
from avminer.models.arch import erfnet_arch
from avminer.models.ensemble import Ensemble, build_ensemble, load_ensemble, save_ensemble
from avminer.trainer.prune import (
    NeuronLayer,
    SparseGroupLasso,
    group_soft_threshold,
    neuron_layers,
    plot_layer_counts,
    prune_ensemble,
    soft_threshold,
    zero_neurons,
)


def randomised_ensemble(members: int = 2, seed: int = 0) -> Ensemble:
    """A tiny ensemble with nonzero biases, BN shifts and running statistics (what training leaves)."""
    model = build_ensemble(erfnet_arch(width=0.25, members=members, dropout=(0.0, 0.0)), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen) + (1.0 if "bn" in name and "weight" in name else 0.0))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean = 0.1 * torch.randn(m.num_features, generator=gen)
                m.running_var = torch.rand(m.num_features, generator=gen) + 0.5
    return model


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.floats(0.0, 3.0), st.integers(0, 2**31 - 1))
def test_group_soft_threshold_zeroes_short_groups_and_shortens_long_ones(g: int, p: int, t: float, seed: int) -> None:
    rows = torch.randn(g, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = group_soft_threshold(rows, t)
    norms, new = rows.norm(dim=1), out.norm(dim=1)
    short = norms <= t
    assert torch.all(out[short] == 0)
    assert torch.allclose(new[~short], norms[~short] - t, atol=1e-12)
    # Direction kept: shrinking only rescales each surviving row.
    cos = (out[~short] * rows[~short]).sum(1) / (new[~short] * norms[~short])
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-9)


def test_group_soft_threshold_is_the_prox() -> None:
    # prox_{t||.||}(v) minimises ||x - v||²/2 + t||x||: no random perturbation does better.
    gen = torch.Generator().manual_seed(3)
    v, t = torch.randn(1, 5, generator=gen, dtype=torch.float64), 0.7

    def objective(x: torch.Tensor) -> float:
        return float(0.5 * (x - v).pow(2).sum() + t * x.norm())

    best = objective(group_soft_threshold(v, t))
    for _ in range(200):
        assert objective(group_soft_threshold(v, t) + 1e-3 * torch.randn(1, 5, generator=gen, dtype=torch.float64)) >= best


def test_soft_threshold() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5])
    assert torch.equal(soft_threshold(x, 0.5), torch.tensor([-1.5, 0.0, 0.0, 0.0, 1.0]))


def test_prox_step_treats_conv_bias_and_batchnorm_as_one_group() -> None:
    conv, bn = nn.Conv2d(3, 4, (3, 1)), nn.BatchNorm2d(4)
    assert conv.bias is not None
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 0.01, 2.0, 0.02]))
        bn.bias.copy_(torch.tensor([0.5, 0.01, -1.0, 0.0]))
        conv.weight[1].mul_(0.01)
        conv.weight[3].mul_(0.01)
        conv.bias.copy_(torch.tensor([0.1, 0.001, 0.2, 0.0]))
    layer = NeuronLayer("c", 0, 0, 0, [conv.weight, conv.bias, bn.weight, bn.bias])
    assert layer.group_size == 9 + 1 + 2
    flat = torch.cat([conv.weight.reshape(4, -1), conv.bias[:, None], bn.weight[:, None], bn.bias[:, None]], 1)
    lr, lam, l1 = 0.1, 0.2, 0.05
    expected = group_soft_threshold(soft_threshold(flat, lr * l1), lr * lam * 12**0.5)
    SparseGroupLasso([layer], group=lam, l1=l1).step(lr)
    got = torch.cat([conv.weight.reshape(4, -1), conv.bias[:, None], bn.weight[:, None], bn.bias[:, None]], 1)
    assert torch.allclose(got, expected, atol=1e-7)
    assert layer.norms()[1] == 0 and layer.norms()[3] == 0 and layer.norms()[0] > 0


def _toy_run(group: float) -> tuple[float, torch.Tensor, float]:
    """Student conv with 8 neurons fitting a teacher with 2: SGD + proximal group lasso."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 1, 1))
    student = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        y = teacher(x)
    first = student[0]
    assert isinstance(first, nn.Conv2d) and first.bias is not None
    sgl = SparseGroupLasso([NeuronLayer("toy", 0, 0, 0, [first.weight, first.bias])], group=group)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    for _ in range(400):
        loss = (student(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sgl.after_step(opt)
    return float(loss.detach()), sgl.layers[0].norms(), float(y.var())


def test_group_lasso_drives_superfluous_neurons_to_exactly_zero() -> None:
    loss, norms, var = _toy_run(group=0.02)
    assert int((norms == 0).sum()) >= 5, norms  # the teacher needs 2 of the 8 neurons
    assert loss < 0.05 * var  # and the survivors still fit it
    _, dense_norms, _ = _toy_run(group=0.0)
    assert bool((dense_norms > 0).all())


def test_pruned_model_has_fewer_channels_and_the_same_outputs(tmp_path: Path) -> None:
    model = randomised_ensemble()
    layers = neuron_layers(model)
    rng = np.random.default_rng(0)
    dead = [(lay.member, lay.block, lay.slot, o) for lay in layers for o in range(lay.neurons) if rng.random() < 0.4]
    # One layer loses every neuron: it keeps a single zero channel.
    whole = layers[3]
    dead += [(whole.member, whole.block, whole.slot, o) for o in range(whole.neurons)]
    zero_neurons(model, dead)
    model.eval()
    pruned, counts = prune_ensemble(model)

    before = dict(model.named_parameters())
    after = dict(pruned.named_parameters())
    assert sum(p.numel() for p in after.values()) < 0.7 * sum(p.numel() for p in before.values())
    key = f"members.{whole.member}.{whole.name}.weight"
    assert after[key].shape[0] == 1 and before[key].shape[0] == whole.neurons
    assert counts.learned[0][3] == 1 and counts.initial[3] == whole.neurons
    assert len(counts.learned) == 2 and counts.learned[0] != counts.learned[1]  # members pruned differently
    assert 0.4 < counts.kept_fraction < 0.75

    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        (p0, f0), (p1, f1) = model(x), pruned(x)
    assert p0.shape == p1.shape and f0.shape == f1.shape
    assert (p0 - p1).abs().max() <= 1e-5 and (f0 - f1).abs().max() <= 1e-5  # float32 round-off only
    # In float64 the two are equal to round-off, in eval and in train mode (batch statistics).
    for train_mode in (False, True):
        m64, p64 = copy.deepcopy(model).double().train(train_mode), copy.deepcopy(pruned).double().train(train_mode)
        with torch.no_grad():
            l0, l1 = m64.member_outputs(x.double())[0], p64.member_outputs(x.double())[0]
        assert (l0 - l1).abs().max() <= 1e-9, train_mode

    # The pruned net rebuilds from its arch alone.
    path = save_ensemble(pruned, None, tmp_path / "model.pt")
    reloaded = load_ensemble(path)
    with torch.no_grad():
        assert torch.allclose(reloaded(x)[0], p1, atol=1e-6)


def test_pruning_live_neurons_changes_the_outputs() -> None:
    # The equality above is not vacuous: removing neurons that are not zero does change the outputs.
    model = randomised_ensemble(members=1).eval()
    pruned, counts = prune_ensemble(model, tol=1e9)
    assert set(counts.learned[0]) == {1}
    x = torch.rand(1, 3, 32, 48) * 255
    with torch.no_grad():
        assert not torch.allclose(model(x)[0], pruned(x)[0], atol=1e-4)


def test_prune_refuses_factorised_convs() -> None:
    arch = erfnet_arch(width=0.25, members=1)
    arch["convs"] = {"blocks.2.conv3x1_1": {"rank": 2}}
    with pytest.raises(TrainerError, match="pruning needs plain"):
        neuron_layers(build_ensemble(arch))


def test_plot_of_initial_vs_learned_neurons(tmp_path: Path) -> None:
    model = randomised_ensemble()
    zero_neurons(model, [(0, 2, 0, 0), (1, 2, 1, 3)])
    _, counts = prune_ensemble(model)
    path = plot_layer_counts(counts, tmp_path / "neurons.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert counts.as_dict()["initial"][0] == counts.as_dict()["learned"][0][0] + 1
