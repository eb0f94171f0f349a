"""The torch engine's CPU-reachable parts: precisions, compiled-graph padding, the eager fallback, options.

The CUDA path (FP16, pinned buffers, its own stream, inductor) needs a GPU: ``tools/gpu_check.sh`` (its parity
part checks the compiled FP16 engine, the CUDA default, against ONNX Runtime).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from avminer.engines import BACKENDS, open_engine
from avminer.engines.bundle import Bundle
from avminer.engines.export import SCORE_ATOL
from avminer.engines.torch_backend import TorchEngine
from avminer.errors import EngineError
from tests.engines.conftest import INPUT_HW


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *INPUT_HW, 3), dtype=np.uint8)


def test_bf16_net_keeps_float32_outputs_close_to_fp32(bundles: dict[str, Bundle]) -> None:
    images = _images(3)
    with TorchEngine(bundles["v1"]) as fp32, TorchEngine(bundles["v1"], precision="bf16") as bf16:
        a, b = fp32.infer(images), bf16.infer(images)
    assert fp32.precision == "fp32" and bf16.precision == "bf16"
    assert b.scores.dtype == np.float32 and b.features.dtype == np.float32 and b.umap.dtype == np.uint8
    assert b.prediction(0).dtype == np.uint8 and b.prediction(0).shape == INPUT_HW
    # bf16 keeps 8 bits of mantissa: scores move, but stay within the score range's order of magnitude.
    assert np.abs(a.scores - b.scores).max() < 0.25
    assert np.isfinite(b.scores).all()


def test_compiled_path_pads_to_max_batch_and_matches_eager(bundles: dict[str, Bundle]) -> None:
    calls: list[tuple[int, ...]] = []

    def fake_compile(module: Any) -> Any:
        """Stands in for torch.compile: the same module, recording the shapes it is called with."""
        def run(x: Any) -> Any:
            calls.append(tuple(x.shape))
            return module(x)
        return run

    images = _images(7, seed=1)
    with TorchEngine(bundles["v2"], compile="on", max_batch=4, compile_fn=fake_compile) as compiled, \
            TorchEngine(bundles["v2"]) as eager:
        assert compiled.compiled and compiled.compile_error is None
        warm = len(calls)
        out = compiled.infer(images)  # 7 frames: two padded batches of 4
        ref = eager.infer(images)
        few = compiled.infer(images[:3])  # one padded chunk, cut back to 3 rows
        with_probs = compiled.infer(images[:2], probs=True)  # probabilities run eagerly, unpadded
    assert all(shape[0] == 4 for shape in calls)  # only ever the one compiled shape
    assert len(calls) - warm == 3
    assert out.scores.shape[0] == 7 and few.scores.shape[0] == 3 and few.umap.shape[0] == 3
    np.testing.assert_allclose(out.scores, ref.scores, atol=SCORE_ATOL)
    np.testing.assert_allclose(few.scores, ref.scores[:3], atol=SCORE_ATOL)
    np.testing.assert_array_equal(out.prediction(6), ref.prediction(6))
    np.testing.assert_array_equal(few.prediction(2), ref.prediction(2))
    assert with_probs.probs is not None and with_probs.probs.shape[1] == 2


def test_a_failed_compile_falls_back_to_eager(bundles: dict[str, Bundle], caplog: pytest.LogCaptureFixture) -> None:
    def broken(module: Any) -> Any:
        def run(x: Any) -> Any:
            raise RuntimeError("inductor: no C++ compiler here")
        return run

    with TorchEngine(bundles["v1"], compile="on", compile_fn=broken) as engine:
        assert not engine.compiled and "no C++ compiler" in (engine.compile_error or "")
        out = engine.infer(_images(2))  # still serves, eagerly
    assert out.scores.shape[0] == 2
    assert "running eagerly" in caplog.text


def test_bad_options_are_refused(bundles: dict[str, Bundle]) -> None:
    with pytest.raises(EngineError, match="precision"):
        TorchEngine(bundles["v1"], precision="int8")
    with pytest.raises(EngineError, match="compile"):
        TorchEngine(bundles["v1"], compile="maybe")
    with pytest.raises(EngineError, match="max_batch"):
        TorchEngine(bundles["v1"], max_batch=0)


def test_registry_opens_every_cpu_backend_with_one_contract(bundles: dict[str, Bundle]) -> None:
    images = _images(2, seed=3)
    for backend in ("onnxruntime", "torch", "null"):
        assert backend in BACKENDS
        with open_engine(bundles["v1"], backend=backend, threads=1, precision="fp32", compile="off") as engine:
            out = engine.infer(images)
        assert engine.backend == backend
        assert out.scores.shape == (2, len(engine.head.score_names()))
        assert out.host_bytes() == 2 * engine.host_bytes_per_frame()
    with pytest.raises(EngineError, match="unknown engine backend"):
        open_engine(bundles["v1"], backend="cuda-magic")


def test_mc_dropout_scores_bald_over_stochastic_passes_of_one_member(bundles: dict[str, Bundle]) -> None:
    """BALD (the `bald` baseline): mutual information over T dropout passes of the first member. A single
    deterministic pass has none; the passes disagree once dropout is on, and the features stay the
    ensemble's (shift detection unchanged)."""
    import torch

    from avminer.models import load_ensemble
    from avminer.models.ensemble import MCDropoutEnsemble

    images = _images(4, seed=3)
    with TorchEngine(bundles["v1"]) as plain, TorchEngine(bundles["v1"], mc_dropout_samples=8) as mc:
        a, b = plain.infer(images), mc.infer(images)
    np.testing.assert_allclose(b.features, a.features, atol=1e-5)
    assert (b.score("mi_mean") > 1e-4).all(), "dropout passes should disagree"
    model = load_ensemble(bundles["v1"].torch_path).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        logits, feats = MCDropoutEnsemble(model, 4).member_outputs(x)  # [T, N, C, H, W], [K, N, D]
        member = model.members[0]
        once, twice = member(model.normalise(x))[0], member(model.normalise(x))[0]
    assert logits.shape[0] == 4 and feats.shape[0] == model.num_members
    assert not torch.equal(logits[0], logits[1]), "each pass draws its own dropout mask"
    # Dropout is switched back off after the passes: the member is deterministic again.
    assert torch.equal(once, twice) and not any(m.training for m in model.modules())
    # The masks come from the engine's own seed, not the process's random state: a replay scores the same.
    with TorchEngine(bundles["v1"], mc_dropout_samples=8) as again:
        torch.rand(7)  # whatever the process drew before
        replay = again.infer(images)
    np.testing.assert_array_equal(replay.score("mi_mean"), b.score("mi_mean"))
    with torch.no_grad():
        first, second = (MCDropoutEnsemble(model, 4).member_outputs(x)[0] for _ in range(2))
        seeded = MCDropoutEnsemble(model, 4)
        one, two = seeded.member_outputs(x)[0], seeded.member_outputs(x)[0]
    assert torch.equal(first, second) and not torch.equal(one, two)  # a new mask per batch, the same per replay
    with pytest.raises(EngineError, match="mc_dropout_samples"):
        TorchEngine(bundles["v1"], mc_dropout_samples=1)
