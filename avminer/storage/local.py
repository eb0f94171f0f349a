"""Content-addressed blobs in a local directory (embedded mode): ``<root>/frames/<kind>/<sha[:2]>/<sha>.<ext>``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from avminer.errors import SinkError
from avminer.storage.base import FRAME, content_key

BLOB_PREFIX = "frames/"


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
