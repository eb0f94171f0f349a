"""Datasets turned into drive logs, and the small sample drive shipped with avminer.

- :mod:`avminer.datasets.layout` — a CamVid-layout folder: manifest rows, ``classes.json``, frame and label files;
- :mod:`avminer.datasets.conditions` — condition synthesis: fog and night variants of clear frames;
- :mod:`avminer.datasets.radar` — simulated radar scans from label maps;
- :mod:`avminer.datasets.drive` — the drive-log writer (frames, GPS, radar, ground-truth side file).

The camera geometry they share is :mod:`avminer.geometry`; the image and mask codecs are :mod:`avminer.images`.
"""

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
