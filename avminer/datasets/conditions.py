"""Condition synthesis: fog and night variants of clear day frames, with their parameters in each frame's metadata.

Condition models, with their parameters written into each frame's ``metadata``:

- fog (:func:`apply_fog`): Koschmieder's atmospheric scattering model as used by Foggy Cityscapes,
  ``I = J * t + A * (1 - t)``, transmittance ``t = exp(-beta * d)`` with the ground-plane depth ``d``
  of :class:`avminer.geometry.CameraModel` (``beta`` in 1/m; 0.02 gives a visibility of ~150 m), airlight ``A`` estimated from the
  brightest dark-channel pixels (He et al. 2009) unless given;
- night (:func:`apply_night`): sRGB -> linear (``gamma``), scene illumination scaled by
  ``illumination``, photon shot noise (Poisson, ``full_well_e`` electrons at full scale), Gaussian read
  noise (``read_noise_e``), digital gain (``exposure_gain``), back to sRGB; seeded per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avminer.errors import DatasetError
from avminer.geometry import DEFAULT_CAMERA, CameraModel


def estimate_airlight(image: np.ndarray, fraction: float = 0.001) -> float:
    """Airlight A in [0, 1]: mean intensity of the pixels with the brightest dark channel (He et al. 2009).

    Clipped to [0.6, 1.0] so a dark frame still gets a plausible grey fog.
    """
    dark = np.minimum(np.minimum(image[..., 0], image[..., 1]), image[..., 2])  # [H, W] dark channel, uint8
    counts = np.bincount(dark.ravel(), minlength=256)[::-1].cumsum()  # pixels at or above each level, 255 down
    level = 255 - int(np.searchsorted(counts, max(1, int(dark.size * fraction))))
    brightest = image[dark >= level]  # [k, 3]
    return float(np.clip(brightest.mean() / 255.0, 0.6, 1.0))


def apply_fog(
    image: np.ndarray,
    beta: float,
    *,
    camera: CameraModel = DEFAULT_CAMERA,
    airlight: float | None = None,
    label: np.ndarray | None = None,
) -> np.ndarray:
    """Synthetic fog: ``I = J * t + A * (1 - t)``, ``t = exp(-beta * d)``, d from the camera model.

    Args:
        image: uint8 RGB ``[H, W, 3]`` (the clear scene J).
        beta: attenuation coefficient in 1/m (Foggy Cityscapes uses 0.005, 0.01, 0.02).
        camera: geometry for the depth d (:meth:`CameraModel.depth_map`).
        airlight: A in [0, 1]; default :func:`estimate_airlight`.
        label: optional class ids ``[H, W]`` (CamVid ids) refining the depth: objects stand on the
            ground, sky is far (:meth:`CameraModel.depth_map`).

    Returns:
        uint8 RGB ``[H, W, 3]``.
    """
    if not beta >= 0:
        raise DatasetError(f"fog beta must be >= 0 (1/m), got {beta}")
    h, w = image.shape[:2]
    a = estimate_airlight(image) if airlight is None else float(airlight)
    depth = camera.depth_map(h, w, label if label is not None and label.shape == (h, w) else None)  # [H, W]
    t = np.exp(np.float32(-beta) * depth)[:, :, None]  # [H, W, 1] transmittance
    # In 0..255 units: I = J * t + 255 A (1 - t); +0.5 rounds on the cast.
    fogged = image * t  # [H, W, 3] float32
    fogged += np.float32(255.0 * a + 0.5) - np.float32(255.0 * a) * t
    return np.clip(fogged, 0, 255, out=fogged).astype(np.uint8)


@dataclass(frozen=True)
class NightModel:
    """Parameters of :func:`apply_night` (documented in the module docstring)."""

    gamma: float = 2.2
    illumination: float = 0.06
    exposure_gain: float = 4.0
    full_well_e: float = 600.0
    read_noise_e: float = 3.0

    def metadata(self, seed: int) -> dict[str, str]:
        return {
            "night_gamma": f"{self.gamma:g}", "night_illumination": f"{self.illumination:g}",
            "night_exposure_gain": f"{self.exposure_gain:g}", "night_full_well_e": f"{self.full_well_e:g}",
            "night_read_noise_e": f"{self.read_noise_e:g}", "night_seed": str(seed),
        }


def apply_night(image: np.ndarray, *, model: NightModel = NightModel(), seed: int = 0) -> np.ndarray:
    """Synthetic low light: darker linear scene, shot and read noise, digital gain (deterministic per seed).

    Args:
        image: uint8 RGB ``[H, W, 3]``.
        model: gamma, illumination, exposure gain, full-well capacity and read noise.
        seed: noise seed (the same seed gives the same image).

    Returns:
        uint8 RGB ``[H, W, 3]``.
    """
    rng = np.random.default_rng(seed)
    # Expected photo-electrons per sRGB code value: linearise (gamma), dim, scale to the full well.
    expected = (np.arange(256, dtype=np.float64) / 255.0) ** model.gamma * model.illumination * model.full_well_e
    electrons = rng.poisson(expected[image]).astype(np.float32)  # [H, W, 3] shot noise
    electrons += rng.standard_normal(electrons.shape, dtype=np.float32) * np.float32(model.read_noise_e)
    # Digital gain, then back to sRGB through a 12-bit lookup table (a pow per pixel costs more).
    levels = 4095
    code = np.clip(electrons * np.float32(model.exposure_gain * levels / model.full_well_e), 0, levels)
    to_srgb = ((np.arange(levels + 1) / levels) ** (1.0 / model.gamma) * 255.0 + 0.5).astype(np.uint8)
    night: np.ndarray = to_srgb[code.astype(np.int32)]  # [H, W, 3] uint8
    return night

