"""Domain adaptation: AdaBN, class-balanced ensemble pseudo-labels, the composed run, provenance."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from avminer.catalog.catalog import open_catalog
from avminer.errors import ConfigError
from avminer.models import build_ensemble, erfnet_arch
from avminer.trainer.adapt import (
    AdaptConfig,
    PseudoConfig,
    adabn,
    adapt,
    class_balanced_pseudo_labels,
    interpolate_weights,
    parse_methods,
    pseudo_label,
    record_pseudo_labels,
)
from avminer.trainer.data import VOID, LabeledFrames
from avminer.trainer.train import TrainConfig, evaluate, train_ensemble
from tests.sinks import factories as f
from tests.trainer.conftest import make_frames


def _model(seed: int = 0):
    return build_ensemble(erfnet_arch(width=0.25, num_classes=11, members=2), seed=seed)


def _darker(frames: LabeledFrames, factor: float = 0.3) -> LabeledFrames:
    """The same scenes at a lower exposure: the 'target condition' of these tests."""
    images = (frames.images.astype(np.float32) * factor).astype(np.uint8)
    return LabeledFrames(images, frames.labels, [x + "+dark" for x in frames.frame_ids],
                         ["dusk/clear/test"] * len(frames), list(frames.sequences))


def test_adabn_statistics_are_the_target_frames_statistics() -> None:
    model = _model()
    target = _darker(make_frames(6, seed=3))
    adabn(model, target, batch_size=3)
    # The input BN of member 0 sees the first conv's output; recompute it directly on all target frames.
    bn = next(m for m in model.members[0].modules() if isinstance(m, nn.BatchNorm2d))
    captured: list[torch.Tensor] = []
    handle = bn.register_forward_hook(lambda _m, inp, _o: captured.append(inp[0]))
    model.eval()
    with torch.no_grad():
        model(torch.from_numpy(target.images).permute(0, 3, 1, 2).float())
    handle.remove()
    x = captured[0]  # [N, C, H, W] of every target frame at once
    torch.testing.assert_close(bn.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)
    assert bn.momentum == 0.1  # restored: later training uses the usual exponential average
    assert not model.training


def test_pseudo_labels_keep_agreeing_confident_pixels_per_class() -> None:
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, (2, 50, 50)).astype(np.uint8)
    pred[:, :5] = 2  # class 2 rare-ish... and class 0 dominant below
    conf = rng.uniform(0.3, 1.0, pred.shape).astype(np.float32)
    conf[pred == 1] *= 0.5  # class 1 is predicted with low confidence everywhere
    mi = rng.uniform(0, 1, pred.shape).astype(np.float32)
    labels, thr, mi_thr = class_balanced_pseudo_labels(pred, conf, mi, keep=0.3, mi_quantile=0.5,
                                                       max_threshold=0.95, num_classes=11)
    assert mi_thr == pytest.approx(np.quantile(mi, 0.5))
    kept = labels != VOID
    assert (labels[kept] == pred[kept]).all()
    assert (mi[kept] <= mi_thr).all()
    for c in range(3):
        agreeing = (pred == c) & (mi <= mi_thr)
        share = (kept & (pred == c)).sum() / agreeing.sum()
        assert share == pytest.approx(0.3, abs=0.02), c  # class-balanced: every class keeps its top 30 %
        assert (conf[kept & (pred == c)] >= thr[c]).all()
    assert thr[1] < thr[0]  # the low-confidence class gets a lower threshold instead of no pixels
    capped, thr_cap, _ = class_balanced_pseudo_labels(pred, conf, mi, keep=0.01, mi_quantile=1.0,
                                                      max_threshold=0.5, num_classes=11)
    assert max(thr_cap.values()) <= 0.5 and (capped != VOID).sum() > 0.01 * pred.size


def test_pseudo_label_round_on_a_real_ensemble() -> None:
    model = _model()
    frames = make_frames(4, seed=5)
    pl = pseudo_label(model, frames, PseudoConfig(keep=0.5), 0, batch_size=2)
    assert pl.frames.frame_ids == [x + "+pseudo" for x in frames.frame_ids]
    assert 0 < pl.pixels < frames.labels.size and pl.share == pytest.approx(pl.pixels / frames.labels.size)
    assert set(np.unique(pl.frames.labels)) <= set(range(11)) | {VOID}


def test_methods_parse_in_order_and_bad_ones_are_named() -> None:
    assert parse_methods("pseudo,synth") == ("synth", "pseudo")
    assert parse_methods("none") == ()
    with pytest.raises(ConfigError, match="--adapt.*tent"):
        parse_methods("synth,tent")
    with pytest.raises(ConfigError, match="pseudo.keep"):
        PseudoConfig(keep=0)
    with pytest.raises(ConfigError, match="synth_mix.dusk"):
        TrainConfig(synth_mix={"dusk": 1.5})


@pytest.fixture(scope="module")
def day_model():
    """A small ensemble trained on the bright 'day' frames only."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # 40 epochs: at 20 the seed-0 model had not learned its own condition (day mIoU 0.18 with torch
    # 2.13), and whether AdaBN then helped the darker frames was a coin toss.
    cfg = TrainConfig(epochs=40, batch_size=4, lr=1e-2, beta=0.0, eval_every=1000, progress=False)
    model = train_ensemble(_model(), make_frames(12, seed=1), cfg).model
    assert evaluate(model, make_frames(6, seed=2))["all"].miou > 0.3  # it knows the day condition
    return model


