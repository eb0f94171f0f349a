"""``avminer train run`` and ``avminer train gate`` end to end on a tiny generated CamVid-layout dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avminer.cli.main import main
from avminer.engines.bundle import load_bundle
from tests.trainer.test_data import write_camvid


def test_train_run_then_gate(tmp_path: Path, sample_drive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [(f"d{i}", "train", "A", "day") for i in range(6)] + [("v0", "val", "A", "day"), ("n0", "train", "B", "dusk")]
    data = write_camvid(tmp_path / "cv", rows)
    out = tmp_path / "bundle"
    rc = main(["train", "run", "--data", str(data), "--out", str(out), "--day-only", "--epochs", "1",
               "--members", "2", "--width", "0.25", "--size", "32x48", "--work-dir", str(tmp_path / "w"),
               "--version", "cli-1", "--threads", "1", "--no-progress", "--json",
               "--drive-log", str(sample_drive), "--limit", "3"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["miou"]) == {"day/clear/town", "dusk/clear/town", "all"}
    bundle = load_bundle(out)
    assert bundle.version == "cli-1" and bundle.members == 2
    trained_on = bundle.manifest["trained_on"]
    assert "day/clear/town" in trained_on["slices"] and trained_on["frames"] == 6  # 3 CamVid + 3 drive-log

    rc = main(["train", "gate", "--candidate", str(out), "--production", str(out), "--data", str(data), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"]
    assert {s["slice"] for s in report["slices"]} == {"all", "day", "dusk", "fog", "region:town"}
    assert main(["train"]) == 2  # no action: help, usage error


def test_train_report_is_a_subcommand_of_train_only() -> None:
    from avminer.cli.main import build_parser
    from avminer.cli.train_report import _run

    parser = build_parser()
    flags = ["--data", "d", "--quick", "--methods", "baseline", "lowrank", "--threads", "1", "--json"]
    args = parser.parse_args(["train", "report", *flags])
    assert (args.data, args.quick, args.methods, args.threads, args.json) == ("d", True, ["baseline", "lowrank"], 1, True)
    assert args.train_func is _run
    with pytest.raises(SystemExit):  # the old top-level alias is gone: one name per command
        parser.parse_args(["train-report", *flags])
