"""Simulated radar: detections from a label map (object blobs on the ground plane plus static clutter).

The geometry is :class:`avminer.geometry.CameraModel` (radar co-located with the camera, same field of
view); the parameters are :class:`RadarModel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from avminer.events.records import RadarDetection
from avminer.geometry import DEFAULT_CAMERA, CameraModel, connected_blobs


@dataclass(frozen=True)
class RadarModel:
    """Parameters of :func:`simulate_radar`: per-class RCS (mean, sd) in dBsm and speed spread in m/s."""

    classes: tuple[tuple[int, str, float, float, float], ...] = (
        (8, "car", 10.0, 3.0, 4.0),
        (9, "pedestrian", -8.0, 2.0, 0.8),
        (10, "bicyclist", -3.0, 2.0, 2.5),
    )
    min_area_px: int = 30
    max_range_m: float = 150.0
    range_sd_m: float = 0.15
    azimuth_sd_rad: float = math.radians(0.3)
    clutter_rate: float = 6.0  # mean clutter detections per scan (Poisson)
    clutter_rcs: tuple[float, float] = (-12.0, 4.0)


def simulate_radar(
    label: np.ndarray,
    *,
    ego_speed_mps: float,
    rng: np.random.Generator,
    camera: CameraModel = DEFAULT_CAMERA,
    model: RadarModel = RadarModel(),
) -> list[RadarDetection]:
    """Radar detections from a label map: object blobs on the ground plane plus static clutter.

    Each car / pedestrian / bicyclist blob (8-connected, at least ``min_area_px``) becomes 1 detection
    (cars: up to 3, spread over the blob's width) at the ground point under its bottom row: range and
    azimuth from the pinhole ground-plane model (radar co-located with the camera, same field of
    view). Radial velocity = object speed along the line of sight (parked cars 0, else drawn per class)
    minus the ego speed projected on it; RCS drawn per class. Clutter: Poisson(``clutter_rate``) static
    returns uniform in range 3-100 m over the field of view.

    Args:
        label: uint8 class ids ``[H, W]``.
        ego_speed_mps: the vehicle's speed (static things approach at ``-v * cos(azimuth)``).
        rng: randomness (seed it per frame for reproducible scans).
        camera: shared geometry.
        model: class RCS, noise and clutter parameters.
    """
    h, w = label.shape
    out: list[RadarDetection] = []
    for class_id, name, rcs_mean, rcs_sd, speed_sd in model.classes:
        for blob in connected_blobs(label == class_id):
            if blob.area < model.min_area_px:
                continue
            moving = not (name == "car" and rng.random() < 0.5)  # about half of CamVid's cars are parked
            obj_radial = float(rng.normal(0.0, speed_sd)) if moving else 0.0
            points = 1 if name != "car" else 1 + min(2, blob.area // 3000)
            for k in range(points):
                col = blob.col_min + (blob.col_max - blob.col_min) * (k + 1) / (points + 1)
                ground = camera.ground_point(blob.row_max + 1.0, col, h, w)
                if ground is None or ground[0] > model.max_range_m:
                    continue
                rng_m, az = ground
                out.append(RadarDetection(
                    range_m=float(max(0.5, rng_m + rng.normal(0.0, model.range_sd_m))),
                    azimuth_rad=float(az + rng.normal(0.0, model.azimuth_sd_rad)),
                    elevation_rad=float(rng.normal(0.02, 0.02)),
                    radial_velocity_mps=float(obj_radial - ego_speed_mps * math.cos(az) + rng.normal(0.0, 0.1)),
                    rcs_dbsm=float(rng.normal(rcs_mean, rcs_sd)),
                ))
    half_fov = math.radians(camera.hfov_deg) / 2.0
    for _ in range(int(rng.poisson(model.clutter_rate))):
        az = float(rng.uniform(-half_fov, half_fov))
        out.append(RadarDetection(
            range_m=float(rng.uniform(3.0, 100.0)),
            azimuth_rad=az,
            elevation_rad=float(rng.normal(0.0, 0.05)),
            radial_velocity_mps=float(-ego_speed_mps * math.cos(az) + rng.normal(0.0, 0.2)),
            rcs_dbsm=float(rng.normal(*model.clutter_rcs)),
        ))
    return out

