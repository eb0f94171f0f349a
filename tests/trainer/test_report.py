"""The compression report: MAC counting, every method end to end on tiny data, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from torch import nn

from avminer.cli.main import main
from avminer.errors import TrainerError
from avminer.trainer.report import ReportConfig, count_macs, count_params, run_report
from tests.trainer.conftest import make_frames
from tests.trainer.test_data import write_camvid


def test_count_macs_by_hand() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),  # out [4, 8, 12]: 4·8·12 · 3·9 = 10368
        nn.ConvTranspose2d(4, 2, 2, stride=2),  # in [4, 8, 12] scattered through 2·2·2: 384·8 = 3072
        nn.Flatten(),
        nn.Linear(2 * 16 * 24, 5),  # 5 · 768 = 3840
    )
    assert count_macs(net, (16, 24)) == 10368 + 3072 + 3840
    assert count_params(net) == sum(p.numel() for p in net.parameters())


def test_every_method_end_to_end_on_tiny_frames(tmp_path: Path) -> None:
    frames = make_frames(8, slices=("day/clear/test", "dusk/clear/test"))
    cfg = ReportConfig(
        tmp_path, width=0.25, input_hw=(32, 48), epochs=2, batch_size=4, lr=5e-3, threads=1, latency_runs=2,
        out_dir=tmp_path / "plots", prune_group=20.0, nuclear=5.0, rank_energy=0.99, expand_rate=2,
    )
    report = run_report(cfg, frames=(frames, frames))
    rows = {r.method: r for r in report.rows}
    assert list(rows) == ["baseline", "prune", "lowrank", "expandnet"]
    base = rows["baseline"]
    assert set(base.miou) == {"day", "dusk", "all"} and all(0 <= v <= 1 for v in base.miou.values())
    assert base.macs > 0 and base.latency_ms > 0 and base.params == base.train_params
    # A strong group lasso removes neurons; a strong nuclear norm splits convs; both shrink the net.
    assert rows["prune"].extra["kept_neurons"] < 0.5 and rows["prune"].params < base.params
    assert rows["prune"].macs < base.macs
    assert rows["lowrank"].extra["convs_split"] > 0 and rows["lowrank"].params < base.params
    # ExpandNets trains a bigger net and deploys the baseline's shapes, exactly contracted.
    exp = rows["expandnet"]
    assert exp.params == base.params and exp.macs == base.macs and exp.train_params > 3 * base.params
    assert exp.extra["contraction_err_fp64"] <= 1e-9
    assert exp.extra["contraction_err_fp32"] <= max(1e-5, 10 * exp.extra["fp32_floor"])
    for method in ("prune", "lowrank"):
        assert Path(report.plots[method]).read_bytes()[:4] == b"\x89PNG"
    table = report.table()
    assert table.splitlines()[0].split(" | ")[0].strip() == "method"
    assert all(m in table for m in rows) and "mIoU dusk" in table
    json.dumps(report.as_dict())  # JSON-able as is


def test_report_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="unknown compression methods"):
        ReportConfig(tmp_path, methods=("baseline", "distill"))
    with pytest.raises(TrainerError, match="multiples of 8"):
        ReportConfig(tmp_path, input_hw=(30, 40))


def test_cli_prints_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [(f"d{i}", "train", "A", "day") for i in range(4)] + [("v0", "val", "A", "day"), ("n0", "train", "B", "dusk")]
    data = write_camvid(tmp_path / "cv", rows)
    rc = main(["train", "report", "--data", str(data), "--quick", "--epochs", "1", "--size", "32x48",
               "--methods", "baseline", "prune", "--threads", "1", "--out", str(tmp_path / "out"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in out["rows"]] == ["baseline", "prune"]
    assert out["settings"]["train_frames"] == 2  # every second of the 4 day training frames (--quick)
    assert set(out["rows"][0]["miou"]) == {"day", "dusk", "all"}
    assert math.isfinite(out["rows"][0]["ort_latency_ms"])
    assert Path(out["plots"]["prune"]).exists()
