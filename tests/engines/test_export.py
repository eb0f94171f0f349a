"""Export contract and ONNX Runtime vs torch parity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from avminer.engines import default_bundle_path, load_bundle, open_engine
from avminer.engines.bundle import INPUT_NAME, OUTPUT_FEATURES, OUTPUT_PROBS, Bundle
from avminer.engines.export import PARITY_ATOL, check_parity
from avminer.engines.ort import OrtEngine
from avminer.engines.torch_backend import TorchEngine
from tests.engines.conftest import CLASSES, INPUT_HW


def test_onnx_graph_follows_the_bundle_contract(bundles: dict[str, Bundle]) -> None:
    b = bundles["v1"]
    proto = onnx.load(str(b.onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    (inp,) = proto.graph.input
    assert inp.name == INPUT_NAME
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, *INPUT_HW]
    outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert outs == {
        OUTPUT_PROBS: [2, "batch", len(CLASSES), *INPUT_HW],
        OUTPUT_FEATURES: ["batch", b.feature_dim],
    }
    assert b.members == 2 and b.classes == CLASSES and b.void_index == 11
    assert b.manifest["arch"]["family"] == "erfnet" and b.manifest["dataset_id"] == "test"


@pytest.mark.parametrize(("version", "batch"), [("v1", 1), ("v2", 3)])
def test_ort_matches_torch_within_1e4(bundles: dict[str, Bundle], version: str, batch: int) -> None:
    report = check_parity(bundles[version], batch=batch, seed=batch)
    assert report["probs"] <= PARITY_ATOL and report["features"] <= PARITY_ATOL


def test_engines_agree_on_outputs_and_batch_is_dynamic(bundles: dict[str, Bundle]) -> None:
    b = bundles["v2"]
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(5, *INPUT_HW, 3), dtype=np.uint8)
    with OrtEngine(b, threads=1) as ort_engine, TorchEngine(b, channels_last=False) as torch_engine:
        whole = ort_engine.infer(images)
        parts = [ort_engine.infer(images[i:i + 1]) for i in range(5)]
        reference = torch_engine.infer(images)
    assert whole.probs.shape == (2, 5, len(CLASSES), *INPUT_HW) and whole.probs.dtype == np.float32
    assert whole.features.shape == (5, b.feature_dim) and whole.features.dtype == np.float32
    assert whole.version == reference.version == "v2"
    np.testing.assert_allclose(np.concatenate([p.probs for p in parts], axis=1), whole.probs, atol=1e-5)
    np.testing.assert_allclose(whole.probs, reference.probs, atol=PARITY_ATOL)
    np.testing.assert_allclose(whole.features, reference.features, atol=PARITY_ATOL)
    np.testing.assert_allclose(whole.probs.sum(axis=2), 1.0, atol=1e-4)


def test_reused_output_buffers_give_the_same_answer(bundles: dict[str, Bundle]) -> None:
    images = np.full((2, *INPUT_HW, 3), 90, dtype=np.uint8)
    with OrtEngine(bundles["v1"]) as fresh, OrtEngine(bundles["v1"], reuse_outputs=True) as reused:
        a = fresh.infer(images)
        b = reused.infer(images)
        b2 = reused.infer(images)
    assert b2.probs is b.probs  # same buffer: the documented contract of reuse_outputs
    np.testing.assert_array_equal(a.probs, b.probs)


def test_open_engine_picks_ort_on_cpu(bundles: dict[str, Bundle]) -> None:
    with open_engine(bundles["v1"].path) as engine:
        assert engine.backend == "onnxruntime" and engine.version == "v1"
    with open_engine(bundles["v1"], backend="torch") as engine:
        assert engine.backend == "torch"


def test_starter_bundle_parity() -> None:
    path = default_bundle_path()
    if not (path / "manifest.json").exists():
        pytest.fail(f"no starter bundle at {path}; regenerate it with tools/train_starter.py")
    bundle = load_bundle(path)
    report = check_parity(bundle, batch=1)
    assert report["probs"] <= PARITY_ATOL and report["features"] <= PARITY_ATOL


def test_parity_check_catches_an_unfaithful_export(bundles: dict[str, Bundle]) -> None:
    from avminer.errors import EngineError
    from avminer.models import load_ensemble

    other = bundles["v2"].torch_path
    assert other is not None
    with pytest.raises(EngineError, match="float32 rounding does not explain it"):
        check_parity(bundles["v1"], model=load_ensemble(other), batch=1)
