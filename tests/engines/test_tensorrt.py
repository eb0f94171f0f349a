"""TensorRT backend: plan keys and refusals (CPU), and the real build/run path (GPU, skipped without one).

A skipped GPU test is not a passed one: without a CUDA device and TensorRT the GPU path is unverified.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from avminer.engines.bundle import Bundle, add_file
from avminer.engines.tensorrt_backend import PlanKey, describe_mismatch, select_plan
from avminer.errors import BackendUnavailableError, BundleError
from avminer.utils.imports import is_cuda_available, is_tensorrt_available

gpu = pytest.mark.skipif(
    not (is_tensorrt_available() and is_cuda_available()), reason="needs TensorRT and a CUDA device"
)


def test_plan_key_round_trip() -> None:
    key = PlanKey((9, 0), "10.13.0.35")
    assert str(key) == "sm90-trt10.13.0.35"
    assert PlanKey.parse("sm90-trt10.13.0.35") == key
    assert PlanKey.parse("sm120-trt11.1.0") == PlanKey((12, 0), "11.1.0")
    assert PlanKey.parse("sm86-trt10.3") == PlanKey((8, 6), "10.3")
    for bad in ("sm9-trt10", "gpu90-trt10.1", "sm90-10.1", "sm90-trt"):
        with pytest.raises(BundleError, match="sm<major><minor>-trt<version>"):
            PlanKey.parse(bad)


def test_describe_mismatch_names_gpu_and_version() -> None:
    here = PlanKey((9, 0), "10.13.0.35")
    assert "another GPU (sm86, this GPU is sm90)" in describe_mismatch(PlanKey((8, 6), "10.13.0.35"), here)
    assert "another TensorRT version (10.3.0, this is 10.13.0.35)" in describe_mismatch(PlanKey((9, 0), "10.3.0"), here)
    both = describe_mismatch(PlanKey((8, 9), "10.3.0"), here)
    assert "another GPU" in both and "another TensorRT version" in both


def test_plans_for_other_machines_are_refused(bundle_copy: Callable[[str], Bundle]) -> None:
    b = bundle_copy("v1")
    here = PlanKey((9, 0), "10.13.0.35")
    with pytest.raises(BundleError, match="no TensorRT plan in the bundle; run `avminer engine build"):
        select_plan(b, here)
    other_gpu, other_trt = "sm86-trt10.13.0.35", "sm90-trt10.3.0.26"
    for key in (other_gpu, other_trt):
        b = add_file(b, f"plans/{key}.plan", b"x", {"plans": {key: f"plans/{key}.plan"}})
    with pytest.raises(BundleError) as err:
        select_plan(b, here)
    msg = str(err.value)
    assert "no TensorRT plan for this machine (sm90-trt10.13.0.35)" in msg
    assert "sm86-trt10.13.0.35: built for another GPU" in msg
    assert "sm90-trt10.3.0.26: built with another TensorRT version" in msg


def test_plan_whose_build_record_disagrees_with_its_key_is_refused(bundle_copy: Callable[[str], Bundle]) -> None:
    b = bundle_copy("v1")
    key = "sm90-trt10.13.0.35"
    # Someone renamed a plan built on an sm86 GPU to this machine's key.
    b = add_file(b, f"plans/{key}.plan", b"x", {
        "plans": {key: f"plans/{key}.plan"},
        "plan_info": {key: {"sm": [8, 6], "tensorrt": "10.13.0.35"}},
    })
    with pytest.raises(BundleError, match="listed under sm90-trt10.13.0.35 but was built for another GPU"):
        select_plan(b, PlanKey((9, 0), "10.13.0.35"))
    b = add_file(b, "plans/other.plan", b"x", {"plan_info": {key: {"sm": [9, 0], "tensorrt": "10.13.0.35"}}})
    assert select_plan(b, PlanKey((9, 0), "10.13.0.35")) == b.path / f"plans/{key}.plan"


@pytest.mark.skipif(is_tensorrt_available(), reason="TensorRT is installed here")
def test_missing_tensorrt_says_how_to_install(bundles: dict[str, Bundle]) -> None:
    from avminer.engines import open_engine
    from avminer.engines.tensorrt_backend import TensorRTEngine, build_plan

    with pytest.raises(BackendUnavailableError, match=r"pip install 'avminer\[gpu\]'"):
        TensorRTEngine(bundles["v1"])
    with pytest.raises(BackendUnavailableError, match=r"avminer\[gpu\]"):
        build_plan(bundles["v1"])
    with pytest.raises(BackendUnavailableError, match=r"avminer\[gpu\]"):
        open_engine(bundles["v1"], backend="tensorrt")
    with open_engine(bundles["v1"], backend="auto") as engine:  # auto falls back to onnxruntime
        assert engine.backend == "onnxruntime"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_build_run_and_parity(bundle_copy: Callable[[str], Bundle], fp16: bool) -> None:
    from avminer.engines.tensorrt_backend import (
        TRT_TOLERANCE,
        TensorRTEngine,
        build_plan,
        check_tensorrt_parity,
        current_key,
    )

    b = build_plan(bundle_copy("v1"), fp16=fp16, max_batch=4)
    key = str(current_key())
    info = b.manifest["plan_info"][key]
    assert b.plan_path(key) is not None and info["precision"] == ("fp16" if fp16 else "fp32")
    assert info["timing_cache"] in b.manifest["files"]
    report = check_tensorrt_parity(b, batch=3)
    assert report["probs_max"] <= TRT_TOLERANCE[info["precision"]]["probs_max"]
    images = np.random.default_rng(0).integers(0, 256, size=(6, b.input_height, b.input_width, 3), dtype=np.uint8)
    with TensorRTEngine(b, build=False) as engine:
        out = engine.infer(images)  # 6 > max_batch 4: split into two runs
    assert out.scores.shape == (6, len(b.head.score_names())) and np.isfinite(out.scores).all()
    assert out.prediction(5).shape == (b.input_height, b.input_width)
    assert report["scores_max"] <= TRT_TOLERANCE[info["precision"]]["probs_max"]


@pytest.mark.gpu
@gpu
def test_tensorrt_refuses_a_foreign_plan_on_a_real_gpu(bundle_copy: Callable[[str], Bundle]) -> None:
    from avminer.engines.tensorrt_backend import TensorRTEngine, current_key

    here = current_key()
    other = PlanKey(here.sm, "0.0.0")
    b = add_file(bundle_copy("v1"), f"plans/{other}.plan", b"x", {"plans": {str(other): f"plans/{other}.plan"}})
    with pytest.raises(BundleError, match="built with another TensorRT version"):
        TensorRTEngine(b, build=False)


def test_fp16_graph_of_the_starter_bundle_stays_within_the_fp16_tolerance() -> None:
    """The TensorRT >= 11 FP16 path converts the graph; check that conversion on the CPU with ONNX Runtime.

    This is a stand-in for an FP16 TensorRT plan (same graph, different kernels), not a TensorRT test.
    """
    import onnxruntime as ort

    from avminer.engines import default_bundle_path, load_bundle
    from avminer.engines.base import to_nchw_float
    from avminer.engines.tensorrt_backend import TRT_TOLERANCE, onnx_to_fp16

    path = default_bundle_path()
    if not (path / "manifest.json").exists():
        pytest.fail(f"no starter bundle at {path}; regenerate it with tools/train_starter.py")
    b = load_bundle(path)
    images = np.random.default_rng(1).integers(0, 256, size=(2, b.input_height, b.input_width, 3), dtype=np.uint8)
    x = to_nchw_float(images)
    fp16 = onnx_to_fp16(b.onnx_path.read_bytes())
    names = ["probs", "features", "scores", "argmax"]
    p32, f32, s32, a32 = ort.InferenceSession(str(b.onnx_path), providers=["CPUExecutionProvider"]).run(
        names, {"images": x})
    p16, f16, s16, a16 = ort.InferenceSession(fp16, providers=["CPUExecutionProvider"]).run(names, {"images": x})
    assert p16.dtype == np.float32 and f16.dtype == np.float32  # FP32 at the edges: keep_io_types
    tol = TRT_TOLERANCE["fp16"]
    # Scores of the FP16 graph (head included, onnxconverter-common) move no more than its probabilities.
    assert np.abs(s16 - s32).max() <= tol["probs_max"]
    assert (a16 == a32).mean() >= 0.99
    assert np.abs(p16 - p32).max() <= tol["probs_max"]
    assert np.abs(p16 - p32).mean() <= tol["probs_mean"]
    assert np.abs(f16 - f32).max() / max(1.0, np.abs(f32).max()) <= tol["features_rel"]
