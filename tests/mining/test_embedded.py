"""Embedded mode: a drive log in, a local directory and a SQLite catalog out; the demo and the bench."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from avminer.config import load_settings
from avminer.engines import default_bundle_path
from avminer.events.records import CameraFrame
from avminer.mining.daemon import run_miner
from avminer.mining.report import MiningReport
from avminer.sinks.local import read_jsonl, read_requests
from tests.mining.support import fake_holder, sample_records

REPO = Path(__file__).resolve().parents[2]


def embedded_settings(out: Path) -> object:
    return load_settings(environ={}, overrides={
        "sinks": {"output_dir": str(out)}, "metrics": {"port": 0},
        # 48 frames, 8 of each slice spent warming up: a high rate so that the sinks surely get mined frames
        # (what this module tests is the plumbing; rates are tested in tests/selection).
        "selection": {"target_rate": 0.5, "slice_rates": {}, "warmup_frames": 8, "camera_cooldown_s": 0.0},
    })


def test_drive_log_to_local_directory_and_catalog_and_replay_adds_nothing(sample_drive: Path, tmp_path: Path) -> None:
    frames, _ = sample_records(sample_drive)
    out = tmp_path / "out"
    settings = embedded_settings(out)
    report = MiningReport()
    stats = run_miner(settings, engines=fake_holder(), drive_log=sample_drive, on_decided=report.add,  # type: ignore[arg-type]
                      handle_signals=False, serve_metrics=False)
    assert stats.decisions == len(frames) and stats.dead_letters == 0 and stats.drained
    decisions = read_jsonl(out / "decisions.jsonl")
    assert {d["sample_id"] for d in decisions} == {f.sample_id for f in frames}
    requests = read_requests(out)
    mined = {d["sample_id"] for d in decisions if d["mined"]}
    assert mined and {r.sample_id for r in requests} == mined
    assert all(Path(r.frame_uri.removeprefix("file://")).is_file() for r in requests)
    assert (out / "catalog.db").is_file()
    text = report.render()
    assert f"frames decided: {len(frames)}" in text
    assert report.contact_sheet(tmp_path / "sheet.png") is not None
    # The same drive again into the same directory (a replay): nothing is requested twice.
    run_miner(settings, engines=fake_holder(), drive_log=sample_drive, handle_signals=False,  # type: ignore[arg-type]
              serve_metrics=False)
    again = read_requests(out)
    assert len(again) == len({r.sample_id for r in again}) == len(requests)


def _truncate_every_fifth_record(sample_drive: Path, bad_log: Path) -> Path:
    """A copy of the drive log in which every fifth record, if a camera frame, has a truncated JPEG."""
    import dataclasses

    from avminer.events.drivelog import DriveLogWriter, read_drive_log

    with DriveLogWriter(bad_log) as w:
        for i, rec in enumerate(read_drive_log(sample_drive)):
            if isinstance(rec, CameraFrame) and i % 5 == 0 and rec.image:
                rec = dataclasses.replace(rec, image=rec.image[:100])
            w.write(rec)
    return bad_log


def test_corrupt_frames_in_a_drive_log_are_dead_lettered(sample_drive: Path, tmp_path: Path) -> None:
    bad_log = _truncate_every_fifth_record(sample_drive, tmp_path / "bad.avro")
    out = tmp_path / "out"
    stats = run_miner(embedded_settings(out), engines=fake_holder(), drive_log=bad_log,  # type: ignore[arg-type]
                      handle_signals=False, serve_metrics=False)
    index = read_jsonl(out / "dead-letter" / "index.jsonl")
    assert stats.dead_letters == len(index) > 0
    assert {e["reason"] for e in index} == {"corrupt_image"}
    assert stats.decisions + stats.dead_letters == stats.frames


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "avminer.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def starter_bundle() -> Path:
    """The CLI tests run the real starter model (the other tests here use the engine double)."""
    path = default_bundle_path()
    if not (path / "manifest.json").is_file():
        pytest.fail(f"{path} is missing; rebuild it with tools/train_starter.py")
    return path


def test_mine_cli_embedded_with_the_starter_model(tmp_path: Path, starter_bundle: Path) -> None:
    done = cli("mine", "--output", str(tmp_path / "out"), "--frames", "16", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["mode"] == "embedded" and summary["decisions"] == 16
    assert len(read_jsonl(tmp_path / "out" / "decisions.jsonl")) == 16


def test_demo_prints_a_report_and_writes_a_contact_sheet(tmp_path: Path, starter_bundle: Path) -> None:
    done = cli("demo", "--out", str(tmp_path / "demo"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "target_rate=0.1" in done.stdout
    assert "frames decided: 48" in done.stdout
    assert "mined by reason" in done.stdout
    sheet = tmp_path / "demo" / "contact_sheet.png"
    assert sheet.is_file() and sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "demo" / "report" / "index.html").is_file()


def test_bench_pipeline_prints_one_json_object(tmp_path: Path, starter_bundle: Path) -> None:
    done = cli("bench", "pipeline", "--frames", "24", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["frames"] == 24
    assert result["pipeline_fps"] > 0 and result["engine_fps"] > 0
    assert result["ratio"] == pytest.approx(result["pipeline_fps"] / result["engine_fps"], rel=0.02)


def test_bench_pipeline_refuses_to_report_when_frames_were_dead_lettered(sample_drive: Path, tmp_path: Path) -> None:
    """Frames that never reached the engine would make the figures measure something else (on the GPU
    machine, a decoder wheel for the wrong Python sent every frame to the dead letters and the bench said
    0 frames/s): the bench fails and names the first reason."""
    from avminer.errors import MiningError
    from avminer.evaluation.pipeline import run_pipeline_bench

    bad_log = _truncate_every_fifth_record(sample_drive, tmp_path / "bad.avro")
    with pytest.raises(MiningError, match=r"went to the dead letters \(first: corrupt_image"):
        run_pipeline_bench(None, frames=24, drive_log=str(bad_log), backend="null")


def test_several_decode_workers_keep_each_partition_in_order(
    sample_drive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random
    import time

    import avminer.mining.pipeline as pipeline_module

    real_decode = pipeline_module.decode_image
    rng = random.Random(7)

    def uneven_decode(*args: object, **kwargs: object) -> object:
        time.sleep(rng.uniform(0.0, 0.02))  # workers finish out of order
        return real_decode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline_module, "decode_image", uneven_decode)
    settings = load_settings(environ={}, overrides={
        "sinks": {"output_dir": str(tmp_path / "out")}, "metrics": {"port": 0}, "decode": {"workers": 4},
    })
    offsets: list[int] = []
    stats = run_miner(settings, engines=fake_holder(), drive_log=sample_drive,  # type: ignore[arg-type]
                      on_decided=lambda batch: offsets.extend(d.decision.offset for d in batch),
                      handle_signals=False, serve_metrics=False)
    frames, _ = sample_records(sample_drive)
    assert stats.decisions == len(frames) and stats.drained
    assert offsets == sorted(offsets) == list(range(len(frames)))


def test_a_paused_poll_thread_refills_as_soon_as_the_decode_queue_drains(
    sample_drive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backpressure pauses the source; the decode workers wake the poll thread once the queue is down to
    half, and it polls without waiting (a fixed 50 ms sleep per refill capped the bench at ~600 frames/s)."""
    from avminer.sources.drivelog import DriveLogSource

    polls: list[tuple[bool, float]] = []
    real_poll = DriveLogSource.poll

    def poll(self: DriveLogSource, timeout_s: float, max_records: int | None = None) -> list:  # type: ignore[type-arg]
        polls.append((bool(self._paused), timeout_s))
        return real_poll(self, timeout_s, max_records)

    monkeypatch.setattr(DriveLogSource, "poll", poll)
    settings = load_settings(environ={}, overrides={
        "sinks": {"output_dir": str(tmp_path / "out")}, "metrics": {"port": 0},
        "batcher": {"queue_size": 4}, "decode": {"workers": 1},
    })
    stats = run_miner(settings, engines=fake_holder(), drive_log=sample_drive, frames=150, repeat=True,  # type: ignore[arg-type]
                      handle_signals=False, serve_metrics=False)
    assert stats.decisions == 150 and stats.drained and stats.pauses > 0
    paused = [timeout for was_paused, timeout in polls if was_paused]
    assert paused and 0.0 in paused


