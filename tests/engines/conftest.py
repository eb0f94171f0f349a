"""Fixtures for the engine tests: tiny random-weight ensembles exported into real bundles."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from avminer.engines.bundle import Bundle, load_bundle

INPUT_HW = (32, 48)  # ERFNet needs multiples of 8; small keeps export and inference fast on 2 cores
CLASSES = [f"class{i}" for i in range(11)]


def export_tiny(out_dir: Path, version: str, seed: int, members: int = 2, check: bool = True) -> Bundle:
    """Export a width-0.25 ERFNet ensemble with random (prior-drawn) weights."""
    from avminer.engines.export import export_bundle
    from avminer.models import build_ensemble, erfnet_arch

    arch = erfnet_arch(width=0.25, members=members)
    model = build_ensemble(arch, seed=seed)
    return export_bundle(
        model, arch, out_dir, version=version, classes=CLASSES, void_index=11, input_hw=INPUT_HW,
        mean=tuple(arch["mean"]), std=tuple(arch["std"]), extra={"dataset_id": "test"}, check=check,
    )


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    """Two bundles of different versions (different weights), exported once per session. Read-only."""
    root = tmp_path_factory.mktemp("bundles")
    # Parity is its own test (test_export.py); skipping export_bundle's built-in check saves setup time.
    return {v: export_tiny(root / v, v, seed, check=False) for v, seed in (("v1", 1), ("v2", 2))}


@pytest.fixture
def bundle_copy(tmp_path: Path, bundles: dict[str, Bundle]) -> Callable[[str], Bundle]:
    """A writable copy of one of the session bundles (for tests that corrupt or extend it)."""

    def copy(version: str = "v1") -> Bundle:
        dest = tmp_path / f"copy-{version}"
        shutil.copytree(bundles[version].path, dest)
        return load_bundle(dest)

    return copy
