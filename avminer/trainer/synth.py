"""Synthetic conditions on labeled frames: fog, dusk, night and rain, labels carried over unchanged.

A fleet's model trained on clear day frames halves its mIoU at dusk; the cheapest labels for a new
condition are the ones we already have, re-rendered. Each training frame is, with the probability its
condition has in the mix (:class:`SynthMix`), replaced by a synthetic version of itself:

- **fog**: the project's scattering model with depth (:func:`avminer.datasets.conditions.apply_fog`, depth from
  the camera model refined by the CamVid label where the label is in CamVid ids), density drawn
  log-uniformly in ``fog_beta`` (1/m);
- **dusk**: photometry of a camera at low sun: exposure drop in linear light, a colour temperature shift
  (warm low sun or blue hour), gamma (tone curve) jitter, sensor noise (Poisson shot noise + Gaussian read
  noise at the reduced exposure), and glare from a few street lights and headlights near the horizon
  (additive Gaussian blooms);
- **night**: :func:`avminer.datasets.conditions.apply_night` (dim linear scene, shot/read noise, gain) with
  glare added the same way, stronger;
- **rain** (optional): slanted bright streaks blurred along their direction, over a light veil of fog
  and a small exposure drop.

Everything is numpy on uint8 ``[H, W, 3]`` frames and deterministic given the generator. The colour
temperature gains follow the usual black-body approximation (Tanner Helland's fit of the Planckian
locus), normalised to 6500 K.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from avminer.errors import ConfigError

CONDITIONS = ("fog", "dusk", "night", "rain")
"""Synthetic conditions, in the order the mixing draw walks them."""


@dataclass(frozen=True)
class SynthMix:
    """Share of training frames rendered in each synthetic condition (the rest stay as they are).

    Attributes:
        ratios: condition -> probability that a training frame is rendered in it (each in [0, 1], the
            sum at most 1).
        fog_beta: (low, high) fog density in 1/m, drawn log-uniformly.
    """

    ratios: Mapping[str, float]
    fog_beta: tuple[float, float] = (0.005, 0.03)

    @classmethod
    def parse(cls, value: str | Mapping[str, float] | None, field: str = "synth_mix") -> SynthMix | None:
        """From ``"fog=0.2,dusk=0.3"`` or a dict; None or empty -> None.

        Raises:
            ConfigError: unknown condition, a ratio outside [0, 1], or ratios summing over 1; the message
                names ``field.condition``.
        """
        if value is None or value == "" or (isinstance(value, Mapping) and not value):
            return None
        ratios: dict[str, float] = {}
        if isinstance(value, str):
            for part in value.split(","):
                name, sep, num = part.partition("=")
                try:
                    if not sep:
                        raise ValueError
                    ratios[name.strip()] = float(num)
                except ValueError:
                    raise ConfigError(f"expected condition=ratio like fog=0.2, got {part!r}", field) from None
        else:
            ratios = {str(k): float(v) for k, v in value.items()}
        mix = cls(ratios)
        mix.validate(field)
        return mix

    def validate(self, field: str = "synth_mix") -> None:
        """Raise :class:`ConfigError` naming the offending field."""
        for name, ratio in self.ratios.items():
            if name not in CONDITIONS:
                raise ConfigError(f"unknown synthetic condition {name!r}; known: {list(CONDITIONS)}", f"{field}.{name}")
            if not (0.0 <= ratio <= 1.0):
                raise ConfigError(f"must be in [0, 1], got {ratio}", f"{field}.{name}")
        total = sum(self.ratios.values())
        if total > 1.0 + 1e-9:
            raise ConfigError(f"ratios sum to {total:g}; at most 1 (the rest of the frames stay clear)", field)
        low, high = self.fog_beta
        if not (0 < low <= high):
            raise ConfigError(f"fog density range must satisfy 0 < low <= high, got {self.fog_beta}", f"{field}.fog_beta")

    def as_dict(self) -> dict[str, float]:
        return {k: float(self.ratios[k]) for k in CONDITIONS if k in self.ratios}

    def draw(self, n: int, rng: np.random.Generator) -> list[str]:
        """A condition per frame (``"clear"`` for frames left as they are)."""
        edges = np.cumsum([self.ratios.get(c, 0.0) for c in CONDITIONS])
        u = rng.random(n)
        out = []
        for x in u:
            i = int(np.searchsorted(edges, x, side="right"))
            out.append(CONDITIONS[i] if i < len(CONDITIONS) else "clear")
        return out


# -- photometry ---------------------------------------------------------------------------------------

_GAMMA = 2.2


def _to_linear(image: NDArray[np.uint8]) -> NDArray[np.float32]:
    return ((image.astype(np.float32) / 255.0) ** _GAMMA).astype(np.float32)


def _to_srgb(linear: NDArray[np.float32], gamma: float = _GAMMA) -> NDArray[np.uint8]:
    out = np.clip(linear, 0.0, 1.0) ** (1.0 / gamma) * 255.0 + 0.5
    return out.astype(np.uint8)


def temperature_gains(kelvin: float) -> NDArray[np.float32]:
    """Per-channel RGB gains of a black-body illuminant at ``kelvin``, relative to 6500 K (green = 1)."""

    def rgb(k: float) -> NDArray[np.float64]:
        t = k / 100.0
        r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
        g = 99.4708025861 * math.log(t) - 161.1195681661 if t <= 66 else 288.1221695283 * (t - 60) ** -0.0755148492
        b = 255.0 if t >= 66 else (0.0 if t <= 19 else 138.5177312231 * math.log(t - 10) - 305.0447927307)
        return np.clip(np.array([r, g, b], dtype=np.float64), 1.0, 255.0)

    gains = rgb(kelvin) / rgb(6500.0)
    out: NDArray[np.float32] = (gains / gains[1]).astype(np.float32)
    return out


def _sensor_noise(linear: NDArray[np.float32], full_well_e: float, read_noise_e: float,
                  rng: np.random.Generator) -> NDArray[np.float32]:
    """Poisson shot noise and Gaussian read noise on a linear image in [0, 1] (full well = 1)."""
    electrons = rng.poisson(np.clip(linear, 0, None) * full_well_e).astype(np.float32)
    electrons += rng.standard_normal(linear.shape, dtype=np.float32) * np.float32(read_noise_e)
    return electrons / np.float32(full_well_e)


def add_glare(linear: NDArray[np.float32], rng: np.random.Generator, count: int, strength: float) -> NDArray[np.float32]:
    """Additive Gaussian blooms of ``count`` lights near the horizon band (street lights, headlights).

    Args:
        linear: float32 [H, W, 3] linear image.
        rng: generator.
        count: number of lights.
        strength: peak added radiance of a light (linear units).
    """
    h, w = linear.shape[:2]
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    out = linear.copy()
    for _ in range(count):
        cy = rng.uniform(0.3, 0.6) * h  # lights sit around the horizon (camera model: row H/2)
        cx = rng.uniform(0, w)
        sigma = rng.uniform(0.01, 0.04) * w
        colour = temperature_gains(float(rng.uniform(2700, 5000)))  # sodium/LED street lights, halogen headlights
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))  # [H, W]
        out += (strength * rng.uniform(0.5, 1.0)) * blob[:, :, None] * colour[None, None, :]
    return out


def apply_dusk(image: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
    """Dusk photometry: exposure, colour temperature, tone curve, sensor noise and glare (see module docs)."""
    linear = _to_linear(image)
    exposure = float(np.exp(rng.uniform(math.log(0.08), math.log(0.4))))  # 1.3-3.6 stops darker
    kelvin = float(rng.choice([rng.uniform(2500, 4000), rng.uniform(7500, 11000)]))  # low sun or blue hour
    linear = linear * exposure * temperature_gains(kelvin)[None, None, :]
    linear = add_glare(linear, rng, count=int(rng.integers(0, 5)), strength=float(rng.uniform(0.2, 0.8)))
    linear = _sensor_noise(linear, full_well_e=float(rng.uniform(300, 2000)), read_noise_e=float(rng.uniform(1, 4)), rng=rng)
    # The camera's auto-exposure recovers part of the drop (digital gain), amplifying the noise with it.
    gain = float(rng.uniform(1.0, 1.0 / math.sqrt(exposure)))
    return _to_srgb(linear * gain, gamma=_GAMMA * float(rng.uniform(0.85, 1.15)))


def apply_synthetic_night(image: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
    """The dataset tools' night model, plus headlight/street-light glare."""
    from avminer.datasets.conditions import NightModel, apply_night

    model = NightModel(illumination=float(rng.uniform(0.03, 0.12)), exposure_gain=float(rng.uniform(2.5, 6.0)))
    night = apply_night(image, model=model, seed=int(rng.integers(0, 2**31 - 1)))
    linear = add_glare(_to_linear(night), rng, count=int(rng.integers(1, 7)), strength=float(rng.uniform(0.5, 1.5)))
    return _to_srgb(linear)


