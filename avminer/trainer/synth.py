"""Synthetic conditions on labeled frames (fog, dusk, night, rain, appearance, target style), labels unchanged.

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
  and a small exposure drop;
- **appearance**: domain randomization (Tobin et al., "Domain Randomization for Transferring Deep Neural
  Networks from Simulation to the Real World", IROS 2017; for segmentation across cities, Yue et al.,
  "Domain Randomization and Pyramid Consistency", ICCV 2019) of what a new geography changes besides the
  light: another camera's white balance and tone curve, the scene's palette (hue, saturation, contrast of
  paint, soil, vegetation, haze), the lens' sharpness and the sensor's noise. Each frame draws every
  factor at random within :data:`APPEARANCE_BOUNDS` (:class:`Appearance`), so the model cannot lean on
  the source cameras' colours, only on shapes and layout;
- **target_style**: Fourier domain adaptation (Yang and Soatto, "FDA: Fourier Domain Adaptation for
  Semantic Segmentation", CVPR 2020): the lowest spatial frequencies of the frame's amplitude spectrum
  (global colour, illumination, haze, coarse texture statistics) are replaced by those of a random
  *unlabeled target* frame, the phase (where the edges and objects are) kept. It needs target frames
  (``styles`` of :func:`synthesize_batch`); the window's half-size is drawn in :data:`STYLE_BETA`, as a
  share of the shorter image side.

Everything is numpy on uint8 ``[H, W, 3]`` frames and deterministic given the generator. The colour
temperature gains follow the usual black-body approximation (Tanner Helland's fit of the Planckian
locus), normalised to 6500 K.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from avminer.errors import ConfigError

CONDITIONS = ("fog", "dusk", "night", "rain", "appearance", "target_style")
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


# -- appearance randomization ---------------------------------------------------------------------------

APPEARANCE_BOUNDS: dict[str, tuple[float, float]] = {
    "channel_gain": (0.75, 1.33),  # per channel, log-uniform: white balance / exposure of another camera
    "gamma": (0.7, 1.43),  # log-uniform exponent of the tone curve on [0, 1] values
    "contrast": (0.6, 1.4),  # deviations from the frame's mean luma scaled by this
    "saturation": (0.4, 1.6),  # chroma scaled by this (0: grey)
    "hue_deg": (-20.0, 20.0),  # chroma rotated by this angle (degrees)
    "blur_sigma": (0.0, 1.5),  # Gaussian blur (pixels); zero in half the draws
    "noise_std": (0.0, 0.04),  # Gaussian noise, share of full scale
}
"""Range of every appearance factor (:class:`Appearance`): wide enough to cover a camera and country change,
narrow enough that a person still reads the scene (a road stays darker than the sky it lies under)."""

# RGB -> YIQ (NTSC): luma plus two chroma axes; a hue change is a rotation in the (I, Q) plane.
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_INV = np.linalg.inv(_YIQ).astype(np.float32)


@dataclass(frozen=True)
class Appearance:
    """One draw of the appearance randomization (each factor within :data:`APPEARANCE_BOUNDS`).

    Attributes:
        channel_gain: RGB gains on [0, 1] values.
        gamma: tone-curve exponent (``v ** gamma``).
        contrast: scale of deviations from the mean luma.
        saturation: scale of the chroma.
        hue_deg: rotation of the chroma (degrees).
        blur_sigma: Gaussian blur sigma in pixels (0: none).
        noise_std: standard deviation of added Gaussian noise (share of full scale).
    """

    channel_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue_deg: float = 0.0
    blur_sigma: float = 0.0
    noise_std: float = 0.0

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Appearance:
        """Every factor drawn independently within :data:`APPEARANCE_BOUNDS` (multiplicative ones log-uniformly)."""
        b = APPEARANCE_BOUNDS

        def log_uniform(name: str, size: int | None = None) -> Any:
            low, high = b[name]
            return np.exp(rng.uniform(math.log(low), math.log(high), size))

        gains = log_uniform("channel_gain", 3)
        blur = float(rng.uniform(*b["blur_sigma"])) if rng.random() < 0.5 else 0.0
        return cls(channel_gain=(float(gains[0]), float(gains[1]), float(gains[2])), gamma=float(log_uniform("gamma")),
                   contrast=float(rng.uniform(*b["contrast"])), saturation=float(rng.uniform(*b["saturation"])),
                   hue_deg=float(rng.uniform(*b["hue_deg"])), blur_sigma=blur, noise_std=float(rng.uniform(*b["noise_std"])))


def _gaussian_blur(values: NDArray[np.float32], sigma: float) -> NDArray[np.float32]:
    """Separable Gaussian blur of [H, W, C] values, edges replicated."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    out = values
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, t in enumerate(taps):
            acc += t * np.take(padded, np.arange(i, i + n), axis=axis)
        out = acc
    return out


