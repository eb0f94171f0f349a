"""Limits on label files coming back from labeling tools, checked before anything is allocated.

A Label Studio export or a CVAT zip is written by people and tools outside the miner: a 246-byte
JSON can declare a 30000 x 30000 brush mask, a 1 MB zip can inflate to gigabytes. The importers
call these checks first, so a hostile file costs a one-line problem, not the process's memory.

:func:`labelstudio_tasks` also checks the export's *shape* (every task, annotation and result an
object where one is expected), so the importer's logic only ever sees well-formed tasks.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

from avminer.errors import LabelError
from avminer.safeio import (
    InputRefusedError,
    check_pixels,
    check_zip,
    printable,
    read_local_file,
    read_zip_member,
)

MAX_IMPORT_PIXELS = 1 << 23
"""Largest label image imported (8.4 M pixels: 4096 x 2048, above 4K UHD); colour lookups cost ~30 B/pixel."""
MAX_EXPORT_BYTES = 64 * 1024 * 1024
"""Largest Label Studio JSON export read (parsed RLE lists cost ~8 bytes per input byte; split bigger ones)."""
MAX_ZIP_MEMBER_BYTES = 64 * 1024 * 1024
"""Largest uncompressed member of a CVAT zip (a PNG mask; labelmap.txt far less)."""
MAX_ZIP_MEMBERS = 100_000
MAX_ZIP_TOTAL_BYTES = 64 * 1024 * 1024 * 1024
"""Declared total of a CVAT zip's members; members are read one at a time, each bounded."""
MAX_TASKS = 1_000_000


def check_label_size(width: Any, height: Any, where: str) -> tuple[int, int]:
    """``(width, height)`` as ints within :data:`MAX_IMPORT_PIXELS`, or a :class:`LabelError` naming ``where``."""
    if isinstance(width, bool) or isinstance(height, bool) or not isinstance(width, int) \
            or not isinstance(height, int):
        raise LabelError(f"{where}: original_width/original_height must be integers, got "
                         f"{printable(width, 40)!r}/{printable(height, 40)!r}")
    try:
        check_pixels(width, height, MAX_IMPORT_PIXELS, where)
    except InputRefusedError as exc:
        raise LabelError(str(exc)) from exc
    return width, height


def read_labelstudio_export(path: str | Path) -> Any:
    """The parsed JSON of an export file of at most :data:`MAX_EXPORT_BYTES`.

    Raises:
        LabelError: unreadable, too large, not UTF-8 or not JSON.
    """
    try:
        return json.loads(read_local_file(path, MAX_EXPORT_BYTES).decode("utf-8"))
    except (OSError, ValueError, InputRefusedError, RecursionError) as exc:
        raise LabelError(f"cannot read the Label Studio export {printable(str(path))}: "
                         f"{printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}") from exc


def _result_problem(r: Any, where: str) -> str | None:
    if not isinstance(r, dict):
        return f"{where}: a result is {type(r).__name__}, not an object"
    if str(r.get("type", "")).lower() != "brushlabels":
        return None
    value = r.get("value", {})
    if not isinstance(value, dict):
        return f"{where}: result 'value' is {type(value).__name__}, not an object"
    rle = value.get("rle", r.get("rle"))
    names = value.get("brushlabels", r.get("brushlabels"))
    if rle is not None and (not isinstance(rle, list) or not all(isinstance(v, int) for v in rle)):
        return f"{where}: 'rle' must be a list of integers"
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        return f"{where}: 'brushlabels' must be a list of strings"
    if rle is not None and names:
        try:
            width, height = check_label_size(r.get("original_width"), r.get("original_height"), where)
        except LabelError as exc:
            return str(exc)
        # An RLE stream cannot hold more values than its own bits: 4 bytes of RGBA per pixel.
        if len(rle) > 8 * width * height * 4 + 64:
            return f"{where}: 'rle' holds {len(rle)} bytes, more than a {width}x{height} mask can"
    return None


def labelstudio_tasks(export: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The export's tasks that are well-formed, and a problem line for each one that is not.

    Well-formed: the task, its ``data`` and each annotation and result are objects, ``annotations``
    and ``result`` are lists, brush results carry integer sizes within :data:`MAX_IMPORT_PIXELS`.

    Raises:
        LabelError: the export is not a list of tasks, or holds more than :data:`MAX_TASKS`.
    """
    if not isinstance(export, list):
        raise LabelError("a Label Studio JSON export is a list of tasks; export with the JSON format")
    if len(export) > MAX_TASKS:
        raise LabelError(f"the export holds {len(export)} tasks > {MAX_TASKS}; split it")
    tasks: list[dict[str, Any]] = []
    problems: list[str] = []
    for n, task in enumerate(export):
        problem = _task_problem(task, n)
        if problem is None:
            tasks.append(task)
        else:
            problems.append(problem)
    return tasks, problems


def _task_problem(task: Any, n: int) -> str | None:
    if not isinstance(task, dict):
        return f"task #{n}: is {type(task).__name__}, not an object"
    where = f"task {printable(task.get('id', f'#{n}'), 40)}"
    data = task.get("data")
    if data is not None and not isinstance(data, dict):
        return f"{where}: 'data' is {type(data).__name__}, not an object"
    if data is not None and not isinstance(data.get("sample_id", ""), str):
        return f"{where}: data.sample_id is not a string"
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list):
        return f"{where}: 'annotations' is {type(annotations).__name__}, not a list"
    for ann in annotations:
        if not isinstance(ann, dict):
            return f"{where}: an annotation is {type(ann).__name__}, not an object"
        results = ann.get("result", [])
        if not isinstance(results, list):
            return f"{where}: annotation 'result' is {type(results).__name__}, not a list"
        for r in results:
            problem = _result_problem(r, where)
            if problem is not None:
                return problem
    return None


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, struct.error, OSError, EOFError, NotImplementedError, RuntimeError,
               ValueError)


def open_zip(path: str | Path, what: str) -> zipfile.ZipFile:
    """Open a zip archive that is a regular file (a FIFO or device would block or never end).

    Raises:
        LabelError: not a regular file, or not a readable zip (any of zipfile's own errors).
    """
    if not Path(path).is_file():
        raise LabelError(f"cannot read {what} {printable(str(path))}: not a regular file")
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS as exc:
        raise LabelError(f"cannot read {what} {printable(str(path))}: {printable(exc)}") from exc


def zip_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The archive's members after the count and declared-size checks.

    Raises:
        LabelError: too many members or a declared total that no label export reaches.
    """
    try:
        return check_zip(archive, MAX_ZIP_MEMBERS, MAX_ZIP_TOTAL_BYTES)
    except InputRefusedError as exc:
        raise LabelError(str(exc)) from exc


def read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    """One member's bytes, at most :data:`MAX_ZIP_MEMBER_BYTES` whatever its header declares.

    Raises:
        LabelError: over the limit, or a corrupt member.
    """
    try:
        return read_zip_member(archive, archive.getinfo(name), MAX_ZIP_MEMBER_BYTES)
    except InputRefusedError as exc:
        raise LabelError(str(exc)) from exc
    except _ZIP_ERRORS as exc:
        raise LabelError(f"zip member {printable(name)}: {printable(exc)}") from exc
