"""Synthetic conditions: each renders a plausible change of the pixels, labels untouched, mix validated."""

from __future__ import annotations

import numpy as np
import pytest

from avminer.errors import ConfigError
from avminer.trainer.synth import CONDITIONS, SynthMix, render, synthesize_batch, temperature_gains
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
    a = render(img, condition, np.random.default_rng(7), label=lab)
    b = render(img, condition, np.random.default_rng(7), label=lab)
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
    from avminer.models import build_ensemble, erfnet_arch

    frames = make_frames(8)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, beta=0.0, progress=False, synth_mix={"dusk": 0.5, "fog": 0.3})
    result = train_ensemble(build_ensemble(erfnet_arch(width=0.25, num_classes=11, members=2), seed=0), frames, cfg)
    losses = [h["loss"] for h in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
