"""Labels in another taxonomy: the group loss is the NLL of the summed probability, and only that."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avminer.models import build_ensemble, erfnet_arch
from avminer.taxonomy import CAMVID, CAMVID_TO_IDD_LEVEL1, IDD_LEVEL1
from avminer.trainer.coarse import COARSE_BASE, coarse_class_weights, encode_coarse, group_log_probs
from avminer.trainer.dpe import dpe_loss

MAP = CAMVID_TO_IDD_LEVEL1


def _model():
    return build_ensemble(erfnet_arch(width=0.25, num_classes=11, members=2), seed=0)


def test_encoding_keeps_fine_ids_apart_and_void_void() -> None:
    idd = np.array([[0, 6, 7, 255]], np.uint8)
    assert encode_coarse(idd, MAP, CAMVID.void).tolist() == [[COARSE_BASE, COARSE_BASE + 6, 11, 11]]


def test_a_camvid_only_batch_gives_todays_loss() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 11, 8, 10, generator=g)
    target = torch.randint(0, 12, (3, 8, 10), generator=g)
    weights = torch.rand(11, generator=g) + 0.5
    model = _model()
    for w in (None, weights):
        old = dpe_loss(model, logits, target, 1e-3, w, 11)
        new = dpe_loss(model, logits, target, 1e-3, w, 11, coarse=MAP, group_weights=torch.ones(7))
        for a, b in zip(old, new, strict=True):
            assert torch.equal(a, b)


def test_group_log_probs_are_logs_of_summed_probabilities() -> None:
    logits = torch.randn(2, 11, 4, 5, dtype=torch.float64)
    expected = torch.from_numpy(MAP.map_probs(torch.softmax(logits, 1).numpy().astype(np.float64), axis=1))
    torch.testing.assert_close(group_log_probs(logits, MAP).exp(), expected.to(torch.float64), atol=1e-6, rtol=1e-5)


def test_gradient_flows_only_through_the_group_sums() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 1, 11, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
    group = IDD_LEVEL1.index("roadside_objects")  # pole, sign_symbol, fence
    target = torch.full((1, 1, 1), COARSE_BASE + group, dtype=torch.int64)
    _, ce, _ = dpe_loss(_model(), logits, target, beta=0.0, coarse=MAP)
    (grad,) = torch.autograd.grad(ce, logits)
    p = torch.softmax(logits.detach()[0, 0, :, 0, 0], 0)
    members = [CAMVID.index(c) for c in MAP.groups["roadside_objects"]]
    in_group = torch.zeros(11, dtype=torch.bool)
    in_group[members] = True
    pg = p[in_group].sum()
    expected = p - torch.where(in_group, p / pg, torch.zeros_like(p))
    torch.testing.assert_close(grad[0, 0, :, 0, 0], expected)
    # Reshuffling probability mass inside the group changes nothing: the loss only sees the group total.
    shuffled = logits.detach().clone()
    shuffled[0, 0, members] = shuffled[0, 0, members].flip(0)
    _, ce2, _ = dpe_loss(_model(), shuffled, target, beta=0.0, coarse=MAP)
    assert ce2.item() == pytest.approx(ce.item(), rel=1e-12)
    assert ce.item() == pytest.approx(-float(torch.log(pg)), rel=1e-9)


def test_mixed_batch_pools_fine_and_coarse_pixels() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 2, 11, 4, 4, generator=g, dtype=torch.float64)
    fine = torch.randint(0, 11, (1, 4, 4), generator=g)
    coarse = COARSE_BASE + torch.randint(0, 7, (1, 4, 4), generator=g)
    target = torch.cat([fine, coarse])
    _, ce, _ = dpe_loss(_model(), logits, target, beta=0.0, coarse=MAP)
    fine_nll = -torch.log_softmax(logits[:, 0], 1).gather(1, fine.expand(2, 4, 4)[:, None])[:, 0]  # [K, H, W]
    glp = group_log_probs(logits[:, 1], MAP)  # [K, G, H, W]
    coarse_nll = -glp.gather(1, (coarse - COARSE_BASE).expand(2, 4, 4)[:, None])[:, 0]
    expected = (fine_nll.sum() + coarse_nll.sum()) / 32  # Σ members, mean over the 32 labeled pixels
    assert ce.item() == pytest.approx(expected.item(), rel=1e-9)


def test_coarse_class_weights_count_groups_only() -> None:
    labels = np.array([3, 3, COARSE_BASE, COARSE_BASE, COARSE_BASE, COARSE_BASE + 6, 11], np.uint8)
    w = coarse_class_weights(labels, 7)
    assert w.shape == (7,) and w[0] < w[6] < w[1]
