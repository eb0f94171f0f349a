"""The ``sample`` profile: what `make run` mines the sample drive with, printed, and never used on Kafka."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from avminer.config import SelectionSettings, load_settings
from avminer.errors import ConfigError
from avminer.mining.profiles import check_embedded, describe, profile_overrides, sample_selection
from avminer.sinks.local import read_jsonl

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "avminer.cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **(env or {})})


def test_sample_selection_scales_the_condition_rates_with_the_target() -> None:
    base = SelectionSettings(target_rate=0.001, slice_rates={"dusk/*/*": 0.005, "*/fog/*": 0.5})
    sel = sample_selection(base)
    assert sel["target_rate"] == 0.1
    assert sel["slice_rates"] == {"dusk/*/*": pytest.approx(0.5), "*/fog/*": 1.0}  # ratio kept, capped at 1
    assert sel["warmup_frames"] == 8 and sel["camera_cooldown_s"] == 0.0 and sel["fleet_sketches"] is False
    with pytest.raises(ConfigError, match="target rate"):
        sample_selection(base, target_rate=0.0)
    with pytest.raises(ConfigError, match="unknown profile 'fleet'"):
        profile_overrides("fleet", base)


def test_the_profile_is_refused_when_a_broker_is_configured() -> None:
    kafka = load_settings(environ={"AVMINER_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9"},
                          overrides=profile_overrides("sample", SelectionSettings()))
    with pytest.raises(ConfigError, match="kafka.bootstrap_servers is set"):
        check_embedded(kafka, "sample")
    embedded = load_settings(environ={}, overrides=profile_overrides("sample", SelectionSettings()))
    check_embedded(embedded, "sample")
    line = describe(embedded, "sample")
    assert "not the production defaults" in line and "target_rate=0.1 " in line and "production: target_rate=0.001" in line


def test_mine_refuses_the_sample_profile_against_kafka(tmp_path: Path) -> None:
    done = cli("mine", "--profile", "sample", "--output", str(tmp_path / "out"), cwd=tmp_path,
               env={"AVMINER_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9"})
    assert done.returncode == 2
    assert "profile 'sample' is for embedded runs" in done.stderr and "drop --profile" in done.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was opened


def test_make_run_mines_visible_frames_and_says_where_everything_is(tmp_path: Path) -> None:
    """What `make run` runs, on a directory with nothing in it."""
    out = tmp_path / "avminer-out"
    done = cli("mine", "--profile", "sample", "--output", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    stdout = done.stdout
    assert stdout.startswith("profile 'sample' (not the production defaults)")
    decisions = read_jsonl(out / "decisions.jsonl")
    mined = [d for d in decisions if d["mined"]]
    assert len(decisions) == 48 and len(mined) >= 5
    assert any(d["slice"].startswith("dusk/") for d in mined)
    # The per-condition summary, with the counts of the files.
    for slice_key in sorted({d["slice"] for d in decisions}):
        row = re.search(rf"^{re.escape(slice_key)}\s+(\d+)\s+(\d+)$", stdout, re.MULTILINE)
        assert row, stdout
        assert int(row.group(1)) == sum(d["slice"] == slice_key for d in decisions)
        assert int(row.group(2)) == sum(d["slice"] == slice_key for d in mined)
    tail = stdout.strip().splitlines()[-5:]
    assert [line.split(":")[0] for line in tail] == ["frames", "requests", "decisions", "catalog", "report"]
    assert f"report:    {out / 'report' / 'index.html'}" in stdout
    assert len(read_jsonl(out / "requests.jsonl")) == len(mined)
    page = (out / "report" / "index.html").read_text()
    assert page.count('class="card"') == len(mined)
