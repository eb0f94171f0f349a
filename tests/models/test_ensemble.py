"""The ERFNet-style ensemble: output contract, arch round trips, variants, ONNX export with dynamic batch."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from avminer.errors import TrainerError
from avminer.models import (
    build_ensemble,
    erfnet_arch,
    load_ensemble,
    save_ensemble,
    set_mc_dropout,
    validate_arch,
)
from avminer.models.arch import feature_dim
from avminer.models.erfnet import ExpandedConv, LowRankConv2d

H, W = 32, 48


def tiny_arch(members: int = 2, dropout: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
    return erfnet_arch(width=0.25, members=members, dropout=dropout)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, H, W, generator=torch.Generator().manual_seed(seed)) * 255


def test_forward_contract() -> None:
    model = build_ensemble(tiny_arch(members=3), seed=0).eval()
    with torch.no_grad():
        probs, feats = model(images(2))
    assert probs.shape == (3, 2, 11, H, W)
    assert feats.shape == (2, model.feature_dim) == (2, feature_dim(model.arch))
    assert probs.dtype == feats.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=2), torch.ones(3, 2, H, W))
    # features are the mean of the members' pooled features
    _, member_feats = model.member_outputs(images(2))
    torch.testing.assert_close(feats, member_feats.mean(0).detach())


def test_members_differ_and_seed_repeats() -> None:
    a = build_ensemble(tiny_arch(), seed=1).eval()
    b = build_ensemble(tiny_arch(), seed=1).eval()
    with torch.no_grad():
        pa, _ = a(images(1))
        pb, _ = b(images(1))
    torch.testing.assert_close(pa, pb)
    assert not torch.allclose(pa[0], pa[1])  # independent prior draws per member


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = build_ensemble(tiny_arch(), seed=0).eval()
    path = save_ensemble(model, None, tmp_path / "model.pt")
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"arch", "state_dict"}
    again = load_ensemble(path)
    assert not again.training
    with torch.no_grad():
        torch.testing.assert_close(model(images(2)), again(images(2)))


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="no such model file"):
        load_ensemble(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(TrainerError, match="arch"):
        load_ensemble(bad)
    model = build_ensemble(tiny_arch(), seed=0)
    other = tiny_arch()
    other["blocks"][-1]["in"] = 5  # no longer chains
    with pytest.raises(TrainerError, match="expects 5 input channels"):
        validate_arch(other)
    torch.save({"arch": tiny_arch(members=3), "state_dict": model.state_dict()}, bad)
    with pytest.raises(TrainerError, match="do not match"):
        load_ensemble(bad)


def test_arch_variants_rebuild(tmp_path: Path) -> None:
    """Per-member channel counts, low-rank and expanded convs all rebuild from arch alone."""
    arch = tiny_arch()
    nb = next(i for i, b in enumerate(arch["blocks"]) if b["type"] == "nb1d")
    arch["member_blocks"] = [list(arch["blocks"]), [dict(b) for b in arch["blocks"]]]
    arch["member_blocks"][1][nb] = {**arch["blocks"][nb], "mid": [3, 5, 2]}
    arch["convs"] = {f"blocks.{nb}.conv3x1_1": {"rank": 2}, "blocks.0.conv": {"expand": 4}}
    model = build_ensemble(arch, seed=0).eval()
    m0, m1 = model.members
    assert isinstance(m0.blocks[nb].conv3x1_1, LowRankConv2d)
    assert isinstance(m0.blocks[0].conv, ExpandedConv)
    assert m1.blocks[nb].conv1x3_1.out_channels == 5
    path = save_ensemble(model, None, tmp_path / "model.pt")
    with torch.no_grad():
        torch.testing.assert_close(model(images(1)), load_ensemble(path)(images(1)))
    arch["convs"] = {"blocks.0.nope": {"rank": 1}}
    with pytest.raises(TrainerError, match="do not exist"):
        build_ensemble(arch)


def test_mc_dropout_toggles_only_dropout() -> None:
    model = build_ensemble(tiny_arch(dropout=(0.3, 0.3)), seed=0).eval()
    x = images(1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        set_mc_dropout(model, True)
        assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        torch.manual_seed(0)
        a, _ = model(x)
        b, _ = model(x)
    assert not torch.allclose(a, b)


def test_onnx_export_dynamic_batch() -> None:
    import onnx
    import onnxruntime as ort

    model = build_ensemble(tiny_arch(), seed=0).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (images(2),), buf,  # type: ignore[arg-type]
            input_names=["images"], output_names=["probs", "features"],
            dynamic_axes={"images": {0: "batch"}, "probs": {1: "batch"}, "features": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
    ops = {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    assert ops <= {"Conv", "ConvTranspose", "BatchNormalization", "Relu", "MaxPool", "Concat", "Add", "Mul",
                   "ReduceMean", "Softmax", "Unsqueeze", "Constant", "Identity"}, ops
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = images(n, seed=n)
        with torch.no_grad():
            probs, feats = model(x)
        p, f = sess.run(None, {"images": x.numpy()})
        assert p.shape == (2, n, 11, H, W) and f.shape == (n, model.feature_dim)
        np.testing.assert_allclose(p, probs.numpy(), atol=1e-4)
        np.testing.assert_allclose(f, feats.numpy(), rtol=1e-4, atol=1e-4)


def test_arch_module_is_light() -> None:
    code = "import sys, avminer.models, avminer.models.arch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
