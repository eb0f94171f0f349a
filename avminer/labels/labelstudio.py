"""Label Studio: export mined frames as import tasks, import the annotations back as LabelResults.

Export (``avminer export labelstudio``) writes Label Studio's basic JSON task format — a list of
tasks, each ``{"data": {...}, "predictions": [...]}`` (https://labelstud.io/guide/predictions):

- ``data.image``: the frame's URL (see :class:`ImageUrls`), plus ``sample_id``, ``slice``, ``reasons``,
  ``model_version`` and every score flattened as ``score_<name>`` so annotators can sort and filter in
  the Data Manager;
- ``predictions``: one pre-annotation from the ensemble's prediction: one ``brushlabels`` result per
  class present, its mask in Label Studio's brush RLE (:mod:`avminer.labels.brush_rle`), and the
  frame's mined priority as ``score``.

:func:`label_config` is the matching labeling configuration (``<BrushLabels name="tag">`` over
``<Image name="image">`` with one ``<Label>`` per CamVid class).

Import (:func:`results_from_export`) reads Label Studio's JSON export: for each task's latest
non-cancelled annotation, it paints its brush layers onto a void mask (later results on top), and
returns :class:`~avminer.events.records.LabelResult` records with the PNG inline, labeled by
``labelstudio:<annotator>#annotation-<annotation id>``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from numpy.typing import NDArray

from avminer.catalog.catalog import SampleRow
from avminer.errors import LabelError
from avminer.events.records import LabelResult
from avminer.labels import bounds
from avminer.labels.brush_rle import decode_layer, encode_layer
from avminer.labels.masks import (
    CLASS_COLOURS,
    CLASS_NAMES,
    VOID,
    decode_mask_png,
    encode_mask_png,
    image_size,
    mask_at_size,
)

FROM_NAME = "tag"
TO_NAME = "image"


def label_config(class_names: Sequence[str] = CLASS_NAMES) -> str:
    """The Label Studio labeling configuration the exported tasks are made for."""
    labels = "\n".join(
        f'    <Label value="{name}" background="{CLASS_COLOURS[i % len(CLASS_COLOURS)]}"/>'
        for i, name in enumerate(class_names)
    )
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n  </BrushLabels>\n'
        "</View>\n"
    )


@dataclass(slots=True)
class ImageUrls:
    """How frame URIs become URLs Label Studio can open.

    Attributes:
        presign: callable turning ``s3://`` URIs into presigned HTTP URLs (None: keep ``s3://``, which
            Label Studio resolves through a configured S3 source storage).
        local_files_root: ``file://`` URIs under this directory become
            ``/data/local-files/?d=<relative path>`` (Label Studio's local file serving with
            ``LOCAL_FILES_DOCUMENT_ROOT`` set to this directory); None: keep the ``file://`` URI.
    """

    presign: Callable[[str], str] | None = None
    local_files_root: Path | None = None

    def __call__(self, uri: str) -> str:
        if uri.startswith("s3://") and self.presign is not None:
            return self.presign(uri)
        if uri.startswith("file://") and self.local_files_root is not None:
            from avminer.storage.local import path_of_file_uri

            path = path_of_file_uri(uri)
            try:
                rel = path.relative_to(self.local_files_root.resolve())
            except ValueError:
                raise LabelError(
                    f"{path} is not under the local files root {self.local_files_root}; "
                    "pass the output directory as --local-files-root"
                ) from None
            return f"/data/local-files/?d={quote(str(rel))}"
        return uri


def prediction_results(prediction: NDArray[np.uint8], class_names: Sequence[str] = CLASS_NAMES) -> list[dict[str, Any]]:
    """One ``brushlabels`` result per class present in a class-id prediction ``[H, W]`` (void skipped)."""
    height, width = prediction.shape
    results = []
    for cls in np.unique(prediction).tolist():
        if cls >= len(class_names):
            continue
        results.append({
            "id": uuid.uuid4().hex[:10],
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "brushlabels",
            "origin": "prediction",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": {"format": "rle", "rle": encode_layer(prediction == cls), "brushlabels": [class_names[cls]]},
        })
    return results


def task_for(
    sample: SampleRow,
    image_url: str,
    prediction: NDArray[np.uint8] | None,
    class_names: Sequence[str] = CLASS_NAMES,
) -> dict[str, Any]:
    """One Label Studio task for a mined sample."""
    data: dict[str, Any] = {
        "image": image_url,
        "sample_id": sample.sample_id,
        "frame_id": sample.frame_id,
        "slice": sample.slice,
        "vehicle": sample.vehicle,
        "camera": sample.camera,
        "timestamp_us": sample.timestamp_us,
        "model_version": sample.model_version,
        "reasons": ",".join(sample.reasons),
        "priority": sample.priority,
    }
    for name, value in sorted(sample.scores.items()):
        data[f"score_{name}"] = float(value)
    task: dict[str, Any] = {"data": data}
    if prediction is not None:
        task["predictions"] = [{
            "model_version": sample.model_version,
            "score": float(sample.priority),
            "result": prediction_results(prediction, class_names),
        }]
    return task


def export_tasks(
    samples: Iterable[SampleRow],
    read_blob: Callable[[str], bytes],
    image_urls: Callable[[str], str],
    class_names: Sequence[str] = CLASS_NAMES,
) -> list[dict[str, Any]]:
    """Tasks for every sample that has a stored frame (pre-annotated when its prediction is stored).

    Args:
        samples: catalog rows (e.g. ``catalog.query_samples(states=["requested"])``).
        read_blob: reads a stored blob by URI (the frame store's ``get``) for the prediction PNGs.
        image_urls: frame URI → URL for ``data.image``.
        class_names: label names, index = class id.
    """
    return [t for t in (sample_task(s, read_blob, image_urls, class_names) for s in samples) if t is not None]


def sample_task(
    sample: SampleRow,
    read_blob: Callable[[str], bytes],
    image_urls: Callable[[str], str],
    class_names: Sequence[str] = CLASS_NAMES,
) -> dict[str, Any] | None:
    """:func:`task_for` a catalog row (None without a stored frame), its stored prediction brought to the
    frame's own size: brush RLE is read at ``original_width`` x ``original_height`` over the image, and
    the miner stores predictions at the engine's input size."""
    if not sample.frame_uri:
        return None
    prediction = None
    if sample.prediction_uri:
        prediction = decode_mask_png(read_blob(sample.prediction_uri))  # [h, w] engine size
        if sample.width and sample.height:
            width, height = sample.width, sample.height
        else:
            width, height = image_size(read_blob(sample.frame_uri))
        prediction = mask_at_size(prediction, width, height)  # [H, W] frame size
    return task_for(sample, image_urls(sample.frame_uri), prediction, class_names)


def _annotator(annotation: dict[str, Any]) -> str:
    """``labelstudio:<email or user id>#annotation-<id>``: who labeled, and which annotation it was."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    base = f"labelstudio:{who}" if who is not None else "labelstudio"
    aid = annotation.get("id")
    return f"{base}#annotation-{aid}" if aid is not None else base


def _time_us(text: Any) -> int:
    if isinstance(text, str) and text:
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            return int(dt.timestamp() * 1_000_000)
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def mask_from_results(
    results: Sequence[dict[str, Any]], class_names: Sequence[str] = CLASS_NAMES
) -> NDArray[np.uint8] | None:
    """Paint the ``brushlabels`` results of one annotation onto a void mask; None if it has none."""
    index = {name: i for i, name in enumerate(class_names)}
    mask: NDArray[np.uint8] | None = None
    for r in results:
        if str(r.get("type", "")).lower() != "brushlabels":
            continue
        value = r.get("value", {})
        rle = value.get("rle", r.get("rle"))
        names = value.get("brushlabels", r.get("brushlabels")) or []
        if rle is None or not names:
            continue
        if value.get("format", "rle") != "rle":
            raise LabelError(f"brush format {value.get('format')!r} is not supported; export with RLE masks")
        width, height = bounds.check_label_size(r.get("original_width"), r.get("original_height"), "brush result")
        if mask is None:
            mask = np.full((height, width), VOID, dtype=np.uint8)  # [H, W]
        elif mask.shape != (height, width):
            raise LabelError(f"brush results disagree on the image size: {mask.shape} vs {(height, width)}")
        name = names[-1]
        if name not in index:
            raise LabelError(f"unknown label {name!r}; the labeling config must use {list(class_names)}")
        mask[decode_layer(rle, width, height)] = index[name]
    return mask


def results_from_export(
    export: list[dict[str, Any]] | str | Path, class_names: Sequence[str] = CLASS_NAMES
) -> tuple[list[LabelResult], list[str]]:
    """LabelResults from a Label Studio JSON export (list of tasks with ``annotations``).

    Takes each task's most recently updated annotation that is not cancelled and has brush results.

    Returns:
        (results, problems): one result per annotated task, and a line per task skipped and why.
    """
    if isinstance(export, (str, Path)):
        export = bounds.read_labelstudio_export(export)
    tasks, problems = bounds.labelstudio_tasks(export)  # well-formed, sizes bounded: checked once, up front
    out: list[LabelResult] = []
    for task in tasks:
        tid = task.get("id")
        sid = (task.get("data") or {}).get("sample_id")
        if not sid:
            problems.append(f"task {tid}: no data.sample_id (not exported by avminer)")
            continue
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        annotations.sort(key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
        for ann in reversed(annotations):
            try:
                mask = mask_from_results(ann.get("result", []), class_names)
            except LabelError as exc:
                problems.append(f"task {tid} ({sid}): {exc}")
                break
            if mask is None:
                continue
            out.append(LabelResult(
                sample_id=sid, labeler=_annotator(ann), labeled_at_us=_time_us(ann.get("updated_at")),
                mask_png=encode_mask_png(mask), frame_id=(task.get("data") or {}).get("frame_id"),
            ))
            break
        else:
            problems.append(f"task {tid} ({sid}): no annotation with brush labels")
    return out, problems
