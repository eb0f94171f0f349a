"""Small CamVid-layout folders for tests: frames and labels on disk plus the manifest that names them."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avminer import images


@dataclass(frozen=True)
class LayoutFrame:
    """One manifest row and its pixels."""

    frame_id: str
    split: str
    sequence: str
    frame_index: int
    time_of_day: str
    image: np.ndarray  # uint8 [H, W, 3]
    label: np.ndarray  # uint8 [H, W] class ids
    location: str = "cambridge_uk"


def write_layout(root: Path, frames: Iterable[LayoutFrame]) -> Path:
    """Write ``<split>/<frame_id>.jpg``, ``<split>/<frame_id>_label.png`` and ``manifest.csv`` under ``root``."""
    rows = []
    for f in frames:
        (root / f.split).mkdir(parents=True, exist_ok=True)
        (root / f.split / f"{f.frame_id}.jpg").write_bytes(images.encode_jpeg(f.image))
        (root / f.split / f"{f.frame_id}_label.png").write_bytes(images.encode_mask(f.label))
        rows.append({"frame_id": f.frame_id, "split": f.split, "sequence": f.sequence,
                     "frame_index": f.frame_index, "time_of_day": f.time_of_day, "location": f.location,
                     "image": f"{f.split}/{f.frame_id}.jpg", "label": f"{f.split}/{f.frame_id}_label.png"})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root