def test_adabn_alone_recovers_a_darker_target(day_model) -> None:
    target_eval = _darker(make_frames(6, seed=2))
    model = copy.deepcopy(day_model)
    before = evaluate(model, target_eval)["all"].miou
    _, record = adapt(model, make_frames(12, seed=1), _darker(make_frames(8, seed=4)),
                      AdaptConfig(("adabn",), adabn_source_share=0.0))
    after = evaluate(model, target_eval)["all"].miou
    assert after > before + 0.05, (before, after)
    assert record.labels_used == 0 and record.pseudo_frames == []


def test_synth_in_the_target_style_learns_the_darker_target_without_its_labels(day_model) -> None:
    """``target_style`` renders the labeled source frames in the style of the unlabeled target frames."""
    torch.set_num_threads(1)
    target_eval = _darker(make_frames(6, seed=2))
    before = evaluate(day_model, target_eval)["all"].miou
    cfg = AdaptConfig(("synth",), train=TrainConfig(epochs=3, batch_size=4, lr=2e-3, beta=0.0, eval_every=1000,
                                                     progress=False, synth_mix={"target_style": 1.0}))
    model, record = adapt(copy.deepcopy(day_model), make_frames(12, seed=1), _darker(make_frames(8, seed=4)), cfg)
    after = evaluate(model, target_eval)["all"].miou
    assert after > before + 0.05, (before, after)
    assert record.labels_used == 12 and record.pseudo_frames == []
    with pytest.raises(ConfigError, match="synth_mix.target_style"):  # no target frames to take the style of
        adapt(copy.deepcopy(day_model), make_frames(12, seed=1), make_frames(0, seed=4), cfg)


def test_composed_adaptation_records_pseudo_frames_and_provenance(day_model, tmp_path: Path) -> None:
    source = make_frames(12, seed=1)
    target = _darker(make_frames(8, seed=4))
    adapt_cfg = AdaptConfig(("synth", "adabn", "pseudo"),
                            train=TrainConfig(epochs=1, batch_size=4, lr=2e-3, beta=0.0, eval_every=1000,
                                              progress=False),
                            pseudo=PseudoConfig(rounds=2, keep=0.3, epochs_per_round=1))
    assert adapt_cfg.train.synth_mix  # synth on: the default mix fills in
    _, record = adapt(copy.deepcopy(day_model), source, target, adapt_cfg)
    assert record.methods == ("synth", "adabn", "pseudo") and len(record.rounds) == 2
    assert record.pseudo_frames == [x + "+pseudo" for x in target.frame_ids]
    assert record.rounds[1]["keep"] > record.rounds[0]["keep"]
    assert record.labels_used == len(source) and record.target_labels_used == 0
    assert 0 < record.pseudo_pixel_share < 1

    catalog = open_catalog(str(tmp_path / "c.db"))
    for i in (1, 2, 3):
        catalog.upsert_decision(f.decision(i), frame_uri=f"s3://b/{i}.jpg", width=f.W, height=f.H, priority=i)
    catalog.mark_labeled("s0003", "s3://b/mask3.png", "human")
    assert record_pseudo_labels(catalog, ["f0001+pseudo", "f0003+pseudo", "unknown+pseudo"], "v2") == 1
    one, three = catalog.get_sample("s0001"), catalog.get_sample("s0003")
    assert one is not None and three is not None
    assert (one.labeler, one.label_uri, one.state) == ("pseudo:v2", None, "mined")  # never a human label
    assert three.labeler == "human"


