"""Typed records for every event on avminer's wire.

Each dataclass mirrors one Avro schema in ``schemas/`` (namespace ``avminer.v1``; the schema's name is
the class name). Field docs live in the ``.avsc`` files; the codec (:mod:`avminer.events.codec`) maps
records to and from bytes. Timestamps are integer microseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


def sample_id(vehicle_id: str, camera_id: str, timestamp_us: int) -> str:
    """Deterministic id of one camera frame: the same frame replayed always gets the same id.

    Every sink is idempotent on this id (at-least-once delivery upstream).
    """
    key = f"{vehicle_id}\x1f{camera_id}\x1f{timestamp_us}".encode()
    return hashlib.sha256(key).hexdigest()[:32]


@dataclass(slots=True)
class GpsFix:
    lat: float
    lon: float
    alt_m: float = 0.0
    heading_deg: float = 0.0
    speed_mps: float = 0.0


@dataclass(slots=True)
class Conditions:
    """Condition metadata when the vehicle knows it; None fields are inferred by the miner."""

    time_of_day: str | None = None  # day | dusk | night
    weather: str | None = None  # clear | fog | rain | snow
    road_type: str | None = None  # urban | highway | rural
    region: str | None = None  # named region or geohash prefix


@dataclass(slots=True)
class CameraFrame:
    vehicle_id: str
    camera_id: str
    timestamp_us: int
    frame_id: str
    width: int
    height: int
    image: bytes | None = None  # encoded bytes (JPEG/PNG), or None when image_uri is set
    image_uri: str | None = None  # s3://bucket/key or file:// URI
    encoding: str = "jpeg"
    gps: GpsFix | None = None
    conditions: Conditions | None = None
    # Provenance of synthetic variants and other free-form tags, e.g. {"fog_beta": "0.02"}.
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def sample_id(self) -> str:
        return sample_id(self.vehicle_id, self.camera_id, self.timestamp_us)


@dataclass(slots=True)
class RadarDetection:
    range_m: float
    azimuth_rad: float  # positive to the left of the boresight
    elevation_rad: float
    radial_velocity_mps: float
    rcs_dbsm: float


@dataclass(slots=True)
class RadarScan:
    vehicle_id: str
    sensor_id: str
    timestamp_us: int
    detections: list[RadarDetection] = field(default_factory=list)
    simulated: bool = False


@dataclass(slots=True)
class LabelRequest:
    sample_id: str
    frame_id: str
    frame_uri: str
    vehicle_id: str
    camera_id: str
    timestamp_us: int
    slice: str  # "time_of_day/weather/region"
    model_version: str
    reasons: list[str] = field(default_factory=list)  # uncertainty | shift | radar | novelty
    scores: dict[str, float] = field(default_factory=dict)
    priority: float = 0.0
    requested_at_us: int = 0
    uncertainty_uri: str | None = None


@dataclass(slots=True)
class LabelResult:
    sample_id: str
    labeler: str
    labeled_at_us: int
    mask_uri: str | None = None  # PNG of class ids (void = 11), or
    mask_png: bytes | None = None  # the same PNG inline
    frame_id: str | None = None


@dataclass(slots=True)
class ModelRelease:
    version: str
    bundle_uri: str  # s3://bucket/releases/<version>/ or file:///...
    manifest_sha256: str
    created_at_us: int
    members: int
    dataset_id: str | None = None
    gate_report: str | None = None  # JSON: mIoU per slice, candidate vs production
    notes: str = ""


@dataclass(slots=True)
class Decision:
    sample_id: str
    frame_id: str
    vehicle_id: str
    camera_id: str
    timestamp_us: int
    model_version: str
    slice: str
    mined: bool
    scores: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    decided_at_us: int = 0


RECORD_TYPES: tuple[type, ...] = (CameraFrame, RadarScan, LabelRequest, LabelResult, ModelRelease, Decision)
