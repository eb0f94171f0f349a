"""Hot-swap: releases load in the background and switch between batches; failures keep the old model."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from avminer.engines.base import Engine
from avminer.engines.bundle import Bundle
from avminer.engines.contract import EngineOutput
from avminer.engines.hotswap import EngineHolder
from avminer.engines.ort import OrtEngine
from avminer.errors import EngineError
from avminer.metrics import MODEL_SWAPS
from tests.engines.conftest import INPUT_HW


def _swaps(result: str) -> float:
    return float(MODEL_SWAPS.labels(result=result)._value.get())


def _opener(bundle: Bundle) -> Engine:
    return OrtEngine(bundle, threads=1)


def test_swap_under_concurrent_inference(bundles: dict[str, Bundle], tmp_path: Path) -> None:
    """Workers infer non-stop while v2 loads, a corrupt bundle fails, and v1 comes back.

    Every batch must succeed, carry exactly one version, equal that version's reference output (so the
    label is not just a label), and each worker must see versions change only at swap points.
    """
    images = np.random.default_rng(3).integers(0, 256, size=(2, *INPUT_HW, 3), dtype=np.uint8)
    reference = {}
    for version, bundle in bundles.items():
        with OrtEngine(bundle, threads=1) as engine:
            reference[version] = engine.infer(images)
    assert np.abs(reference["v1"].scores - reference["v2"].scores).max() > 1e-3  # the models really differ

    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundles["v2"].path, corrupt)
    data = bytearray((corrupt / "model.onnx").read_bytes())
    data[100] ^= 0xFF
    (corrupt / "model.onnx").write_bytes(bytes(data))

    holder = EngineHolder(_opener(bundles["v1"]), opener=_opener)
    stop = threading.Event()
    seen: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        while not stop.is_set():
            try:
                out = holder.infer(images)
                np.testing.assert_allclose(out.scores, reference[out.version].scores, atol=1e-5)
                np.testing.assert_allclose(out.features, reference[out.version].features, atol=1e-5)
                seen[i].append(out.version)
            except BaseException as exc:  # noqa: BLE001 - every failure counts
                errors.append(exc)
                return

    workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    ok_before, failed_before = _swaps("ok"), _swaps("failed")
    try:
        assert holder.load_async(bundles["v2"].path).result(timeout=60).swapped
        bad = holder.load_async(corrupt).result(timeout=60)
        assert not bad.ok and "sha256 mismatch" in (bad.error or "")
        assert holder.version == "v2"  # the failed load kept the old model
        assert holder.load(bundles["v1"]).swapped
        marks = [len(s) for s in seen]  # a batch in flight at the swap may still finish on v2
        while min(len(s) - m for s, m in zip(seen, marks, strict=True)) < 2 and not errors:
            threading.Event().wait(0.01)  # let both workers start batches on the restored model
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
        holder.close()
    assert not errors, errors[0]
    assert _swaps("ok") - ok_before == 2 and _swaps("failed") - failed_before == 1
    for versions in seen:
        # v1 ... v1 v2 ... v2 v1 ... : at most two switches, never flip-flopping.
        switches = [b for a, b in zip(versions, versions[1:], strict=False) if a != b]
        assert versions[-1] == "v1" and switches in ([], ["v1"], ["v2", "v1"])


def test_failed_load_keeps_old_model_and_the_same_version_is_a_no_op(
    bundles: dict[str, Bundle], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = EngineHolder(opener=_opener)
    with pytest.raises(EngineError, match="no model loaded"):
        _ = holder.current
    first = holder.load(bundles["v1"].path)
    assert first.ok and first.swapped and holder.version == "v1"
    again = holder.load(bundles["v1"])
    assert again.ok and not again.swapped
    failed = _swaps("failed")
    result = holder.load(tmp_path / "no-such-bundle")
    assert not result.ok and "not a model bundle" in (result.error or "")
    assert _swaps("failed") == failed + 1
    assert holder.version == "v1"
    assert "model swap to" in caplog.text and "keeping v1" in caplog.text
    holder.close()


def test_probe_rejects_a_model_with_non_finite_outputs(bundles: dict[str, Bundle]) -> None:
    class NanEngine(OrtEngine):
        def _run(self, images: np.ndarray, probs: bool) -> EngineOutput:
            out = super()._run(images, probs)
            return dataclasses.replace(out, features=out.features * np.nan)

    holder = EngineHolder(_opener(bundles["v1"]), opener=lambda b: NanEngine(b, threads=1))
    result = holder.load(bundles["v2"])
    assert not result.ok and "non-finite" in (result.error or "")
    assert holder.version == "v1"
    holder.close()


def test_old_engine_closes_only_after_its_batch(bundles: dict[str, Bundle]) -> None:
    holder = EngineHolder(_opener(bundles["v1"]), opener=_opener)
    images = np.zeros((1, *INPUT_HW, 3), np.uint8)
    swapped: list[tuple[str, str | None]] = []
    holder._on_swap = lambda new, old: swapped.append((new.version, old.version if old else None))
    with holder.acquire() as engine:
        assert holder.load(bundles["v2"]).swapped  # swap while a batch holds v1
        assert engine.infer(images).version == "v1"  # still usable: not closed under the batch
    with pytest.raises(EngineError, match="closed"):
        engine.infer(images)  # released by its last batch -> closed
    assert holder.infer(images).version == "v2"
    assert swapped == [("v2", "v1")]
    holder.close()


def test_holder_resizes_frames_to_the_serving_model(bundles: dict[str, Bundle]) -> None:
    holder = EngineHolder(_opener(bundles["v1"]), opener=_opener)
    frames = [np.zeros((64, 96, 3), np.uint8), np.zeros((30, 50, 3), np.uint8)]
    out = holder.infer(frames)
    assert out.scores.shape[0] == 2 and out.prediction(1).shape == INPUT_HW
    holder.close()