def apply_appearance(image: NDArray[np.uint8], look: Appearance, rng: np.random.Generator) -> NDArray[np.uint8]:
    """``image`` seen through ``look``: gains, tone curve, contrast, saturation and hue, blur, then noise.

    The steps run in the order a camera and a scene would apply them: the illuminant and white balance
    scale the channels, the tone curve maps them, the palette (contrast around the mean luma, chroma scale
    and rotation in YIQ, which leave the luma alone) changes what is painted, then the lens blurs and the
    sensor adds noise. ``rng`` draws only the noise.
    """
    v = image.astype(np.float32) / 255.0
    v = np.clip(v * np.asarray(look.channel_gain, np.float32)[None, None, :], 0.0, 1.0) ** np.float32(look.gamma)
    yiq = v @ _YIQ.T  # [H, W, 3]: luma, I, Q
    luma = yiq[..., 0]
    yiq[..., 0] = luma.mean() + look.contrast * (luma - luma.mean())
    angle = math.radians(look.hue_deg)
    cos, sin = math.cos(angle) * look.saturation, math.sin(angle) * look.saturation
    i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
    yiq[..., 1], yiq[..., 2] = cos * i - sin * q, sin * i + cos * q
    v = yiq @ _YIQ_INV.T
    if look.blur_sigma > 0:
        v = _gaussian_blur(v, look.blur_sigma)
    if look.noise_std > 0:
        v = v + rng.standard_normal(v.shape, dtype=np.float32) * np.float32(look.noise_std)
    out: NDArray[np.uint8] = (np.clip(v, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out


# -- target style (FDA) ----------------------------------------------------------------------------------

STYLE_BETA = (0.01, 0.05)
"""Half-size of the swapped low-frequency window, as a share of the shorter image side: the lower part of FDA's
0.01-0.09; at 144x192 a window of 0.09 (13 frequencies) already paints blotches over the frame."""


def apply_target_style(image: NDArray[np.uint8], style: NDArray[np.uint8], beta: float) -> NDArray[np.uint8]:
    """``image`` with the low-frequency amplitude spectrum of ``style`` (same shape), its own phase kept.

    Args:
        image: uint8 [H, W, 3] labeled frame.
        style: uint8 [H, W, 3] unlabeled target frame.
        beta: half-size of the centred square window of frequencies taken from ``style``, as a share of
            ``min(H, W)`` (at least one frequency either side of zero).
    """
    if style.shape != image.shape:
        raise ConfigError(f"style frame {style.shape} must match the image {image.shape}", "styles")
    h, w = image.shape[:2]
    spectrum = np.fft.fft2(image.astype(np.float32), axes=(0, 1))  # [H, W, 3] complex
    style_amp = np.abs(np.fft.fft2(style.astype(np.float32), axes=(0, 1)))
    amp, phase = np.abs(spectrum), np.angle(spectrum)
    b = max(1, int(math.floor(min(h, w) * beta)))
    # Low frequencies sit at the corners of an unshifted spectrum: rows/columns 0..b and -b..-1.
    rows = np.r_[0 : b + 1, h - b : h]
    cols = np.r_[0 : b + 1, w - b : w]
    amp[np.ix_(rows, cols)] = style_amp[np.ix_(rows, cols)]
    out = np.real(np.fft.ifft2(amp * np.exp(1j * phase), axes=(0, 1)))
    result: NDArray[np.uint8] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return result


def render(
    image: NDArray[np.uint8], condition: str, rng: np.random.Generator, *, label: NDArray[np.uint8] | None = None,
    fog_beta: tuple[float, float] = (0.005, 0.03), styles: NDArray[np.uint8] | None = None,
) -> NDArray[np.uint8]:
    """``image`` rendered in ``condition`` (``clear`` returns it unchanged).

    Args:
        image: uint8 [H, W, 3].
        condition: one of :data:`CONDITIONS` or ``clear``.
        rng: generator.
        label: CamVid class ids [H, W] refining the fog depth, or None.
        fog_beta: fog density range (1/m), drawn log-uniformly.
        styles: uint8 [N, H, W, 3] unlabeled target frames (``target_style`` draws one).

    Raises:
        ConfigError: an unknown condition, or ``target_style`` without ``styles``.
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
    if condition == "appearance":
        return apply_appearance(image, Appearance.draw(rng), rng)
    if condition == "target_style":
        if styles is None or not len(styles):
            raise ConfigError("target_style renders labeled frames in the style of unlabeled target frames; "
                              "none were given (adaptation with --target frames)", "synth_mix.target_style")
        return apply_target_style(image, styles[int(rng.integers(len(styles)))], float(rng.uniform(*STYLE_BETA)))
    raise ConfigError(f"unknown synthetic condition {condition!r}; known: {list(CONDITIONS)}")


def synthesize_batch(
    images: NDArray[np.uint8], labels: NDArray[np.uint8], mix: SynthMix, rng: np.random.Generator,
    fine_classes: int = 11, styles: NDArray[np.uint8] | None = None,
) -> tuple[NDArray[np.uint8], list[str]]:
    """Render each frame of a batch in the condition the mix draws for it; labels are not touched.

    Args:
        images: uint8 [B, H, W, 3].
        labels: uint8 [B, H, W] (fine ids refine the fog depth; frames with coarse labels use the row model).
        mix: the mixing ratios.
        rng: generator.
        fine_classes: number of fine classes (labels above it are void or coarse).
        styles: uint8 [N, H, W, 3] unlabeled target frames for ``target_style``.

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
        out[i] = render(images[i], cond, rng, label=lab if fine else None, fog_beta=mix.fog_beta, styles=styles)
    return out, conditions
