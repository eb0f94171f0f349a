"""CamVid layout: ``manifest.csv`` rows, ``classes.json``, and the frame and label files they name.

A CamVid-layout folder holds ``manifest.csv`` (columns ``image``, ``label``, ``sequence``,
``time_of_day``; optional ``frame_id``, ``split``, ``frame_index``, ``location``), the JPEG frames and
the PNG labels (8-bit class ids, void = 11) at the paths the manifest names, relative to the folder,
and optionally ``classes.json``. Every row is used whatever its split.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avminer import images
from avminer.errors import DatasetError
from avminer.taxonomy import CAMVID

REQUIRED_COLUMNS = ("image", "label", "sequence", "time_of_day")


@dataclass(frozen=True)
class CamvidRow:
    """One row of ``manifest.csv`` with paths resolved against the dataset folder."""

    frame_id: str
    split: str
    sequence: str
    frame_index: int
    time_of_day: str
    location: str
    image_path: Path
    label_path: Path


def _trailing_int(text: str) -> int | None:
    digits = ""
    for ch in reversed(text):
        if not ch.isdigit():
            break
        digits = ch + digits
    return int(digits) if digits else None


def read_layout(directory: str | Path) -> list[CamvidRow]:
    """Read a CamVid-layout folder's ``manifest.csv`` (every row, any split).

    Missing optional columns get defaults: ``frame_id`` from the image file name, ``frame_index``
    from the trailing digits of the frame id (else the row number), ``split`` empty, ``location``
    ``cambridge_uk``.

    Raises:
        DatasetError: no manifest, missing columns, bad frame indices, missing image or label files.
    """
    root = Path(directory)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise DatasetError(f"{manifest} not found; a CamVid-layout folder needs manifest.csv "
                           f"with columns {', '.join(REQUIRED_COLUMNS)}")
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or ())
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DatasetError(f"{manifest} lacks column(s) {', '.join(missing)}; it has {', '.join(sorted(columns))}")
        raw_rows = list(reader)
    rows: list[CamvidRow] = []
    seen: set[str] = set()
    for n, raw in enumerate(raw_rows, start=2):  # line 1 is the header
        image, label = root / raw["image"], root / raw["label"]
        frame_id = raw.get("frame_id") or Path(raw["image"]).stem
        index_text = raw.get("frame_index")
        try:
            frame_index = int(index_text) if index_text else (_trailing_int(frame_id) or n - 2)
        except ValueError:
            raise DatasetError(f"{manifest}:{n}: frame_index {index_text!r} is not an integer") from None
        if frame_id in seen:
            raise DatasetError(f"{manifest}:{n}: frame_id {frame_id} appears twice")
        seen.add(frame_id)
        for kind, path in (("image", image), ("label", label)):
            if not path.is_file():
                raise DatasetError(f"{manifest}:{n}: {kind} file {path} does not exist")
        rows.append(CamvidRow(
            frame_id=frame_id, split=raw.get("split") or "", sequence=raw["sequence"], frame_index=frame_index,
            time_of_day=raw["time_of_day"], location=raw.get("location") or "cambridge_uk",
            image_path=image, label_path=label,
        ))
    if not rows:
        raise DatasetError(f"{manifest} has no rows")
    return rows


def read_classes(directory: str | Path) -> tuple[list[str], int]:
    """Class names and void id from ``classes.json``, else CamVid's 11 classes with void 11."""
    path = Path(directory) / "classes.json"
    if not path.exists():
        return list(CAMVID.classes), CAMVID.void
    try:
        data = json.loads(path.read_text())
        return [str(c) for c in data["classes"]], int(data.get("void", CAMVID.void))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path} is not a valid classes file ({{'classes': [...], 'void': 11}}): {exc}") from exc



def load_image(path: str | Path) -> np.ndarray:
    """Load an image file as uint8 RGB ``[H, W, 3]``.

    Raises:
        DatasetError: the file cannot be read or decoded.
    """
    try:
        return images.decode_image(images.read_file(path), encoding=str(path))
    except images.ImageDecodeError as exc:
        raise DatasetError(str(exc)) from exc


def decode_label(data: bytes) -> np.ndarray:
    """Decode a label PNG of class ids to uint8 ``[H, W]``.

    Raises:
        DatasetError: not a one-channel PNG of class ids.
    """
    try:
        return images.decode_mask(data)
    except images.ImageDecodeError as exc:
        raise DatasetError(f"label: {exc}") from exc


def load_label(path: str | Path) -> np.ndarray:
    """Load a label PNG of class ids as uint8 ``[H, W]``.

    Raises:
        DatasetError: the file cannot be read or is not a one-channel PNG of class ids.
    """
    try:
        return images.decode_mask(images.read_file(path, "label"))
    except images.ImageDecodeError as exc:
        raise DatasetError(f"label {path}: {exc}") from exc
