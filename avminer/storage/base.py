"""Blob storage basics: content-addressed keys, the :class:`FrameStore` interface, retry backoff.

A :class:`FrameStore` keeps frames, uncertainty maps, predictions and label masks under keys derived
from their bytes (:func:`content_key`), in S3 (:mod:`avminer.storage.s3`) or a local directory
(:mod:`avminer.storage.local`). ``put`` returns a URI and is idempotent: the key is the sha256 of the
bytes, so storing the same bytes twice stores nothing new.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from avminer.errors import SinkError

FRAME = "frame"
UNCERTAINTY = "uncertainty"
PREDICTION = "prediction"
MASK = "mask"
KINDS = (FRAME, UNCERTAINTY, PREDICTION, MASK)

_EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "application/octet-stream": "bin",
}


def extension_for(content_type: str) -> str:
    """File extension for a content type (``image/jpeg`` → ``jpg``); unknown types get ``bin``."""
    return _EXTENSIONS.get(content_type.split(";")[0].strip().lower(), "bin")


def content_key(prefix: str, kind: str, data: bytes, content_type: str) -> str:
    """Content-addressed key: ``<prefix><kind>/<sha[:2]>/<sha>.<ext>``.

    The same bytes always map to the same key, which is what makes every store idempotent. The two-hex
    fan-out keeps directory listings (and S3 prefixes) small.

    Args:
        prefix: key prefix; a trailing ``/`` is added if missing (empty stays empty).
        kind: ``frame``, ``uncertainty``, ``prediction`` or ``mask``.
        data: the bytes to store.
        content_type: MIME type; picks the extension.
    """
    if kind not in KINDS:
        raise SinkError(f"unknown blob kind {kind!r}; use one of {', '.join(KINDS)}")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    sha = hashlib.sha256(data).hexdigest()
    return f"{prefix}{kind}/{sha[:2]}/{sha}.{extension_for(content_type)}"


@runtime_checkable
class FrameStore(Protocol):
    """Content-addressed, idempotent blob store (frames, uncertainty maps, label masks)."""

    def put(self, sample_id: str, data: bytes, content_type: str, kind: str = FRAME) -> str:
        """Store ``data`` under its content key and return its URI (``s3://…`` or ``file://…``).

        A second put of the same bytes stores nothing new and returns the same URI. ``sample_id`` is
        for logs and metadata only; it is not part of the key.

        Raises:
            SinkUnavailableError: the store is unreachable after retries; pause and retry.
            SinkError: the store refused the object for good (bad bucket, no permission).
        """
        ...

    def get(self, uri: str) -> bytes:
        """Read back an object this store wrote (mask validation, exports)."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def backoff_delays(base_s: float = 0.2, cap_s: float = 10.0) -> Callable[[int], float]:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""

    def delay(attempt: int) -> float:
        return random.uniform(0.0, min(cap_s, base_s * (2.0**attempt)))

    return delay
