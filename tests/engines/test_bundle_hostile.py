"""Hostile bundles: manifests with wrong types or paths outside, symlinks, object arrays: refused at verify."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avminer.cli.main import main
from avminer.engines.bundle import MANIFEST, ONNX_FILE, REFERENCE_FILE, Bundle, load_bundle
from avminer.errors import BundleError

BAD_FIELDS: list[tuple[str, Any]] = [
    ("members", "2"), ("members", -1), ("members", 10**9), ("members", True), ("version", ""), ("version", 7),
    ("version", "v1\x1b[2J"), ("input", "32x48"), ("input", {"height": "32", "width": 48}),
    ("input", {"height": 10**9, "width": 48}), ("classes", "road"), ("classes", [1, 2]), ("void_index", None),
    ("feature_dim", 0), ("files", []), ("files", {}), ("plans", ["x"]), ("plans", {"sm90": "../../etc/passwd"}),
    ("arch", "erfnet"),
]


def rewrite(bundle: Bundle, **changes: Any) -> None:
    manifest = json.loads((bundle.path / MANIFEST).read_text())
    manifest.update(changes)
    (bundle.path / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_manifest_fields_of_the_wrong_type_are_one_line_errors(
    bundle_copy: Callable[[str], Bundle], field: str, value: Any
) -> None:
    b = bundle_copy("v1")
    rewrite(b, **{field: value})
    with pytest.raises(BundleError, match=field.split("_")[0].rstrip("s")) as info:
        load_bundle(b.path, verify=False)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


@pytest.mark.parametrize("rel", ["/etc/hostname", "../outside.bin", "plans/../../x", "a\\..\\b", "", "x\x00y",
                                 MANIFEST])
def test_manifest_paths_outside_the_bundle_are_refused(bundle_copy: Callable[[str], Bundle], rel: str) -> None:
    b = bundle_copy("v1")
    files = dict(b.manifest["files"])
    files[rel] = hashlib.sha256(b"").hexdigest()
    rewrite(b, files=files)
    with pytest.raises(BundleError, match="relative paths inside the bundle"):
        load_bundle(b.path, verify=False)


def test_symlinked_files_are_refused(bundle_copy: Callable[[str], Bundle], tmp_path: Path) -> None:
    b = bundle_copy("v1")
    ref = b.path / ONNX_FILE
    elsewhere = tmp_path / "elsewhere.onnx"
    elsewhere.write_bytes(ref.read_bytes())
    ref.unlink()
    ref.symlink_to(elsewhere)  # same bytes, same checksum: only the link gives it away
    with pytest.raises(BundleError, match="symlink"):
        load_bundle(b.path)


def test_object_arrays_in_the_reference_fail_engine_verify(
    bundle_copy: Callable[[str], Bundle], capsys: pytest.CaptureFixture[str]
) -> None:
    b = bundle_copy("v1")
    ref = b.path / REFERENCE_FILE
    data = {"version": np.array(1), "slices": np.array([{"evil": 1}, "all"], dtype=object)}
    with open(ref, "wb") as fh:
        np.savez(fh, **data)
    files = dict(b.manifest["files"])
    files[REFERENCE_FILE] = hashlib.sha256(ref.read_bytes()).hexdigest()
    rewrite(b, files=files)
    assert main(["engine", "verify", str(b.path), "--checksums-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shift reference" in err


def test_a_huge_or_binary_manifest_is_refused(bundle_copy: Callable[[str], Bundle]) -> None:
    b = bundle_copy("v1")
    (b.path / MANIFEST).write_bytes(b"{" + b" " * (2 << 20) + b"}")
    with pytest.raises(BundleError, match="unreadable manifest"):
        load_bundle(b.path)
    (b.path / MANIFEST).write_bytes(b"\xff\xfe\x00")
    with pytest.raises(BundleError, match="unreadable manifest"):
        load_bundle(b.path)
    (b.path / MANIFEST).write_bytes(b"[" * 100000)
    with pytest.raises(BundleError, match="unreadable manifest"):
        load_bundle(b.path)
