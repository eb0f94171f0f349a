"""Small generated labeled frames for trainer tests (no dataset on disk needed)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from avminer.trainer.data import LabeledFrames

H, W = 32, 48
# One colour per class for the first four classes; the net learns colour -> class in a few steps.
PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], np.uint8)


def make_frames(n: int, seed: int = 0, slices: tuple[str, ...] = ("day/clear/test",)) -> LabeledFrames:
    """Frames of horizontal colour bands; labels are the band's class, a void strip on top."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, H, W, 3), np.uint8)
    labels = np.empty((n, H, W), np.uint8)
    for i in range(n):
        order = rng.permutation(len(PALETTE))
        bands = np.repeat(order, H // len(PALETTE))  # [H]
        labels[i] = bands[:, None]
        noise = rng.integers(-20, 21, size=(H, W, 3))
        images[i] = np.clip(PALETTE[bands][:, None, :].astype(int) + noise, 0, 255)
        labels[i, :2] = 11
    return LabeledFrames(images, labels, [f"f{seed}_{i}" for i in range(n)],
                         [slices[i % len(slices)] for i in range(n)], ["seq"] * n)


@pytest.fixture
def tiny_frames() -> LabeledFrames:
    return make_frames(8)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny tensors: a second thread only adds synchronisation, and a lot of it on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
