"""What the trainer measured of a release, per condition, as a priority offset for the condition's frames.

The release gates (:mod:`avminer.trainer.gates`) score every candidate per condition on held-out labels:
one gate slice per time of day, ``fog``, ``region:<name>`` and ``all``. A released bundle carries its own
figures (``manifest["gate_quality"]``: mIoU and frames per gate slice, :func:`quality_manifest`), so every
miner that hot-swaps to it learns where the model is measured to be weak, without a second channel.

A frame's slice key ``time_of_day/weather/region`` belongs to the gate slices :func:`condition_groups`
names. Its quality is the **worst** of theirs (the fleet's goal is no failing condition, not a good
average), each shrunk towards ``all`` by :data:`PRIOR_FRAMES` pseudo-frames (a gate slice measured on two
held-out frames says little): ``m = (n m_g + k m_all) / (n + k)``. The offset added to the frame's priority
is ``weight x log10(m_all / m)``, clipped to :data:`OFFSET_RANGE`: priorities are sums of ``-log10`` tail
fractions, so a condition at half the fleet's mIoU counts its frames as if each were twice as rare. A
condition the gates never measured gets no offset (shift and MI still rank it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from avminer.errors import SelectionError

ALL = "all"
FOG = "fog"
PRIOR_FRAMES = 8.0
"""Pseudo-frames at the ``all`` mIoU that shrink a gate slice's mIoU (its own frames weigh as much each)."""
OFFSET_RANGE = (-0.5, 1.0)
"""Bounds of the priority offset (``log10`` units, before the weight): -0.5 for a condition at 3.2x the ``all``
mIoU or better, +1 for one at a tenth of it or worse."""
MIOU_FLOOR = 0.02
"""mIoU below which a condition counts as this bad (keeps the ratio finite)."""


def condition_groups(slice_key: str) -> list[str]:
    """The gate slices a frame of ``slice_key`` (``time_of_day/weather/region``) counts towards, ``all`` aside.

    ``unknown`` parts name none; fog weather names ``fog``; a region names ``region:<name>``.
    """
    tod, weather, region = (slice_key.split("/") + ["unknown", "unknown"])[:3]
    keys = [tod] if tod and tod != "unknown" else []
    if weather == FOG:
        keys.append(FOG)
    if region and region != "unknown":
        keys.append(f"region:{region}")
    return keys


def quality_manifest(miou: Mapping[str, float | None], frames: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """The manifest's ``gate_quality``: ``{gate slice: {"miou": m, "frames": n}}`` for the finite ones."""
    return {k: {"miou": round(float(m), 4), "frames": int(frames.get(k, 0))}
            for k, m in sorted(miou.items()) if m is not None and math.isfinite(m)}


class SliceQuality:
    """Per-slice priority offsets from a release's ``gate_quality`` (module docstring).

    Args:
        table: ``{gate slice: {"miou": m, "frames": n}}``; without ``all`` every offset is 0.
        weight: the offset's weight (``selection.quality_weight``; 0 disables it).

    Raises:
        SelectionError: a malformed table (names the entry).
    """

    def __init__(self, table: Mapping[str, Any], weight: float) -> None:
        self.weight = float(weight)
        self._miou: dict[str, tuple[float, float]] = {}
        for key, row in table.items():
            try:
                m, n = float(row["miou"]), float(row["frames"])
            except (TypeError, KeyError, ValueError) as exc:
                raise SelectionError(f"gate_quality[{key!r}]: need numbers 'miou' and 'frames' ({exc!r})") from None
            if not (math.isfinite(m) and 0.0 <= m <= 1.0 and n >= 0):
                raise SelectionError(f"gate_quality[{key!r}]: miou must be in [0, 1] and frames >= 0, got {m}, {n}")
            self._miou[str(key)] = (m, n)
        self._cache: dict[str, float] = {}

    def quality(self, slice_key: str) -> float | None:
        """The shrunk mIoU of the slice's worst measured condition (None: nothing measured)."""
        if ALL not in self._miou:
            return None
        m_all = self._miou[ALL][0]
        shrunk = [(n * m + PRIOR_FRAMES * m_all) / (n + PRIOR_FRAMES)
                  for m, n in (self._miou[g] for g in condition_groups(slice_key) if g in self._miou) if n > 0]
        return min(shrunk) if shrunk else None

    def offset(self, slice_key: str) -> float:
        """The priority offset of the slice's frames (0 when unmeasured or the weight is 0)."""
        cached = self._cache.get(slice_key)
        if cached is not None:
            return cached
        q = self.quality(slice_key) if self.weight else None
        if q is None:
            value = 0.0
        else:
            ratio = math.log10(max(self._miou[ALL][0], MIOU_FLOOR) / max(q, MIOU_FLOOR))
            value = self.weight * min(max(ratio, OFFSET_RANGE[0]), OFFSET_RANGE[1])
        self._cache[slice_key] = value
        return value
