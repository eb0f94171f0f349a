"""CVAT: export mined frames for a CVAT task, import its "Segmentation mask 1.1" export as LabelResults.

CVAT's Segmentation mask format (https://docs.cvat.ai/docs/dataset_management/formats/format-smask) is
a zip of Pascal-VOC-style class masks::

    labelmap.txt                      # label:R,G,B:parts:actions, one line per label
    ImageSets/Segmentation/default.txt  # image names without extension
    SegmentationClass/<name>.png      # RGB masks, each pixel the colour of its label
    SegmentationObject/<name>.png     # instance masks (not used by avminer)

Export (``avminer export cvat --out DIR``) writes ``DIR/images/<sample_id>.<ext>`` — the frames as
stored, to create the task with — and ``DIR/annotations.zip`` in that format holding the ensemble's
prediction for each frame at the frame's full resolution, to upload as the task's pre-annotations
("Upload annotations", format "Segmentation mask 1.1"). Frame names are sample ids, so what comes back
maps onto the catalog without a side file. Void (id 11) is CVAT's ``background`` at (0, 0, 0); the other
classes keep CamVid's colours.

Import (:func:`results_from_zip`) reads CVAT's export of the task in the same format: colours are
mapped to labels through the zip's own ``labelmap.txt`` (CVAT may recolour labels), labels to class ids
by name; ``background`` and unlabeled pixels become void. A colour the label map does not know, or a
label avminer does not know, skips that frame with a reason.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import numpy as np
from numpy.typing import NDArray

from avminer import images
from avminer.catalog.catalog import SampleRow
from avminer.errors import LabelError
from avminer.events.records import LabelResult
from avminer.labels import bounds
from avminer.labels.masks import (
    CLASS_COLOURS,
    CLASS_NAMES,
    VOID,
    decode_mask_png,
    encode_mask_png,
    mask_at_size,
)

BACKGROUND = "background"
LABELMAP = "labelmap.txt"
CLASS_DIR = "SegmentationClass"
IMAGE_SET = "ImageSets/Segmentation/default.txt"


def class_colours(class_names: Sequence[str] = CLASS_NAMES) -> dict[str, tuple[int, int, int]]:
    """Label name -> RGB, ``background`` first at black."""
    out = {BACKGROUND: (0, 0, 0)}
    for i, name in enumerate(class_names):
        hexa = CLASS_COLOURS[i % len(CLASS_COLOURS)].lstrip("#")
        out[name] = (int(hexa[0:2], 16), int(hexa[2:4], 16), int(hexa[4:6], 16))
    return out


def labelmap_text(colours: dict[str, tuple[int, int, int]]) -> str:
    lines = ["# label:color_rgb:parts:actions"]
    lines += [f"{name}:{r},{g},{b}::" for name, (r, g, b) in colours.items()]
    return "\n".join(lines) + "\n"


def parse_labelmap(text: str) -> dict[tuple[int, int, int], str]:
    """``labelmap.txt`` -> RGB -> label name.

    Raises:
        LabelError: a line that is not ``name:R,G,B:...``, or two labels with one colour.
    """
    out: dict[tuple[int, int, int], str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        try:
            r, g, b = (int(v) for v in parts[1].split(","))
        except (IndexError, ValueError):
            raise LabelError(f"{LABELMAP} line {n} is not 'label:R,G,B:parts:actions': {raw!r}") from None
        if (r, g, b) in out:
            raise LabelError(f"{LABELMAP} line {n}: colour {r},{g},{b} is used by {out[(r, g, b)]!r} too")
        out[(r, g, b)] = parts[0]
    if not out:
        raise LabelError(f"{LABELMAP} names no labels")
    return out


def colour_mask(mask: NDArray[np.uint8], colours: dict[str, tuple[int, int, int]],
                class_names: Sequence[str] = CLASS_NAMES) -> NDArray[np.uint8]:
    """Class ids ``[H, W]`` -> RGB ``[H, W, 3]`` (void and unknown ids as background)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for i, name in enumerate(class_names):
        lut[i] = colours[name]
    lut[VOID] = colours[BACKGROUND]
    return lut[mask]


def ids_from_colours(rgb: NDArray[np.uint8], labelmap: dict[tuple[int, int, int], str],
                     class_names: Sequence[str] = CLASS_NAMES) -> NDArray[np.uint8]:
    """RGB ``[H, W, 3]`` -> class ids ``[H, W]`` through a parsed label map.

    Raises:
        LabelError: a colour missing from the label map, or a label avminer does not know.
    """
    index = {name: i for i, name in enumerate(class_names)}
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    values, inverse = np.unique(packed, return_inverse=True)
    ids = np.empty(len(values), dtype=np.uint8)
    for j, v in enumerate(values.tolist()):
        colour = ((v >> 16) & 255, (v >> 8) & 255, v & 255)
        name = labelmap.get(colour)
        if name is None:
            raise LabelError(f"colour {colour} is not in {LABELMAP}")
        if name == BACKGROUND:
            ids[j] = VOID
        elif name in index:
            ids[j] = index[name]
        else:
            raise LabelError(f"unknown label {name!r}; the CVAT task must use the labels {list(class_names)}")
    out: NDArray[np.uint8] = ids[inverse.reshape(packed.shape)]
    return out