def apply_rain(image: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
    """Rain: a light veil of fog, a small exposure drop and bright slanted streaks blurred along their slant."""
    from avminer.datasets.conditions import apply_fog

    h, w = image.shape[:2]
    veiled = apply_fog(image, float(rng.uniform(0.002, 0.008)))
    linear = _to_linear(veiled) * float(rng.uniform(0.6, 0.9))
    streaks = np.zeros((h, w), np.float32)
    n = int(rng.uniform(0.002, 0.01) * h * w)
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    streaks[ys, xs] = rng.uniform(0.3, 1.0, n).astype(np.float32)
    # Motion blur along the fall direction: sum shifted copies (a line kernel of `length` pixels).
    length = max(3, int(rng.uniform(0.03, 0.08) * h))
    slant = float(rng.uniform(-0.3, 0.3))  # horizontal pixels per vertical pixel
    blurred = np.zeros_like(streaks)
    for t in range(length):
        blurred += np.roll(np.roll(streaks, t, axis=0), int(round(t * slant)), axis=1)
    blurred /= length
    linear = linear + float(rng.uniform(0.3, 0.7)) * blurred[:, :, None]
    return _to_srgb(linear)


def render(
    image: NDArray[np.uint8], condition: str, rng: np.random.Generator, *, label: NDArray[np.uint8] | None = None,
    fog_beta: tuple[float, float] = (0.005, 0.03),
) -> NDArray[np.uint8]:
    """``image`` rendered in ``condition`` (``clear`` returns it unchanged).

    Args:
        image: uint8 [H, W, 3].
        condition: one of :data:`CONDITIONS` or ``clear``.
        rng: generator.
        label: CamVid class ids [H, W] refining the fog depth, or None.
        fog_beta: fog density range (1/m), drawn log-uniformly.
    """
    from avminer.datasets.conditions import apply_fog

    if condition == "clear":
        return image
    if condition == "fog":
        beta = float(np.exp(rng.uniform(math.log(fog_beta[0]), math.log(fog_beta[1]))))
        return apply_fog(image, beta, label=label)
    if condition == "dusk":
        return apply_dusk(image, rng)
    if condition == "night":
        return apply_synthetic_night(image, rng)
    if condition == "rain":
        return apply_rain(image, rng)
    raise ConfigError(f"unknown synthetic condition {condition!r}; known: {list(CONDITIONS)}")


def synthesize_batch(
    images: NDArray[np.uint8], labels: NDArray[np.uint8], mix: SynthMix, rng: np.random.Generator,
    fine_classes: int = 11,
) -> tuple[NDArray[np.uint8], list[str]]:
    """Render each frame of a batch in the condition the mix draws for it; labels are not touched.

    Args:
        images: uint8 [B, H, W, 3].
        labels: uint8 [B, H, W] (fine ids refine the fog depth; frames with coarse labels use the row model).
        mix: the mixing ratios.
        rng: generator.
        fine_classes: number of fine classes (labels above it are void or coarse).

    Returns:
        (new uint8 [B, H, W, 3] images, the condition drawn per frame).
    """
    conditions = mix.draw(len(images), rng)
    out = images.copy()
    for i, cond in enumerate(conditions):
        if cond == "clear":
            continue
        lab = labels[i]
        fine = bool((lab <= fine_classes).all())  # fine ids or void only: the label is in CamVid ids
        out[i] = render(images[i], cond, rng, label=lab if fine else None, fog_beta=mix.fog_beta)
    return out, conditions
