"""Joint training: the loss goes down, checkpoints resume to the same weights, metrics are right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avminer.errors import TrainerError
from avminer.models import build_ensemble, erfnet_arch
from avminer.taxonomy import confusion
from avminer.trainer.data import LabeledFrames
from avminer.trainer.train import (
    CHECKPOINT,
    TrainConfig,
    evaluate,
    metrics_from_confusion,
    train_ensemble,
)
from tests.trainer.conftest import make_frames


def tiny_model(members: int = 2, seed: int = 0):  # type: ignore[no-untyped-def]
    return build_ensemble(erfnet_arch(width=0.25, members=members, dropout=(0.0, 0.0)), seed=seed)


def cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = dict(epochs=6, batch_size=4, lr=5e-3, threads=1, progress=False, augment=False, eval_every=100)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_training_reduces_the_loss(tiny_frames: LabeledFrames) -> None:
    result = train_ensemble(tiny_model(), tiny_frames, cfg(batch_size=2, lr=1e-2), eval_frames=tiny_frames)
    ce = [row["ce"] for row in result.history]
    assert len(ce) == 6 and all(np.isfinite(ce))
    assert ce[-1] < 0.85 * ce[0], ce
    assert result.seconds_per_epoch > 0
    assert set(result.metrics) == {"day/clear/test", "all"}


def test_augmented_training_runs(tiny_frames: LabeledFrames) -> None:
    result = train_ensemble(tiny_model(), tiny_frames, cfg(epochs=1, augment=True))
    assert np.isfinite(result.history[0]["loss"])


def test_resume_continues_the_same_run(tiny_frames: LabeledFrames, tmp_path: Path) -> None:
    straight = train_ensemble(tiny_model(), tiny_frames, cfg(epochs=3, augment=True), tmp_path / "a")
    first = train_ensemble(tiny_model(), tiny_frames, cfg(epochs=3, augment=True), tmp_path / "b", until_epoch=2)
    assert first.epochs_run == 2 and (tmp_path / "b" / CHECKPOINT).exists()
    fresh = tiny_model(seed=99)  # different init: the checkpoint must replace it
    resumed = train_ensemble(fresh, tiny_frames, cfg(epochs=3, augment=True), tmp_path / "b")
    assert resumed.epochs_run == 1 and len(resumed.history) == 3
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    # a checkpoint of another architecture is refused, not silently loaded
    with pytest.raises(TrainerError, match="another architecture"):
        train_ensemble(tiny_model(members=3), tiny_frames, cfg(epochs=4), tmp_path / "b")


def test_metrics_from_confusion() -> None:
    truth = np.array([[0, 0, 1, 1], [2, 2, 11, 11]])
    assert metrics_from_confusion(confusion(truth.clip(max=2), truth, 3), 1).miou == 1.0
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
    m = metrics_from_confusion(confusion(pred, truth, 3), 1)
    # class 0: tp 1, fp 0, fn 1 -> 1/2; class 1: tp 2, fp 1 -> 2/3; class 2: 1
    assert m.iou == pytest.approx([0.5, 2 / 3, 1.0])
    assert m.miou == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert m.pixel_accuracy == pytest.approx(5 / 6)


def test_evaluate_reports_each_slice() -> None:
    frames = make_frames(6, slices=("day/clear/a", "dusk/clear/a"))
    out = evaluate(tiny_model().eval(), frames, batch_size=4)
    assert set(out) == {"day/clear/a", "dusk/clear/a", "all"}
    assert out["day/clear/a"].frames == 3 and out["all"].frames == 6
    assert all(0.0 <= m.miou <= 1.0 for m in out.values())
