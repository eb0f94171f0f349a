"""The model bundle: everything a miner needs to run one released ensemble.

Layout of a bundle directory::

    manifest.json          format, version, ensemble size, input spec, classes, outputs, file checksums
    model.onnx             all K members behind one input (the engine-neutral artefact)
    model.pt               torch state dict + arch (optional; the torch backend rebuilds the net from it)
    reference_stats.npz    per-condition feature statistics for shift detection (avminer.scoring.shift)
    plans/<key>.plan       TensorRT plans keyed by GPU architecture and TensorRT version (optional)

ONNX contract (format 2): input ``images`` float32 ``[N, 3, H, W]`` RGB in 0..255 (normalisation is
inside the graph); outputs the compact per-frame ``scores``, ``features``, ``umap`` and ``argmax`` of
:mod:`avminer.engines.contract`, computed by the in-graph scoring head described by ``manifest["head"]``,
and ``probs`` ``[K, N, C, H, W]`` (per-member softmax) read only on request. Batch N is dynamic.
Format 1 bundles (probabilities out, scored on the host) are refused with the command that upgrades them
(``tools/reexport_bundle.py``: re-export from the bundle's own ``model.pt``, no retraining).

Every file is listed in ``manifest["files"]`` with its sha256; :func:`load_bundle` refuses a bundle
whose bytes differ (one flipped byte is enough) with a :class:`~avminer.errors.BundleError`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from avminer.engines.contract import (
    INPUT_NAME,
    OUTPUT_ARGMAX,
    OUTPUT_FEATURES,
    OUTPUT_PROBS,
    OUTPUT_SCORES,
    OUTPUT_UMAP,
    HeadSpec,
)
from avminer.errors import BundleError
from avminer.safeio import InputRefusedError, printable, read_local_file
from avminer.storage.bundles import MANIFEST, sha256_file

__all__ = ["MANIFEST", "INPUT_NAME", "OUTPUT_ARGMAX", "OUTPUT_FEATURES", "OUTPUT_PROBS", "OUTPUT_SCORES", "OUTPUT_UMAP"]

FORMAT = "avminer-bundle/2"
OLD_FORMATS = ("avminer-bundle/1",)
ONNX_FILE = "model.onnx"
TORCH_FILE = "model.pt"
REFERENCE_FILE = "reference_stats.npz"

_REQUIRED = ("format", "version", "members", "input", "classes", "void_index", "feature_dim", "head", "files")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def members(self) -> int:
        return int(self.manifest["members"])

    @property
    def input_height(self) -> int:
        return int(self.manifest["input"]["height"])

    @property
    def input_width(self) -> int:
        return int(self.manifest["input"]["width"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def void_index(self) -> int:
        return int(self.manifest["void_index"])

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["feature_dim"])

    @property
    def arch(self) -> dict[str, Any]:
        """Architecture config the torch backend rebuilds the ensemble from (``avminer.models``)."""
        return dict(self.manifest.get("arch", {}))

    @property
    def head(self) -> HeadSpec:
        """The in-graph scoring head (pooling, map stride, rare classes) the bundle was exported with."""
        return HeadSpec.from_manifest(self.manifest["head"], self.path)

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def torch_path(self) -> Path | None:
        p = self.path / TORCH_FILE
        return p if TORCH_FILE in self.manifest["files"] else None

    @property
    def reference_path(self) -> Path | None:
        return self.path / REFERENCE_FILE if REFERENCE_FILE in self.manifest["files"] else None

    def plan_path(self, key: str) -> Path | None:
        """TensorRT plan for ``key`` (e.g. ``sm90-trt10.13``), if the bundle has one."""
        rel = self.manifest.get("plans", {}).get(key)
        return self.path / rel if rel else None


MAX_MANIFEST_BYTES = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _safe_relpath(rel: Any) -> bool:
    """A plain relative path inside the bundle: no absolute path, no ``..``, no backslash or control character."""
    if not isinstance(rel, str) or not rel or len(rel) > 255 or rel != printable(rel) or "\\" in rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and rel not in (".", MANIFEST)


def _check_manifest(manifest: Any, where: Path) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: manifest must be a JSON object")
    if manifest.get("format") in OLD_FORMATS:
        raise BundleError(
            f"{where}: bundle format {manifest['format']!r} returns full probabilities and has no in-graph "
            f"scoring head; this avminer runs {FORMAT!r}. Upgrade it without retraining: "
            f"python tools/reexport_bundle.py {where}"
        )
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise BundleError(f"{where}: manifest lacks {', '.join(missing)}; was it written by avminer?")
    if manifest["format"] != FORMAT:
        raise BundleError(f"{where}: bundle format {printable(manifest['format'])!r} is not {FORMAT!r}; upgrade avminer")
    inp, classes, files = manifest["input"], manifest["classes"], manifest["files"]
    checks = [
        (isinstance(manifest["version"], str) and 0 < len(manifest["version"]) <= 128
         and printable(manifest["version"]) == manifest["version"], "version", "a short printable string"),
        (_int_in(manifest["members"], 1, 64), "members", "an integer in 1..64"),
        (isinstance(inp, dict), "input", "an object"),
        (isinstance(classes, list) and 0 < len(classes) <= 1024 and all(isinstance(c, str) for c in classes),
         "classes", "a list of class names"),
        (_int_in(manifest["void_index"], 0, 1024), "void_index", "an integer in 0..1024"),
        (_int_in(manifest["feature_dim"], 1, 1 << 16), "feature_dim", "an integer in 1..65536"),
        (isinstance(files, dict) and 0 < len(files) <= 10000, "files", "an object of path -> sha256"),
        (isinstance(manifest.get("plans", {}), dict), "plans", "an object of key -> path"),
        (isinstance(manifest.get("arch", {}), dict), "arch", "an object"),
    ]
    for ok, name, what in checks:
        if not ok:
            raise BundleError(f"{where}: manifest {name} must be {what}")
    for key in ("height", "width"):
        if not _int_in(inp.get(key), 1, 16384):
            raise BundleError(f"{where}: manifest input.{key} must be an integer in 1..16384")
    for rel, sha in files.items():
        if not _safe_relpath(rel):
            raise BundleError(f"{where}: manifest lists {printable(rel, 80)!r}: files must be relative paths inside "
                              "the bundle")
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise BundleError(f"{where}: manifest checksum of {rel} is not a sha256 hex digest")
    for key, rel in manifest.get("plans", {}).items():
        if not _safe_relpath(rel):
            raise BundleError(f"{where}: manifest plan {printable(key, 80)!r} names {printable(rel, 80)!r}: plans "
                              "must be relative paths inside the bundle")
    if ONNX_FILE not in files:
        raise BundleError(f"{where}: manifest lists no {ONNX_FILE}")
    HeadSpec.from_manifest(manifest["head"], where)
    return manifest


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open a bundle directory and (by default) verify every file's sha256.

    Raises:
        BundleError: missing or malformed manifest, a missing file, or a checksum mismatch.
    """
    root = Path(path)
    mpath = root / MANIFEST
    try:
        manifest = json.loads(read_local_file(mpath, MAX_MANIFEST_BYTES))
    except FileNotFoundError:
        raise BundleError(f"{root}: no {MANIFEST}; not a model bundle") from None
    except (OSError, InputRefusedError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{mpath}: unreadable manifest ({exc}); the bundle is corrupt") from exc
    manifest = _check_manifest(manifest, root)
    if verify:
        real_root = root.resolve()
        for rel, expected in manifest["files"].items():
            fpath = root / rel
            if fpath.is_symlink() or real_root not in fpath.resolve().parents:
                raise BundleError(f"{root}: {rel} is a symlink or leads outside the bundle; bundles hold plain files")
            if not fpath.is_file():
                raise BundleError(f"{root}: file {rel} listed in the manifest is missing")
            actual = sha256_file(fpath)
            if actual != expected:
                raise BundleError(
                    f"{root}: {rel} sha256 mismatch (manifest {expected[:12]}…, file {actual[:12]}…): "
                    "the bundle is corrupt or was modified; re-download or rebuild it"
                )
    return Bundle(root, manifest)


def write_bundle(out_dir: str | Path, manifest: dict[str, Any], files: dict[str, bytes | Path]) -> Bundle:
    """Write a bundle atomically: files, checksums, then the manifest, then rename into place.

    Args:
        out_dir: destination directory (replaced if it exists).
        manifest: every required field but ``format`` and ``files`` (filled in here).
        files: relative name -> bytes or a path to copy.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        checksums: dict[str, str] = {}
        for rel, content in files.items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                dest.write_bytes(content)
            else:
                shutil.copyfile(content, dest)
            checksums[rel] = sha256_file(dest)
        full = {**manifest, "format": FORMAT, "files": checksums}
        _check_manifest(full, out)
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_bundle(out)


def add_file(bundle: Bundle, rel: str, content: bytes, manifest_updates: dict[str, Any] | None = None) -> Bundle:
    """Add (or replace) one file in an existing bundle and re-checksum it (e.g. a TensorRT plan)."""
    dest = bundle.path / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    part.write_bytes(content)
    os.replace(part, dest)  # a reader never sees half a plan under the final name
    manifest = dict(bundle.manifest)
    manifest["files"] = {**manifest["files"], rel: sha256_file(dest)}
    for key, value in (manifest_updates or {}).items():
        manifest[key] = {**manifest.get(key, {}), **value} if isinstance(value, dict) else value
    return write_manifest(bundle, manifest)


def write_manifest(bundle: Bundle, manifest: dict[str, Any]) -> Bundle:
    """Replace a bundle's manifest atomically and load the bundle again (its checksums are verified)."""
    tmp = bundle.path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, bundle.path / MANIFEST)
    return load_bundle(bundle.path)