def test_the_end_of_a_drive_log_does_not_cut_the_radar_join_short(
    sample_drive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source runs out long before decoding catches up (slow radar decoding here): the join must not be
    flushed while messages are still being decoded, or frames waiting for the scan behind them lose it."""
    import time

    from avminer.mining.pipeline import Pipeline
    from avminer.sources.join import RadarJoiner

    frames, scans = sample_records(sample_drive)
    window_us = 100_000
    expected = {f.frame_id for f in frames
                if any(s.vehicle_id == f.vehicle_id and abs(s.timestamp_us - f.timestamp_us) <= window_us for s in scans)}
    joined: dict[str, bool] = {}
    real_pop, real_decode = RadarJoiner.pop_ready, Pipeline._decode_one

    def pop_ready(self: RadarJoiner) -> list:  # type: ignore[type-arg]
        out = real_pop(self)
        joined.update({work.frame.frame_id: scan is not None for work, scan in out})
        return out

    def decode_one(self: Pipeline, msg: object, job: object) -> object:
        if getattr(msg, "topic", "") == self.settings.topics.radar:
            time.sleep(0.02)  # radar decodes slowly: the assembler often finds its queue empty meanwhile
        return real_decode(self, msg, job)  # type: ignore[arg-type]

    monkeypatch.setattr(RadarJoiner, "pop_ready", pop_ready)
    monkeypatch.setattr(Pipeline, "_decode_one", decode_one)
    settings = load_settings(environ={}, overrides={
        "sinks": {"output_dir": str(tmp_path / "out")}, "metrics": {"port": 0}, "decode": {"workers": 1},
        "source": {"radar_join_window_ms": window_us // 1000, "radar_wait_ms": 10_000},
    })
    stats = run_miner(settings, engines=fake_holder(), drive_log=sample_drive, handle_signals=False,  # type: ignore[arg-type]
                      serve_metrics=False)
    assert stats.decisions == len(frames) and expected
    assert {fid for fid, ok in joined.items() if ok} == expected


def test_the_policy_reads_the_release_gate_quality_on_its_first_batch(sample_drive: Path, tmp_path: Path) -> None:
    """A bundle that ships its gates' figures: every frame of a condition measured weak carries the offset the
    policy added to its priority, and the policy's stats show it."""
    import math

    from avminer.engines.hotswap import EngineHolder
    from avminer.selection.policy import SelectionPolicy
    from tests.mining.support import FakeEngine, fake_bundle

    bundle = fake_bundle(version="measured")
    bundle.manifest["gate_quality"] = {"all": {"miou": 0.5, "frames": 1000}, "dusk": {"miou": 0.125, "frames": 1000}}
    settings = embedded_settings(tmp_path / "out")
    policy = SelectionPolicy(settings.selection)  # type: ignore[attr-defined]
    run_miner(settings, engines=EngineHolder(FakeEngine(bundle)), drive_log=sample_drive,  # type: ignore[arg-type]
              handle_signals=False, serve_metrics=False, policy=policy)
    decisions = read_jsonl(tmp_path / "out" / "decisions.jsonl")
    dusk = [d for d in decisions if d["slice"].startswith("dusk/")]
    assert dusk and len(dusk) < len(decisions)
    # (1000 x 0.125 + 8 x 0.5) / 1008 = 0.128: offset log10(0.5 / 0.128) for dusk, none for day.
    expected = math.log10(0.5 / ((1000 * 0.125 + 8 * 0.5) / 1008))
    ranked = [d for d in dusk if "surprise_mi" in d["scores"]]  # not rejected as repeats before ranking
    assert ranked and all(d["scores"]["quality_offset"] == pytest.approx(expected) for d in ranked)
    assert not any("quality_offset" in d["scores"] for d in decisions if d["slice"].startswith("day/"))
    assert policy.stats()[dusk[0]["slice"]]["quality_offset"] == pytest.approx(expected)
