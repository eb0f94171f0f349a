"""``avminer bench shift`` end to end on a tiny random-weight bundle and a tiny CamVid layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avminer import taxonomy
from avminer.cli.main import main
from tests.datasets.support import LayoutFrame, write_layout

H, W = 48, 64


def _layout(root: Path) -> Path:
    rng = np.random.default_rng(0)
    frames = []
    plan = [("DAY1", "day", "train", 8), ("DAY2", "day", "val", 3), ("DUSK", "dusk", "train", 4)]
    for seq, tod, split, n in plan:
        for i in range(n):
            scale = 1.0 if tod == "day" else 0.3
            image = (rng.integers(60, 255, (H, W, 3)) * scale).astype(np.uint8)
            label = np.full((H, W), 3, np.uint8)
            label[: H // 3] = 0
            frames.append(LayoutFrame(f"{seq}_{i:06d}", split, seq, i * 30, tod, image, label))
    return write_layout(root, frames)


def test_bench_shift_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avminer.engines.export import export_bundle
    from avminer.models import build_ensemble, erfnet_arch

    arch = erfnet_arch(width=0.25, members=2)
    bundle = export_bundle(
        build_ensemble(arch, seed=0), arch, tmp_path / "bundle", version="tiny", classes=list(taxonomy.CAMVID.classes),
        void_index=11, input_hw=(32, 48), mean=tuple(arch["mean"]), std=tuple(arch["std"]), check=False,
    )
    data = _layout(tmp_path / "camvid")
    rc = main(["bench", "shift", "--model", str(bundle.path), "--data", str(data), "--fog", "0.05",
               "--night", "--json", "--backend", "onnxruntime"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "tiny" and out["reference"].startswith("fitted here on 8 day frames")
    assert set(out["auroc"]) == {"dusk_vs_day", "fog0.05_vs_clear", "night_vs_day"}
    dusk = out["auroc"]["dusk_vs_day"]
    assert dusk["positives"] == 4 and dusk["negatives"] == 11
    for entry in out["auroc"].values():
        for key in ("mahalanobis", "mahalanobis_heldout", "msp", "mi"):
            assert 0.0 <= entry[key] <= 1.0
    assert set(out["drift"]) == {"day", "dusk", "fog0.05", "night"}
    assert out["drift"]["day"]["frames"] == 11
    assert all(isinstance(e["goal_met"], bool) and isinstance(e["beats_baseline"], bool) for e in out["auroc"].values())