def _png(array: NDArray[np.uint8]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _frame_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.size


def _extension(uri: str, data: bytes) -> str:
    suffix = PurePosixPath(uri.split("?", 1)[0]).suffix.lower()
    if suffix in {".jpg", ".jpeg", ".png", ".bmp", ".webp"}:
        return suffix
    return ".png" if data.startswith(b"\x89PNG") else ".jpg"


@dataclass
class CvatExport:
    """What :func:`export_task` wrote."""

    images: list[Path] = field(default_factory=list)
    annotations: Path | None = None
    pre_annotated: int = 0


def export_task(
    samples: Iterable[SampleRow],
    read_blob: Callable[[str], bytes],
    out_dir: str | Path,
    class_names: Sequence[str] = CLASS_NAMES,
) -> CvatExport:
    """Frames (``images/``) and pre-annotations (``annotations.zip``) for one CVAT task.

    Samples without a stored frame are skipped; frames without a stored prediction get no mask.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    colours = class_colours(class_names)
    result = CvatExport(annotations=out / "annotations.zip")
    names: list[str] = []
    tmp = out / "annotations.zip.tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(LABELMAP, labelmap_text(colours))
        for s in samples:
            if not s.frame_uri:
                continue
            data = read_blob(s.frame_uri)
            path = out / "images" / f"{s.sample_id}{_extension(s.frame_uri, data)}"
            path.write_bytes(data)
            result.images.append(path)
            if s.prediction_uri:
                width, height = (s.width, s.height) if s.width and s.height else _frame_size(data)
                pred = mask_at_size(decode_mask_png(read_blob(s.prediction_uri)), width, height)
                zf.writestr(f"{CLASS_DIR}/{s.sample_id}.png", _png(colour_mask(pred, colours, class_names)))
                names.append(s.sample_id)
                result.pre_annotated += 1
        zf.writestr(IMAGE_SET, "".join(f"{n}\n" for n in names))
    tmp.replace(out / "annotations.zip")
    return result


def results_from_zip(
    path: str | Path, labeler: str = "cvat", class_names: Sequence[str] = CLASS_NAMES
) -> tuple[list[LabelResult], list[str]]:
    """LabelResults from CVAT's "Segmentation mask 1.1" export of a task made by :func:`export_task`.

    Returns:
        (results, problems): one result per class mask, and a line per mask skipped and why.

    Raises:
        LabelError: not a zip, or no usable ``labelmap.txt``.
    """
    zf = bounds.open_zip(path, "the CVAT export")
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    results: list[LabelResult] = []
    problems: list[str] = []
    with zf:
        members = {PurePosixPath(i.filename): i.filename for i in bounds.zip_members(zf)}
        labelmap_name = next((n for p, n in members.items() if p.name == LABELMAP), None)
        if labelmap_name is None:
            raise LabelError(f"{path} has no {LABELMAP}; export the task as 'Segmentation mask 1.1'")
        labelmap = parse_labelmap(bounds.read_member(zf, labelmap_name).decode("utf-8", errors="replace"))
        for p, name in sorted(members.items()):
            if p.suffix.lower() != ".png" or p.parent.name != CLASS_DIR:
                continue
            sample = p.stem
            try:
                rgb = _rgb(bounds.read_member(zf, name))
                mask = ids_from_colours(rgb, labelmap, class_names)
            except LabelError as exc:
                problems.append(f"{name}: {exc}")
                continue
            results.append(LabelResult(sample_id=sample, labeler=labeler, labeled_at_us=now_us,
                                       mask_png=encode_mask_png(mask)))
    return results, problems


def _rgb(data: bytes) -> NDArray[np.uint8]:
    try:
        with images.open_image(data, bounds.MAX_IMPORT_PIXELS, "png") as img:  # header checked before decoding
            if img.mode in ("L", "1"):  # one channel: CVAT writes grey levels as equal R, G, B
                arr = np.asarray(img.convert("L"))
                return np.repeat(arr[..., None], 3, axis=2)
            return np.asarray(img.convert("RGB"))
    except images.ImageDecodeError as exc:
        raise LabelError(str(exc)) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise LabelError(f"not a readable PNG: {exc}") from exc
