"""Datasets turned into drive logs (CamVid layout), and the small sample drive shipped with avminer."""

from __future__ import annotations

from pathlib import Path

from avminer.errors import DatasetError

_DATA = Path(__file__).resolve().parent.parent / "data"


def sample_drive_path() -> Path:
    """The sample drive in the package: 48 CamVid frames (24 day, 24 dusk) with simulated radar.

    Its ground truth is next to it (``sample_drive.gt.avro``, see
    :func:`avminer.events.drivelog.ground_truth_path`). Regenerate with ``tools/make_sample_drive.py``.

    Raises:
        DatasetError: the file is missing from this install.
    """
    path = _DATA / "sample_drive.avro"
    if not path.is_file():
        raise DatasetError(f"sample drive {path} is missing; regenerate it with tools/make_sample_drive.py")
    return path
