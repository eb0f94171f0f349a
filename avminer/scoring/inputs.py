"""What scoring reads of a frame and its radar scan: small read-only Protocols, so scoring stays pure numpy.

The event records (:mod:`avminer.events.records`) satisfy them structurally; scoring never imports
them, and tests may pass any object with these attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class ConditionTags(Protocol):
    """Condition metadata a vehicle sent (any field may be None: inferred then)."""

    @property
    def time_of_day(self) -> str | None: ...

    @property
    def weather(self) -> str | None: ...

    @property
    def region(self) -> str | None: ...


class Position(Protocol):
    """A GPS fix: degrees, and the vehicle's speed in m/s."""

    @property
    def lat(self) -> float: ...

    @property
    def lon(self) -> float: ...

    @property
    def speed_mps(self) -> float: ...


class RadarReturn(Protocol):
    """One radar detection (azimuth positive to the left of the boresight)."""

    @property
    def range_m(self) -> float: ...

    @property
    def azimuth_rad(self) -> float: ...

    @property
    def elevation_rad(self) -> float: ...

    @property
    def radial_velocity_mps(self) -> float: ...


class RadarSweep(Protocol):
    """A radar scan joined to a frame."""

    @property
    def detections(self) -> Sequence[RadarReturn]: ...


class FrameInfo(Protocol):
    """The frame-level facts scoring uses besides pixels: native size, position, condition metadata."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def gps(self) -> Position | None: ...

    @property
    def conditions(self) -> ConditionTags | None: ...
