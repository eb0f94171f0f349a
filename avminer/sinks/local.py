"""The local output directory sink (embedded mode): blobs, ``requests.jsonl``, ``decisions.jsonl``.

Layout under the output directory::

    frames/<kind>/<sha[:2]>/<sha>.<ext>   content-addressed blobs (frame, uncertainty, prediction, mask)
    requests.jsonl                        one LabelRequest per line (JSON), append-only
    decisions.jsonl                       one Decision per line (JSON), append-only

Everything is idempotent by sample id: blobs by content key, the JSONL files through an in-memory
index of the sample ids already written, rebuilt from the file on open, so a replay after a restart
appends nothing twice. One process writes one output directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import os
import typing
from pathlib import Path
from typing import IO, Any, NoReturn

from avminer.errors import SinkError, SinkUnavailableError
from avminer.events.records import Decision, LabelRequest

REQUESTS_FILE = "requests.jsonl"
DECISIONS_FILE = "decisions.jsonl"
_FULL = {errno.ENOSPC, errno.EDQUOT}


def record_to_json(record: Any) -> str:
    """One JSON line for a record dataclass (bytes fields are not expected here)."""
    cls: type = type(record)
    names = _flat_fields(cls)
    # A flat record (no dataclass inside) is read field by field: dataclasses.asdict deep-copies every
    # list and dict first, 3x the cost of the whole line (a Decision: ~55 -> ~16 µs); same JSON.
    row = {name: getattr(record, name) for name in names} if names is not None else dataclasses.asdict(record)
    return json.dumps(row, separators=(",", ":"), sort_keys=True)


@functools.cache
def _flat_fields(cls: type) -> tuple[str, ...] | None:
    """The field names of a record class none of whose field types involves a dataclass, else None."""

    def plain(hint: Any) -> bool:
        return not dataclasses.is_dataclass(hint) and all(plain(arg) for arg in typing.get_args(hint))

    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # annotations that do not resolve: take the general path
        return None
    names = tuple(f.name for f in dataclasses.fields(cls))
    return names if all(plain(hints[name]) for name in names) else None


class JsonlSink:
    """Append-only JSON-lines file, idempotent by ``sample_id`` (index rebuilt from the file on open)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seen: set[str] = set()
        self._repair_and_index()
        self._fh: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the sink
        self._durable = self._fh.tell()  # the file's size after the last successful flush
        self._unflushed: list[str] = []  # ids written since: forgotten again if the flush fails

    def _repair_and_index(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # A torn last line was never flushed as complete: drop it, its sender will replay it.
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
            data = data[:end]
        for line in data.splitlines():
            try:
                self._seen.add(json.loads(line)["sample_id"])
            except (ValueError, KeyError, TypeError):
                continue

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def write(self, record: Any) -> bool:
        """Append ``record`` unless its sample id is already in the file; True if appended."""
        sid = record.sample_id
        if sid in self._seen:
            return False
        try:
            self._fh.write(record_to_json(record) + "\n")
        except OSError as exc:
            self._roll_back(exc)
        self._seen.add(sid)
        self._unflushed.append(sid)
        return True

    def flush(self) -> None:
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            self._roll_back(exc)
        self._durable = self._fh.tell()
        self._unflushed.clear()

    def _roll_back(self, exc: OSError) -> NoReturn:
        """Undo everything since the last flush, so the caller's retry of the same batch writes it again.

        A full disk can leave half a buffer on disk: the file is cut back to its last durable size and
        the unflushed ids are forgotten (else the retry would skip them and they would be lost).
        """
        with contextlib.suppress(OSError):
            self._fh.close()  # drops Python's buffer (its own flush may fail again)
        with contextlib.suppress(OSError), open(self.path, "r+b") as fh:
            fh.truncate(self._durable)
        self._seen.difference_update(self._unflushed)
        self._unflushed.clear()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the sink
        if exc.errno in _FULL:
            raise SinkUnavailableError(f"cannot write {self.path}: {exc.strerror}; the miner pauses") from exc
        raise SinkError(f"cannot write {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        if not self._fh.closed:
            self.flush()
            self._fh.close()


class LocalRequestSink:
    """Label requests appended to ``<root>/requests.jsonl``."""

    def __init__(self, root: str | Path) -> None:
        self.file = JsonlSink(Path(root) / REQUESTS_FILE)

    def send(self, req: LabelRequest) -> None:
        self.file.write(req)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class LocalDecisionSink:
    """Decisions appended to ``<root>/decisions.jsonl``."""

    def __init__(self, root: str | Path) -> None:
        self.file = JsonlSink(Path(root) / DECISIONS_FILE)

    def send(self, d: Decision) -> None:
        self.file.write(d)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete JSON line of a sink file (a torn last line is skipped)."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n"):
                rows.append(json.loads(line))
    return rows


def read_requests(root: str | os.PathLike[str]) -> list[LabelRequest]:
    """The label requests of an output directory, in the order they were written."""
    path = Path(root) / REQUESTS_FILE
    return [LabelRequest(**row) for row in read_jsonl(path)] if path.exists() else []
