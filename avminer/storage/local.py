"""Content-addressed blobs in a local directory (embedded mode): ``<root>/frames/<kind>/<sha[:2]>/<sha>.<ext>``."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from avminer.errors import SinkError, SinkUnavailableError
from avminer.safeio import InputRefusedError, printable, read_file_uri
from avminer.storage.base import FRAME, content_key

BLOB_PREFIX = "frames/"
MAX_BLOB_BYTES = 256 * 1024 * 1024
"""Largest blob :meth:`LocalFrameStore.get` reads (frames and masks are far smaller)."""
_FULL = {errno.ENOSPC, errno.EDQUOT}


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

    def __init__(self, root: str | Path, read_roots: Sequence[str | Path] = (), max_read_bytes: int = MAX_BLOB_BYTES
                 ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        # get() reads regular files under the root (and read_roots, e.g. decode.image_roots) only: a URI
        # from a message or a catalog row cannot read /dev/zero, a FIFO or /etc/shadow.
        self.read_roots = [self.root, *read_roots]
        self.max_read_bytes = max_read_bytes

    def put(self, sample_id: str, data: bytes, content_type: str, kind: str = FRAME) -> str:
        path = self.root / content_key(BLOB_PREFIX, kind, data, content_type)
        if not path.exists():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            except OSError as exc:
                raise _write_error(path, exc) from exc
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except OSError as exc:
                Path(tmp).unlink(missing_ok=True)
                raise _write_error(path, exc) from exc
        return file_uri(path)

    def get(self, uri: str) -> bytes:
        try:
            return read_file_uri(uri, self.max_read_bytes, self.read_roots)
        except InputRefusedError as exc:
            raise SinkError(f"refused to read {printable(uri)}: {exc}") from exc
        except OSError as exc:
            raise SinkError(f"cannot read {printable(uri)}: {exc.strerror}") from exc

    def flush(self) -> None:
        """Nothing buffered: every put is on disk when it returns."""

    def close(self) -> None:
        """Nothing to release."""


def _write_error(path: Path, exc: OSError) -> SinkError:
    """A full disk is temporary (cleanup, a bigger volume): pause and retry; anything else is for good."""
    if exc.errno in _FULL:
        return SinkUnavailableError(f"cannot write {path}: {exc.strerror}; the miner pauses")
    return SinkError(f"cannot write {path}: {exc.strerror}; check the output directory")
