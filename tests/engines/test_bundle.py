"""Bundle integrity: corrupt or foreign bundles are refused with a clear message."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from avminer.engines import open_engine
from avminer.engines.bundle import FORMAT, Bundle, add_file, load_bundle
from avminer.errors import BundleError
from avminer.storage.bundles import MANIFEST


def test_one_flipped_byte_in_model_onnx_is_refused(bundle_copy: Callable[[str], Bundle]) -> None:
    b = bundle_copy("v1")
    data = bytearray(b.onnx_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    b.onnx_path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx sha256 mismatch.*corrupt or was modified"):
        load_bundle(b.path)
    with pytest.raises(BundleError, match="sha256 mismatch"):
        open_engine(b.path)


def test_manifest_of_another_format_is_refused(bundle_copy: Callable[[str], Bundle]) -> None:
    b = bundle_copy("v1")
    manifest = json.loads((b.path / MANIFEST).read_text())
    manifest["format"] = "avminer-bundle/99"
    (b.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"format 'avminer-bundle/99' is not '{FORMAT}'.*upgrade avminer"):
        load_bundle(b.path)


def test_missing_file_and_missing_manifest_are_refused(bundle_copy: Callable[[str], Bundle]) -> None:
    b = bundle_copy("v1")
    (b.path / "model.pt").unlink()
    with pytest.raises(BundleError, match="model.pt listed in the manifest is missing"):
        load_bundle(b.path)
    (b.path / MANIFEST).unlink()
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(b.path)


def test_add_file_rechecksums_and_merges_manifest(bundle_copy: Callable[[str], Bundle]) -> None:
    b = bundle_copy("v1")
    b2 = add_file(b, "plans/sm90-trt10.13.0.35.plan", b"plan", {"plans": {"sm90-trt10.13.0.35": "plans/x"}})
    b3 = add_file(b2, "plans/sm86-trt10.13.0.35.plan", b"plan2", {"plans": {"sm86-trt10.13.0.35": "plans/y"}})
    assert set(b3.manifest["plans"]) == {"sm90-trt10.13.0.35", "sm86-trt10.13.0.35"}
    assert "plans/sm86-trt10.13.0.35.plan" in b3.manifest["files"]
    assert not list(b.path.glob("plans/*.part"))
    (b.path / "plans/sm86-trt10.13.0.35.plan").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="sm86-trt10.13.0.35.plan sha256 mismatch"):
        load_bundle(b.path)
