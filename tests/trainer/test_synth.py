"""Synthetic conditions: each renders a plausible change of the pixels, labels untouched, mix validated."""

from __future__ import annotations

import numpy as np
import pytest

from avminer.errors import ConfigError
from avminer.models import build_ensemble, erfnet_arch
from avminer.trainer.synth import (
    APPEARANCE_BOUNDS,
    CONDITIONS,
    Appearance,
    SynthMix,
    apply_appearance,
    apply_target_style,
    render,
    synthesize_batch,
    temperature_gains,
)
from avminer.trainer.train import TrainConfig, train_ensemble
from tests.trainer.conftest import make_frames


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A 48x64 street-like frame: bright sky, grey buildings, dark road; CamVid labels to match."""
    img = np.zeros((48, 64, 3), np.uint8)
    lab = np.zeros((48, 64), np.uint8)
    img[:16], lab[:16] = (170, 190, 220), 0  # sky
    img[16:28], lab[16:28] = (120, 110, 100), 1  # building
    img[28:], lab[28:] = (80, 80, 85), 3  # road
    rng = np.random.default_rng(0)
    return np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8), lab


def test_mix_parses_and_names_the_bad_field() -> None:
    mix = SynthMix.parse("fog=0.1, dusk=0.3")
    assert mix is not None and mix.as_dict() == {"fog": 0.1, "dusk": 0.3}
    assert SynthMix.parse("") is None and SynthMix.parse({}) is None
    with pytest.raises(ConfigError, match=r"trainer.synth_mix.snow: unknown synthetic condition"):
        SynthMix.parse({"snow": 0.1}, "trainer.synth_mix")
    with pytest.raises(ConfigError, match=r"synth_mix.fog: must be in \[0, 1\]"):
        SynthMix.parse("fog=-0.1")
    with pytest.raises(ConfigError, match="sum to 1.2"):
        SynthMix.parse("fog=0.6,night=0.6")
    with pytest.raises(ConfigError, match="expected condition=ratio"):
        SynthMix.parse("fog")
    draws = SynthMix.parse("fog=0.2,dusk=0.5").draw(4000, np.random.default_rng(0))  # type: ignore[union-attr]
    assert draws.count("fog") / 4000 == pytest.approx(0.2, abs=0.03)
    assert draws.count("dusk") / 4000 == pytest.approx(0.5, abs=0.03)
    assert draws.count("clear") / 4000 == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_each_condition_changes_pixels_deterministically(condition: str) -> None:
    img, lab = _scene()
    styles = np.stack([255 - img, np.clip(img * 0.5 + 60, 0, 255).astype(np.uint8)])  # target frames (target_style)
    a = render(img, condition, np.random.default_rng(7), label=lab, styles=styles)
    b = render(img, condition, np.random.default_rng(7), label=lab, styles=styles)
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - img.astype(int)).mean() > 3
    if condition == "fog":  # fog lifts the dark road towards the airlight and lowers contrast
        assert a[28:].mean() > img[28:].mean() and a.std() < img.std()
    if condition in ("dusk", "night"):  # median brightness drops (glare may light a few pixels)
        assert np.median(a) < np.median(img)


def test_synthesize_batch_keeps_labels_and_clear_frames() -> None:
    img, lab = _scene()
    images = np.stack([img] * 6)
    labels = np.stack([lab] * 6)
    out, conds = synthesize_batch(images, labels, SynthMix({"dusk": 0.5}), np.random.default_rng(1))
    assert set(conds) <= {"dusk", "clear"} and "dusk" in conds and "clear" in conds
    for i, c in enumerate(conds):
        assert np.array_equal(out[i], images[i]) == (c == "clear")
    np.testing.assert_array_equal(labels, np.stack([lab] * 6))  # untouched


def test_temperature_gains_warm_is_red_cool_is_blue() -> None:
    warm, cool = temperature_gains(3000), temperature_gains(10000)
    assert warm[0] > 1 > warm[2] and cool[2] > 1 > cool[0]
    np.testing.assert_allclose(temperature_gains(6500), [1, 1, 1], atol=1e-6)


def test_training_with_a_synthetic_mix_runs_and_learns() -> None:
    frames = make_frames(8)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, beta=0.0, progress=False, synth_mix={"dusk": 0.5, "fog": 0.3})
    result = train_ensemble(build_ensemble(erfnet_arch(width=0.25, num_classes=11, members=2), seed=0), frames, cfg)
    losses = [h["loss"] for h in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_keep_clear_trains_on_each_rendered_frame_beside_its_clear_original() -> None:
    """``synth_keep_clear``: the batch holds every frame as it is, then the rendered copies with their labels."""
    import torch

    from avminer.trainer.train import DistContext, _Loop

    frames = make_frames(8)
    model = build_ensemble(erfnet_arch(width=0.25, num_classes=11, members=2), seed=0)
    index = np.arange(6)

    def batch(keep: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        cfg = TrainConfig(epochs=1, batch_size=6, progress=False, augment=False, synth_mix={"dusk": 0.5},
                          synth_keep_clear=keep)
        loop = _Loop(model, frames, cfg, DistContext(), torch.device("cpu"), None)
        drawn = SynthMix.parse({"dusk": 0.5}).draw(len(index), np.random.default_rng(7))  # what the batch draws
        images, labels = loop.load_batch(index, np.random.default_rng(7))
        return images, labels, drawn

    plain, plain_labels, drawn = batch(False)
    kept, kept_labels, _ = batch(True)
    changed = [i for i, cond in enumerate(drawn) if cond != "clear"]
    assert 0 < len(changed) < len(index)
    assert len(plain) == len(index) and len(kept) == len(index) + len(changed)
    clear = torch.from_numpy(frames.images[index]).permute(0, 3, 1, 2).float()
    assert torch.equal(kept[: len(index)], clear)  # every original, untouched
    assert torch.equal(kept[len(index):], plain[changed])  # then the same renders the plain batch trains on
    assert not torch.equal(plain[changed], clear[changed])
    assert torch.equal(kept_labels, torch.cat([plain_labels, plain_labels[changed]]))


def test_appearance_draws_stay_within_the_stated_bounds() -> None:
    rng = np.random.default_rng(3)
    looks = [Appearance.draw(rng) for _ in range(500)]
    for name, (low, high) in APPEARANCE_BOUNDS.items():
        values = np.array([v for look in looks for v in np.atleast_1d(getattr(look, name))])
        assert values.min() >= low and values.max() <= high, name
        assert values.max() - values.min() > 0.5 * (high - low), name  # the draws span the range
    assert 0.35 < np.mean([look.blur_sigma == 0 for look in looks]) < 0.65  # blur in about half the draws


def test_appearance_identity_changes_nothing_and_each_factor_acts_as_named() -> None:
    img, _ = _scene()
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(apply_appearance(img, Appearance(), rng), img, atol=1)
    grey = apply_appearance(img, Appearance(saturation=0.0), rng).astype(int)
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1 and np.abs(grey[..., 1] - grey[..., 2]).max() <= 1

    def luma(x: np.ndarray) -> np.ndarray:
        return x.astype(float) @ np.array([0.299, 0.587, 0.114])

    hued = apply_appearance(img, Appearance(hue_deg=20.0), rng)
    assert np.abs(hued.astype(int) - img.astype(int)).max() > 3
    np.testing.assert_allclose(luma(hued), luma(img), atol=2)  # a hue rotation keeps the luma
    flat = apply_appearance(img, Appearance(contrast=0.6), rng)
    assert luma(flat).std() < 0.65 * luma(img).std() and abs(luma(flat).mean() - luma(img).mean()) < 2
    red = apply_appearance(img, Appearance(channel_gain=(1.3, 1.0, 0.8)), rng)
    assert red[..., 0].mean() > img[..., 0].mean() and red[..., 2].mean() < img[..., 2].mean()
    blurred = apply_appearance(img, Appearance(blur_sigma=1.5), rng)
    assert np.abs(np.diff(blurred.astype(int), axis=0)).mean() < np.abs(np.diff(img.astype(int), axis=0)).mean()


def test_appearance_brightness_of_mid_grey_stays_within_what_the_bounds_allow() -> None:
    """Gains and tone curve bound the luma of a mid-grey frame; palette, blur and noise keep its mean."""
    grey = np.full((32, 48, 3), 128, np.uint8)
    gain, gamma = APPEARANCE_BOUNDS["channel_gain"], APPEARANCE_BOUNDS["gamma"]
    low, high = (0.5 * gain[0]) ** gamma[1], (0.5 * gain[1]) ** gamma[0]
    rng = np.random.default_rng(5)
    for _ in range(200):
        out = render(grey, "appearance", rng).astype(float) / 255
        y = (out @ np.array([0.299, 0.587, 0.114])).mean()
        assert low - 0.02 <= y <= high + 0.02


def test_appearance_in_a_mix_keeps_labels_and_is_seeded() -> None:
    img, lab = _scene()
    images, labels = np.stack([img] * 8), np.stack([lab] * 8)
    mix = SynthMix.parse("appearance=0.5,dusk=0.2")
    assert mix is not None and mix.as_dict() == {"dusk": 0.2, "appearance": 0.5}
    a, conds = synthesize_batch(images, labels, mix, np.random.default_rng(2))
    b, _ = synthesize_batch(images, labels, mix, np.random.default_rng(2))
    c, _ = synthesize_batch(images, labels, mix, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert "appearance" in conds
    np.testing.assert_array_equal(labels, np.stack([lab] * 8))


def test_target_style_takes_the_targets_low_frequencies_and_keeps_the_edges() -> None:
    img, lab = _scene()
    style = np.clip(img.astype(int) * [0.5, 0.7, 1.2] + 30, 0, 255).astype(np.uint8)  # another palette
    out = apply_target_style(img, style, beta=0.05).astype(float)
    # The zero frequency is the mean: the output's colour is the target's.
    np.testing.assert_allclose(out.mean((0, 1)), style.mean((0, 1)), atol=3)
    # The phase is the source's: the sky/building/road boundaries stay where the labels say.
    edges = np.abs(np.diff(out.mean(2), axis=0)).mean(1)  # [H-1] row-to-row change
    assert set(np.argsort(edges)[-2:]) == {15, 27}
    np.testing.assert_allclose(apply_target_style(img, img, beta=0.05), img, atol=1)  # its own style: unchanged
    with pytest.raises(ConfigError, match="styles: style frame"):
        apply_target_style(img, style[:-1], beta=0.05)
    with pytest.raises(ConfigError, match="synth_mix.target_style: target_style renders"):
        render(img, "target_style", np.random.default_rng(0), label=lab)
    np.testing.assert_array_equal(lab, _scene()[1])


def test_training_refuses_target_style_without_target_frames() -> None:
    frames = make_frames(4)
    cfg = TrainConfig(epochs=1, batch_size=2, progress=False, synth_mix={"target_style": 0.5})
    model = build_ensemble(erfnet_arch(width=0.25, num_classes=11, members=1), seed=0)
    with pytest.raises(ConfigError, match="synth_mix.target_style"):
        train_ensemble(model, frames, cfg)
    result = train_ensemble(model, frames, cfg, styles=frames.images[::-1].copy())
    assert np.isfinite(result.history[-1]["loss"])
