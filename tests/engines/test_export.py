"""Export contract (compact in-graph outputs), ONNX Runtime vs torch parity, re-export of old bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from avminer.engines import default_bundle_path, load_bundle, open_engine
from avminer.engines.bundle import TORCH_FILE, Bundle
from avminer.engines.contract import (
    INPUT_NAME,
    OUTPUT_ARGMAX,
    OUTPUT_FEATURES,
    OUTPUT_PROBS,
    OUTPUT_SCORES,
    OUTPUT_UMAP,
    HeadSpec,
)
from avminer.engines.export import ARGMAX_AGREEMENT, PARITY_ATOL, SCORE_ATOL, check_parity, reexport_bundle
from avminer.engines.ort import OrtEngine
from avminer.engines.torch_backend import TorchEngine
from avminer.errors import BundleError
from avminer.storage.bundles import MANIFEST, sha256_file
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
    head = b.head
    mh, mw = head.map_hw(INPUT_HW)
    assert outs == {
        OUTPUT_SCORES: ["batch", len(HeadSpec.score_names())],
        OUTPUT_FEATURES: ["batch", b.feature_dim],
        OUTPUT_UMAP: ["batch", mh, mw],
        OUTPUT_ARGMAX: ["batch", *INPUT_HW],
        OUTPUT_PROBS: [2, "batch", len(CLASSES), *INPUT_HW],
    }
    assert b.manifest["format"] == "avminer-bundle/2" and head == HeadSpec.for_classes(CLASSES)
    assert b.members == 2 and b.classes == CLASSES and b.void_index == 11
    assert b.manifest["arch"]["family"] == "erfnet" and b.manifest["dataset_id"] == "test"


@pytest.mark.parametrize(("version", "batch"), [("v1", 1), ("v2", 3)])
def test_ort_matches_torch_within_tolerance(bundles: dict[str, Bundle], version: str, batch: int) -> None:
    report = check_parity(bundles[version], batch=batch, seed=batch)
    assert report["probs"] <= PARITY_ATOL and report["features"] <= PARITY_ATOL
    assert report["scores"] <= SCORE_ATOL and report["argmax_agreement"] >= ARGMAX_AGREEMENT
    assert report["umap"] <= 1


def test_engines_agree_on_outputs_and_batch_is_dynamic(bundles: dict[str, Bundle]) -> None:
    b = bundles["v2"]
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(5, *INPUT_HW, 3), dtype=np.uint8)
    with OrtEngine(b, threads=1) as ort_engine, TorchEngine(b, channels_last=False) as torch_engine:
        whole = ort_engine.infer(images)
        parts = [ort_engine.infer(images[i:i + 1]) for i in range(5)]
        reference = torch_engine.infer(images)
        with_probs = ort_engine.infer(images[:2], probs=True)
    assert whole.probs is None  # probabilities only on request
    assert whole.scores.shape == (5, len(HeadSpec.score_names())) and whole.scores.dtype == np.float32
    assert whole.features.shape == (5, b.feature_dim) and whole.features.dtype == np.float32
    assert whole.umap.dtype == np.uint8 and whole.umap.shape == (5, *b.head.map_hw(INPUT_HW))
    assert whole.version == reference.version == "v2"
    np.testing.assert_allclose(np.concatenate([p.scores for p in parts]), whole.scores, atol=1e-5)
    np.testing.assert_allclose(whole.scores, reference.scores, atol=SCORE_ATOL)
    np.testing.assert_allclose(whole.features, reference.features, atol=PARITY_ATOL)
    agree = np.mean([(whole.prediction(i) == reference.prediction(i)).mean() for i in range(5)])
    assert agree >= ARGMAX_AGREEMENT
    assert with_probs.probs is not None and with_probs.probs.shape == (2, 2, len(CLASSES), *INPUT_HW)
    np.testing.assert_allclose(with_probs.probs.sum(axis=2), 1.0, atol=1e-4)
    # The in-graph argmax is the argmax of the returned probabilities' member mean.
    np.testing.assert_array_equal(with_probs.prediction(1), with_probs.probs[:, 1].mean(axis=0).argmax(axis=0))
    assert whole.host_bytes() == 5 * b.head.host_bytes(INPUT_HW, b.feature_dim)


def test_reused_output_buffers_give_the_same_answer(bundles: dict[str, Bundle]) -> None:
    images = np.full((2, *INPUT_HW, 3), 90, dtype=np.uint8)
    with OrtEngine(bundles["v1"]) as fresh, OrtEngine(bundles["v1"], reuse_outputs=True) as reused:
        a = fresh.infer(images)
        b = reused.infer(images)
        b2 = reused.infer(images)
    assert b2.scores is b.scores  # same buffer: the documented contract of reuse_outputs
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.umap, b.umap)


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
    assert report["scores"] <= SCORE_ATOL and report["argmax_agreement"] >= ARGMAX_AGREEMENT


def test_parity_check_catches_an_unfaithful_export(bundles: dict[str, Bundle]) -> None:
    from avminer.errors import EngineError
    from avminer.models import load_ensemble

    other = bundles["v2"].torch_path
    assert other is not None
    with pytest.raises(EngineError, match="disagree on the scoring head"):
        check_parity(bundles["v1"], model=load_ensemble(other), batch=1)


def _downgrade(bundle: Bundle, dest: Path) -> Path:
    """A copy of ``bundle`` with a format-1 manifest (no head), as bundles released before it look."""
    shutil.copytree(bundle.path, dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    manifest["format"] = "avminer-bundle/1"
    del manifest["head"]
    (dest / MANIFEST).write_text(json.dumps(manifest))
    return dest


def test_old_format_is_refused_with_the_upgrade_command(bundles: dict[str, Bundle], tmp_path: Path) -> None:
    old = _downgrade(bundles["v1"], tmp_path / "old")
    with pytest.raises(BundleError, match=r"avminer-bundle/1.*tools/reexport_bundle.py"):
        load_bundle(old)


def test_reexport_upgrades_an_old_bundle_without_retraining(bundles: dict[str, Bundle], tmp_path: Path) -> None:
    old = _downgrade(bundles["v1"], tmp_path / "old")
    weights = sha256_file(old / TORCH_FILE)
    new = reexport_bundle(old, tmp_path / "new", head=HeadSpec.for_classes(CLASSES, map_stride=4, grid=2))
    assert new.manifest["format"] == "avminer-bundle/2" and new.version == "v1"
    assert new.manifest["dataset_id"] == "test"  # the rest of the manifest is kept
    assert sha256_file(new.path / TORCH_FILE) == weights  # same weights, byte for byte
    assert new.head.map_stride == 4 and new.head.grid == 2
    images = np.random.default_rng(5).integers(0, 256, size=(2, *INPUT_HW, 3), dtype=np.uint8)
    with open_engine(new) as a, open_engine(bundles["v1"]) as b:
        out_a, out_b = a.infer(images), b.infer(images)
    np.testing.assert_allclose(out_a.features, out_b.features, atol=1e-5)  # the same net
    np.testing.assert_array_equal(out_a.prediction(0), out_b.prediction(0))
    assert out_a.umap.shape[1:] == new.head.map_hw(INPUT_HW)
