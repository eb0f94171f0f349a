"""Storage: where blobs live (S3 or a local directory) and how model bundles travel (upload, fetch).

- :mod:`avminer.storage.base` — content keys, the :class:`~avminer.storage.base.FrameStore` interface,
  retry backoff;
- :mod:`avminer.storage.s3` — the S3 client and the S3 frame store;
- :mod:`avminer.storage.local` — the local-directory frame store;
- :mod:`avminer.storage.bundles` — moving a bundle folder (``manifest.json`` plus the files it names)
  to and from S3 or another folder.

Sinks, engines, the trainer and the label tools all use this package; it imports none of them.
Client libraries (boto3) are imported only by the module that needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from avminer.config import Settings
    from avminer.storage.base import FrameStore


def open_frame_store(settings: Settings) -> FrameStore:
    """S3 when ``sinks.s3.endpoint_url`` is set, else the local output directory."""
    if settings.sinks.s3.endpoint_url:
        from avminer.storage.s3 import S3FrameStore

        return S3FrameStore.from_settings(settings.sinks.s3)
    from avminer.storage.local import LocalFrameStore

    return LocalFrameStore(settings.sinks.output_dir)


def open_reader(settings: Settings, roots: Sequence[str | Path] = ()) -> Callable[[str], bytes]:
    """A function reading any stored blob by URI: ``file://`` locally, ``s3://`` via ``sinks.s3``.

    ``file://`` URIs are read only under ``sinks.output_dir``, ``decode.image_roots`` and ``roots``,
    regular files of bounded size: a catalog row cannot make an export copy out ``/etc/shadow``.
    """
    from avminer.storage.local import LocalFrameStore

    local = LocalFrameStore(settings.sinks.output_dir, read_roots=[*settings.decode.image_roots, *roots])
    s3: list[FrameStore] = []

    def read(uri: str) -> bytes:
        if uri.startswith("s3://"):
            if not s3:
                from avminer.storage.s3 import S3FrameStore

                s3.append(S3FrameStore.from_settings(settings.sinks.s3, create_bucket=False))
            return s3[0].get(uri)
        return local.get(uri)

    return read
