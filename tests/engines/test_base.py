"""Engine input plumbing: resizing, layout conversion, validation, output checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avminer.engines import resize_batch
from avminer.engines.base import check_outputs, to_nchw_float
from avminer.engines.bundle import Bundle
from avminer.engines.ort import OrtEngine
from avminer.errors import EngineError
from tests.engines.conftest import INPUT_HW


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=4),
    out=st.tuples(st.integers(1, 32), st.integers(1, 32)),
    value=st.integers(0, 255),
)
def test_resize_batch_shape_and_constant_images(sizes: list[tuple[int, int]], out: tuple[int, int], value: int) -> None:
    images = [np.full((h, w, 3), value, dtype=np.uint8) for h, w in sizes]
    batch = resize_batch(images, *out)
    assert batch.shape == (len(images), *out, 3) and batch.dtype == np.uint8
    assert (batch == value).all()  # resampling a constant image keeps it constant


def test_resize_batch_keeps_images_at_size_and_rejects_bad_frames() -> None:
    img = np.random.default_rng(0).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_batch([img], 6, 8)[0], img)
    with pytest.raises(EngineError, match="frame 0: expected uint8"):
        resize_batch([img.astype(np.float32)], 6, 8)
    with pytest.raises(EngineError, match="frame 1"):
        resize_batch([img, img[:, :, :2]], 6, 8)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 1000))
def test_to_nchw_float_is_transpose_and_cast(n: int, h: int, w: int, seed: int) -> None:
    x = np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    y = to_nchw_float(x)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_array_equal(y, x.transpose(0, 3, 1, 2).astype(np.float32))


def test_infer_rejects_wrong_input_and_closed_engine(bundles: dict[str, Bundle]) -> None:
    engine = OrtEngine(bundles["v1"])
    with pytest.raises(EngineError, match=r"expected uint8 \[N, 32, 48, 3\].*resize_batch"):
        engine.infer(np.zeros((1, 40, 48, 3), np.uint8))
    with pytest.raises(EngineError, match="expected uint8"):
        engine.infer(np.zeros((1, *INPUT_HW, 3), np.float32))
    with pytest.raises(EngineError, match="empty batch"):
        engine.infer(np.zeros((0, *INPUT_HW, 3), np.uint8))
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.infer(np.zeros((1, *INPUT_HW, 3), np.uint8))


def test_check_outputs_catches_shape_nan_and_out_of_range(bundles: dict[str, Bundle]) -> None:
    b = bundles["v1"]
    images = np.random.default_rng(1).integers(0, 256, size=(1, *INPUT_HW, 3), dtype=np.uint8)
    with OrtEngine(b) as engine:
        good = engine.infer(images)
    check_outputs(b, good, 1)
    with pytest.raises(EngineError, match="scores shape"):
        check_outputs(b, dataclasses.replace(good, scores=good.scores[:, :3]), 1)
    with pytest.raises(EngineError, match="features shape"):
        check_outputs(b, dataclasses.replace(good, features=good.features[:, :3]), 1)
    with pytest.raises(EngineError, match="umap shape"):
        check_outputs(b, dataclasses.replace(good, umap=good.umap[:, ::2]), 1)
    with pytest.raises(EngineError, match="non-finite"):
        check_outputs(b, dataclasses.replace(good, features=good.features * np.nan), 1)
    with pytest.raises(EngineError, match="outside"):
        check_outputs(b, dataclasses.replace(good, scores=good.scores + 100.0), 1)
    with pytest.raises(EngineError, match="argmax"):
        check_outputs(b, dataclasses.replace(good, fetch_prediction=lambda i: np.full(INPUT_HW, 99, np.uint8)), 1)
