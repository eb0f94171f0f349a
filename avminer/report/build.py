"""Write the report folder: ``index.html`` plus the files it links to, so the folder can be moved or shared.

Layout::

    index.html                 the page (:mod:`avminer.report.page`)
    assets/<sha>.jpg|png       each gallery frame, and its uncertainty map in the inferno colour map
    requests/<sha>.json        each frame's label request as sent (else its catalog row)
    tasks/<sha>.json           each frame's Label Studio task, when a task file was given

File names are hashes of the content or of the sample id, never the id itself: ids come from
messages and may hold any character.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from avminer.config import Settings
from avminer.errors import AvminerError, ConfigError
from avminer.report.collect import GalleryItem, ReportData, collect
from avminer.report.page import render

INDEX = "index.html"


def _name(data: bytes, ext: str) -> str:
    return f"{hashlib.sha256(data).hexdigest()[:24]}.{ext}"


def _sample_key(sample_id: str) -> str:
    return hashlib.sha256(sample_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def colour_uncertainty(png: bytes) -> bytes:
    """A grey uncertainty-map PNG (as the miner stores it) in the inferno colour map, as PNG."""
    from matplotlib import colormaps
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"))  # [H, W] uint8
    lut = (colormaps["inferno"](np.arange(256))[:, :3] * 255).astype(np.uint8)  # [256, 3]
    buf = io.BytesIO()
    Image.fromarray(lut[grey]).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _attach(item: GalleryItem, out: Path, read: Callable[[str], bytes], notes: list[str],
            labelstudio_url: str | None) -> None:
    """Copy one gallery frame's images and records into the report folder and set its links."""
    if item.frame_uri:
        try:
            data = read(item.frame_uri)
            ext = "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"
            item.frame_href = f"assets/{_name(data, ext)}"
            _write(out / item.frame_href, data)
        except (AvminerError, OSError) as exc:
            notes.append(f"frame of {item.frame_id} not readable: {exc}")
    if item.uncertainty_uri:
        try:
            data = colour_uncertainty(read(item.uncertainty_uri))
            item.uncertainty_href = f"assets/{_name(data, 'png')}"
            _write(out / item.uncertainty_href, data)
        except (AvminerError, OSError, ValueError) as exc:
            notes.append(f"uncertainty map of {item.frame_id} not readable: {exc}")
    key = _sample_key(item.sample_id)
    record: dict[str, Any]
    if item.request is not None:
        record = {"source": "label request as sent", "request": item.request}
    else:
        record = {"source": "catalog row (no requests file was read)", "sample_id": item.sample_id,
                  "frame_id": item.frame_id, "slice": item.slice, "state": item.state, "reasons": item.reasons,
                  "scores": item.scores, "priority": item.priority, "model_version": item.model_version,
                  "frame_uri": item.frame_uri, "uncertainty_uri": item.uncertainty_uri}
    item.request_href = f"requests/{key}.json"
    _write(out / item.request_href, json.dumps(record, indent=2, sort_keys=True).encode())
    task = item.labelstudio_task
    if task is not None:
        task_id = task.get("id")
        if labelstudio_url and isinstance(task_id, int) and not isinstance(task_id, bool):
            item.labelstudio_href = f"{labelstudio_url.rstrip('/')}/data?task={task_id}"
        else:
            item.labelstudio_href = f"tasks/{key}.json"
            _write(out / item.labelstudio_href, json.dumps(task, indent=2, sort_keys=True).encode())
    if item.cvat_image is not None:
        item.cvat_href = Path(os.path.relpath(item.cvat_image.resolve(), out.resolve())).as_posix()


def write_report(
    settings: Settings,
    out_dir: str | Path,
    catalog: Any,
    *,
    decisions: Path | None = None,
    decisions_topic: str | None = None,
    requests: Path | None = None,
    labelstudio_tasks: Path | None = None,
    labelstudio_url: str | None = None,
    cvat_export: Path | None = None,
    bundle: str | None = None,
    limit: int = 200,
    title: str = "avminer mining report",
) -> Path:
    """Gather (:func:`~avminer.report.collect.collect`) and write the report; returns ``index.html``'s path.

    Args:
        settings: the miner's settings (targets, drift window, frame store for reading the frames).
        out_dir: the report folder (created; files of an earlier report are replaced).
        catalog: an open catalog.
        decisions: ``decisions.jsonl`` of the run (every frame seen).
        decisions_topic: read the decisions from this Kafka topic instead (a miner on Kafka).
        requests: ``requests.jsonl`` of the run.
        labelstudio_tasks: a Label Studio task file (``avminer export labelstudio``) to link to.
        labelstudio_url: the Label Studio project (``http://host:8080/projects/3``): link tasks that
            carry an ``id`` (Label Studio's own export) to their page there.
        cvat_export: a CVAT export directory (``avminer export cvat``) to link to.
        bundle: the model bundle whose shift reference scales the drift statistic.
        limit: the gallery's size at most.
        title: the page title.

    Raises:
        ConfigError: a bad argument (names it).
    """
    from avminer.storage import open_reader

    if labelstudio_url is not None and not labelstudio_url.startswith(("http://", "https://")):
        raise ConfigError(f"--labelstudio-url: must be an http(s):// URL, got {labelstudio_url!r}")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    data: ReportData = collect(
        settings, catalog, decisions=decisions, decisions_topic=decisions_topic, requests=requests,
        labelstudio_tasks=labelstudio_tasks, cvat_export=cvat_export, bundle=bundle, limit=limit, title=title,
    )
    read = open_reader(settings)
    for item in data.gallery:
        _attach(item, out, read, data.notes, labelstudio_url)
    index = out / INDEX
    _write(index, render(data, int(time.time() * 1_000_000)).encode("utf-8"))
    return index


def write_run_report(settings: Settings, out_dir: str | Path | None = None, **kwargs: Any) -> Path:
    """The report of an embedded run: its catalog, ``decisions.jsonl`` and ``requests.jsonl``.

    Args:
        settings: the run's settings (``sinks.output_dir``, ``sinks.catalog_url``, ...).
        out_dir: the report folder (default ``<output_dir>/report``).
        **kwargs: passed on to :func:`write_report`.
    """
    from avminer.catalog import default_catalog_url
    from avminer.catalog.catalog import open_catalog

    run = Path(settings.sinks.output_dir).expanduser()
    with open_catalog(default_catalog_url(settings)) as catalog:
        return write_report(settings, out_dir or run / "report", catalog, decisions=run / "decisions.jsonl",
                            requests=run / "requests.jsonl", **kwargs)
