"""Model bundles on the move: a folder whose ``manifest.json`` names its files, copied to and from S3 or a folder.

This module knows only that much of the bundle format (:mod:`avminer.engines.bundle` owns the rest):
the manifest's name, its ``files`` map, and sha256 checksums. A download checks the manifest against
the sha256 the release announced and fetches exactly the files it names (no path outside the folder);
the caller verifies every checksum (:func:`avminer.engines.bundle.load_bundle`) before using it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from avminer.config import S3Settings
from avminer.errors import BundleError, EngineError, SinkError

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_bundle(
    uri: str, dest: Path, *, s3: S3Settings | None = None, client: Any = None, manifest_sha256: str | None = None
) -> None:
    """Copy the bundle at ``uri`` (``s3://bucket/prefix/``, ``file:///dir`` or a path) into the folder ``dest``.

    Args:
        uri: where the bundle is.
        dest: an existing, empty folder.
        s3: settings for the S3 client (endpoint, credentials); ignored when ``client`` is given.
        client: a boto3 S3 client.
        manifest_sha256: expected sha256 of ``manifest.json`` (hex); None skips that check.

    Raises:
        BundleError: missing files, a manifest mismatch, or an unusable URI.
        EngineError: S3 could not be read (wraps the botocore error).
    """
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        _download_s3(parsed.netloc, parsed.path.lstrip("/"), dest, client or _client(s3), manifest_sha256, uri)
    elif parsed.scheme in ("", "file"):
        _copy_local(Path(unquote(parsed.path)) if parsed.scheme else Path(uri), dest, manifest_sha256)
    else:
        raise BundleError(f"cannot fetch bundle {uri!r}: use s3://bucket/prefix/, file:///dir or a path")


def upload_files(root: Path, files: Sequence[str], bucket: str, base: str, client: Any) -> str:
    """Upload ``root/<rel>`` to ``s3://bucket/<base><rel>`` for each ``rel`` in order; the bucket is made if missing.

    Put the manifest last: a reader that finds it finds every file it names.

    Returns:
        ``s3://bucket/<base>``.

    Raises:
        SinkError: S3 refused the bucket or an upload (wraps the botocore error).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError:
            client.create_bucket(Bucket=bucket)
        for rel in files:
            client.upload_file(str(root / rel), bucket, base + rel)
    except (BotoCoreError, ClientError) as exc:
        raise SinkError(str(exc)) from exc
    return f"s3://{bucket}/{base}"


def _check_manifest(path: Path, expected: str | None, where: str) -> list[str]:
    if expected and (actual := sha256_file(path)) != expected:
        raise BundleError(
            f"{where}: manifest.json sha256 {actual[:12]}… differs from the release's {expected[:12]}…; "
            "the release announcement and the uploaded bundle disagree"
        )
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{where}: manifest.json is not a bundle manifest ({exc})") from exc
    for rel in files:
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise BundleError(f"{where}: manifest names a file outside the bundle: {rel!r}")
    return list(files)


def _client(s3: S3Settings | None) -> Any:
    from avminer.storage.s3 import make_client

    return make_client(s3 or S3Settings())


def _download_s3(bucket: str, prefix: str, dest: Path, client: Any, manifest_sha256: str | None, uri: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    try:
        listed: set[str] = set()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            listed.update(obj["Key"][len(prefix):] for obj in page.get("Contents", []))
        if MANIFEST not in listed:
            raise BundleError(f"{uri}: no {MANIFEST} under this prefix; is the release uploaded?")
        client.download_file(bucket, prefix + MANIFEST, str(dest / MANIFEST))
        files = _check_manifest(dest / MANIFEST, manifest_sha256, uri)
        missing = sorted(set(files) - listed)
        if missing:
            raise BundleError(f"{uri}: files named in the manifest are not uploaded: {', '.join(missing)}")
        for rel in files:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, prefix + rel, str(dest / rel))
    except (BotoCoreError, ClientError) as exc:
        raise EngineError(f"cannot download bundle {uri}: {exc}") from exc


def _copy_local(src: Path, dest: Path, manifest_sha256: str | None) -> None:
    if not (src / MANIFEST).is_file():
        raise BundleError(f"{src}: no {MANIFEST}; not a model bundle")
    shutil.copyfile(src / MANIFEST, dest / MANIFEST)
    for rel in _check_manifest(dest / MANIFEST, manifest_sha256, str(src)):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(src / rel, dest / rel)
        except FileNotFoundError:
            raise BundleError(f"{src}: file {rel} listed in the manifest is missing") from None