def test_self_training_rounds_keep_the_source_frames_at_least_half() -> None:
    """More pseudo-labeled target frames than source frames: each round trains on a balanced subset."""
    torch.set_num_threads(1)
    source = make_frames(4, seed=1)
    target = _darker(make_frames(10, seed=4))
    train = TrainConfig(epochs=1, batch_size=4, lr=1e-3, beta=0.0, eval_every=1000, progress=False)
    _, record = adapt(_model(), source, target,
                      AdaptConfig(("pseudo",), train=train, pseudo=PseudoConfig(rounds=2, keep=0.5)))
    assert [(r["labeled_frames"], r["pseudo_frames"]) for r in record.rounds] == [(4, 4), (4, 4)]
    target_ids = {x + "+pseudo" for x in target.frame_ids}
    assert 4 <= len(record.pseudo_frames) <= 8 and set(record.pseudo_frames) <= target_ids  # union of the rounds
    assert record.labels_used == 4

    _, unbalanced = adapt(_model(), source, target,
                          AdaptConfig(("pseudo",), train=train, pseudo=PseudoConfig(rounds=1, source_share=0.0)))
    assert (unbalanced.rounds[0]["labeled_frames"], unbalanced.rounds[0]["pseudo_frames"]) == (4, 10)
    assert set(unbalanced.pseudo_frames) == target_ids


def test_source_share_bounds_the_pseudo_frames_per_round() -> None:
    assert PseudoConfig(source_share=0.5).pseudo_frames_for(60) == 60
    assert PseudoConfig(source_share=0.75).pseudo_frames_for(60) == 20
    assert PseudoConfig(source_share=0.0).pseudo_frames_for(60) is None
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="pseudo.source_share"):
            PseudoConfig(source_share=bad)


def test_weight_interpolation_is_the_midpoint_of_initial_and_fine_tuned() -> None:
    initial_model, tuned = _model(seed=0), _model(seed=1)
    initial = {k: v.clone() for k, v in initial_model.state_dict().items()}
    expected = {k: (initial[k] + v) / 2 for k, v in tuned.state_dict().items() if v.is_floating_point()}
    counters = {k: v.clone() for k, v in tuned.state_dict().items() if not v.is_floating_point()}
    interpolate_weights(tuned, initial, 0.5)
    state = tuned.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(state[k], v)
    for k, v in counters.items():  # BatchNorm's num_batches_tracked: integers are not averaged
        assert torch.equal(state[k], v)
    with pytest.raises(ConfigError, match="interpolate"):
        AdaptConfig(("synth",), interpolate=0.0)


def test_adapt_with_interpolation_returns_the_average_of_start_and_fine_tuned_weights() -> None:
    torch.set_num_threads(1)
    source = make_frames(4, seed=1)
    train = TrainConfig(epochs=1, batch_size=4, lr=1e-2, beta=0.0, eval_every=1000, progress=False, augment=False)
    start = _model()
    tuned, _ = adapt(copy.deepcopy(start), source, source, AdaptConfig(("synth",), train=train))
    half, _ = adapt(copy.deepcopy(start), source, source, AdaptConfig(("synth",), train=train, interpolate=0.5))
    begin, end = start.state_dict(), tuned.state_dict()
    moved = 0
    for name, value in half.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (begin[name] + end[name]) / 2, atol=1e-5, rtol=1e-4)
            moved += int(not torch.equal(begin[name], end[name]))
    assert moved > 0  # training did move the weights
