"""Training data: CamVid-layout loading and filters, hold-out split, class weights, augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avminer.errors import DatasetError
from avminer.trainer.data import (
    LabeledFrames,
    augment_batch,
    enet_class_weights,
    holdout_split,
    load_camvid,
    to_tensors,
)
from tests.datasets.support import LayoutFrame, write_layout
from tests.trainer.conftest import make_frames


def write_camvid(root: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """A CamVid-layout dir: (frame_id, split, sequence, time_of_day) rows with 90x120 images and labels."""
    rng = np.random.default_rng(0)
    frames = []
    for i, (fid, split, seq, tod) in enumerate(rows):
        label = np.full((90, 120), i % 11, np.uint8)
        label[:10] = 11
        frames.append(LayoutFrame(fid, split, seq, i, tod, rng.integers(0, 256, (90, 120, 3), dtype=np.uint8),
                                  label, location="town"))
    return write_layout(root, frames)


def test_load_camvid_filters_and_resizes(tmp_path: Path) -> None:
    root = write_camvid(tmp_path / "cv", [("a1", "train", "A", "day"), ("a2", "val", "A", "day"),
                                          ("b1", "train", "B", "dusk")])
    frames = load_camvid(root, (32, 48))
    assert frames.images.shape == (3, 32, 48, 3) and frames.labels.shape == (3, 32, 48)
    assert frames.slices == ["day/clear/town", "day/clear/town", "dusk/clear/town"]
    assert set(np.unique(frames.labels[2])) == {2, 11}  # nearest resize keeps ids exact
    day_train = load_camvid(root, (32, 48), splits=["train"], time_of_day=["day"])
    assert day_train.frame_ids == ["a1"] and day_train.sequences == ["A"]
    with pytest.raises(DatasetError, match="no rows left"):
        load_camvid(root, (32, 48), sequences=["Z"])
    with pytest.raises(DatasetError, match="manifest"):
        load_camvid(tmp_path / "missing", (32, 48))


def test_holdout_split_is_disjoint_and_complete() -> None:
    frames = make_frames(10)
    train, held = holdout_split(frames, 0.2)
    assert len(held) == 2 and len(train) == 8
    assert set(train.frame_ids).isdisjoint(held.frame_ids)
    assert set(train.frame_ids) | set(held.frame_ids) == set(frames.frame_ids)
    both = LabeledFrames.concat([train, held])
    assert len(both) == 10 and both.size == (32, 48)


def test_enet_weights_favour_rare_classes_and_stay_bounded() -> None:
    labels = np.zeros((1, 10, 100), np.uint8)
    labels[0, 0, :5] = 9  # pedestrian: 0.5% of pixels
    labels[0, 1] = 11  # void does not count
    w = enet_class_weights(labels)
    assert w.shape == (11,) and w.dtype == np.float32
    assert w[9] > w[0] > 0
    assert w.max() <= 1 / np.log(1.02) + 1e-4  # absent classes get the bound, not infinity


def test_augment_keeps_shapes_and_label_ids() -> None:
    frames = make_frames(4)
    images, labels = to_tensors(frames, np.arange(4))
    out_i, out_l = augment_batch(images, labels, torch.Generator().manual_seed(0))
    assert out_i.shape == images.shape and out_l.shape == labels.shape
    assert out_i.min() >= 0 and out_i.max() <= 255
    assert set(np.unique(out_l.numpy())) <= set(np.unique(labels.numpy()))
    again = augment_batch(images, labels, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again[0], out_i)  # reproducible from the generator


def test_load_drive_log_with_ground_truth(sample_drive: Path) -> None:
    from avminer.trainer.data import load_drive_log

    frames = load_drive_log(sample_drive, (32, 48), limit=4)
    assert 1 <= len(frames) <= 4
    assert frames.images.shape[1:] == (32, 48, 3)
    assert frames.labels.max() <= 11
    assert all(s.count("/") == 2 for s in frames.slices)
