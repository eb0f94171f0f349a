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

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

from avminer.errors import SinkError
from avminer.events.records import Decision, LabelRequest
from avminer.sinks.base import FRAME, content_key

BLOB_PREFIX = "frames/"
REQUESTS_FILE = "requests.jsonl"
DECISIONS_FILE = "decisions.jsonl"


def file_uri(path: Path) -> str:
    """``file://`` URI of an absolute path."""
    return path.resolve().as_uri()


def path_of_file_uri(uri: str) -> Path:
    """The local path a ``file://`` URI names."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise SinkError(f"not a file:// URI: {uri!r}")
    return Path(unquote(parsed.path))


class LocalFrameStore:
    """Content-addressed blobs under ``<root>/frames/``; writes are atomic (temp file + rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, sample_id: str, data: bytes, content_type: str, kind: str = FRAME) -> str:
        path = self.root / content_key(BLOB_PREFIX, kind, data, content_type)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except OSError as exc:
                Path(tmp).unlink(missing_ok=True)
                raise SinkError(f"cannot write {path}: {exc.strerror}; check the output directory") from exc
        return file_uri(path)

    def get(self, uri: str) -> bytes:
        path = path_of_file_uri(uri)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SinkError(f"cannot read {uri}: {exc.strerror}") from exc

    def flush(self) -> None:
        """Nothing buffered: every put is on disk when it returns."""

    def close(self) -> None:
        """Nothing to release."""


def record_to_json(record: Any) -> str:
    """One JSON line for a record dataclass (bytes fields are not expected here)."""
    return json.dumps(dataclasses.asdict(record), separators=(",", ":"), sort_keys=True)


class JsonlSink:
    """Append-only JSON-lines file, idempotent by ``sample_id`` (index rebuilt from the file on open)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seen: set[str] = set()
        self._repair_and_index()
        self._fh: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the sink

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
            raise SinkError(f"cannot append to {self.path}: {exc.strerror}") from exc
        self._seen.add(sid)
        return True

    def flush(self) -> None:
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise SinkError(f"cannot flush {self.path}: {exc.strerror}") from exc

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
