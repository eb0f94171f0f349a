"""Fetching released bundles: real S3 (SeaweedFS) and local paths, verified before use."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest

from avminer.engines.bundle import Bundle
from avminer.engines.hotswap import EngineHolder, fetch_bundle, fetch_release
from avminer.engines.ort import OrtEngine
from avminer.errors import BundleError
from avminer.events.records import ModelRelease
from avminer.storage.bundles import MANIFEST
from tests.services import S3Server


def _upload(client: object, bucket: str, prefix: str, bundle: Bundle, skip: str | None = None) -> str:
    for path in sorted(bundle.path.rglob("*")):
        rel = path.relative_to(bundle.path).as_posix()
        if path.is_file() and rel != skip:
            client.upload_file(str(path), bucket, prefix + rel)  # type: ignore[attr-defined]
    return hashlib.sha256((bundle.path / MANIFEST).read_bytes()).hexdigest()


def _release(bundle: Bundle, uri: str, sha: str) -> ModelRelease:
    return ModelRelease(
        version=bundle.version, bundle_uri=uri, manifest_sha256=sha,
        created_at_us=int(time.time() * 1e6), members=bundle.members,
    )


def test_s3_release_downloads_verifies_and_swaps(s3: S3Server, bundles: dict[str, Bundle], tmp_path: Path) -> None:
    client = s3.client()  # type: ignore[no-untyped-call]
    bucket = s3.bucket("rel")
    sha = _upload(client, bucket, "releases/v2/", bundles["v2"])
    client.put_object(Bucket=bucket, Key="releases/v2/stray-file.tmp", Body=b"not in the manifest")
    release = _release(bundles["v2"], f"s3://{bucket}/releases/v2/", sha)

    bundle = fetch_release(release, tmp_path / "cache", client=client)
    assert bundle.path == tmp_path / "cache" / "v2" and bundle.version == "v2"
    assert not (bundle.path / "stray-file.tmp").exists()  # only what the manifest names
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["v2"]  # no temp dirs left

    # A second fetch reuses the verified cache (no S3 needed: the bucket is emptied first).
    for obj in client.list_objects_v2(Bucket=bucket)["Contents"]:
        client.delete_object(Bucket=bucket, Key=obj["Key"])
    assert fetch_release(release, tmp_path / "cache", client=client).path == bundle.path

    holder = EngineHolder(OrtEngine(bundles["v1"], threads=1), opener=lambda b: OrtEngine(b, threads=1),
                          fetcher=lambda r: fetch_release(r, tmp_path / "cache", client=client))
    result = holder.load(release)
    assert result.ok and result.swapped and holder.version == "v2"
    holder.close()


def test_s3_release_with_wrong_manifest_sha_or_missing_file_is_refused(
    s3: S3Server, bundles: dict[str, Bundle], tmp_path: Path
) -> None:
    client = s3.client()  # type: ignore[no-untyped-call]
    bucket = s3.bucket("rel")
    sha = _upload(client, bucket, "releases/v1/", bundles["v1"])
    uri = f"s3://{bucket}/releases/v1/"
    with pytest.raises(BundleError, match="differs from the release's"):
        fetch_bundle(uri, tmp_path / "cache", client=client, manifest_sha256="0" * 64)
    client.delete_object(Bucket=bucket, Key="releases/v1/model.pt")
    with pytest.raises(BundleError, match="not uploaded: model.pt"):
        fetch_bundle(uri, tmp_path / "cache", client=client, manifest_sha256=sha)
    with pytest.raises(BundleError, match="no manifest.json under this prefix"):
        fetch_bundle(f"s3://{bucket}/releases/nope/", tmp_path / "cache", client=client)
    assert not any((tmp_path / "cache").iterdir())  # failed fetches leave nothing behind

    # Bytes corrupted in the bucket (manifest intact) are caught by the per-file checksums.
    _upload(client, bucket, "releases/v1/", bundles["v1"])
    client.put_object(Bucket=bucket, Key="releases/v1/model.onnx", Body=b"garbage")
    with pytest.raises(BundleError, match="model.onnx sha256 mismatch"):
        fetch_bundle(uri, tmp_path / "cache", client=client, manifest_sha256=sha)


def test_local_release_path_and_stale_cache(bundles: dict[str, Bundle], tmp_path: Path) -> None:
    src = tmp_path / "published"
    shutil.copytree(bundles["v1"].path, src)
    sha = hashlib.sha256((src / MANIFEST).read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    bundle = fetch_release(_release(bundles["v1"], src.as_uri(), sha), cache)
    assert bundle.version == "v1"
    (bundle.path / "model.onnx").write_bytes(b"rotten cache")  # damaged cache is fetched again
    again = fetch_bundle(str(src), cache, manifest_sha256=sha, name="v1")
    assert again.path == bundle.path and (again.path / "model.onnx").read_bytes() == (src / "model.onnx").read_bytes()
    with pytest.raises(BundleError, match="use s3://bucket/prefix/"):
        fetch_bundle("http://example.com/b/", cache)
    wrong = _release(bundles["v1"], src.as_uri(), sha)
    wrong.version = "v9"
    with pytest.raises(BundleError, match="release v9 points at a bundle of version v1"):
        fetch_release(wrong, tmp_path / "cache2")
