"""A drive log behaves like a single-partition pair of topics."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from avminer.errors import SourceError
from avminer.events.records import CameraFrame, RadarScan
from avminer.sources.drivelog import DriveLogSource, replay_records


def test_messages_carry_records_and_per_topic_offsets(sample_drive: Path) -> None:
    src = DriveLogSource(sample_drive, "f", "r", max_records=16)
    assigned: list[set[tuple[str, int]]] = []
    src.set_rebalance_callbacks(assigned.append, lambda tps: {})
    msgs = []
    while not src.exhausted:
        msgs += src.poll(0)
    assert assigned == [{("f", 0), ("r", 0)}]
    frames = [m for m in msgs if m.topic == "f"]
    radar = [m for m in msgs if m.topic == "r"]
    assert [m.offset for m in frames] == list(range(len(frames)))
    assert [m.offset for m in radar] == list(range(len(radar)))
    assert all(isinstance(m.record, CameraFrame) for m in frames)
    assert all(isinstance(m.record, RadarScan) for m in radar)
    stamps = [m.record.timestamp_us for m in msgs if m.record is not None]
    assert stamps == sorted(stamps)  # time order across both topics


def test_pause_stops_delivery_and_commit_is_recorded(sample_drive: Path) -> None:
    src = DriveLogSource(sample_drive, "f", "r", max_records=4)
    assert len(src.poll(0)) == 4
    src.pause({("f", 0)})
    assert src.poll(0) == []
    src.resume({("f", 0)})
    assert len(src.poll(0, max_records=2)) == 2
    assert src.commit({("f", 0): 3})
    assert src.committed == {("f", 0): 3}


def test_poll_with_nothing_to_deliver_waits_its_timeout(sample_drive: Path) -> None:
    # Like a consumer poll: the miner's poll loop relies on it to sleep instead of spinning a core
    # (a spinning poll loop held the GIL and halved end-to-end throughput in the pipeline benchmark).
    src = DriveLogSource(sample_drive, "f", "r")
    src.pause(src.assignment())
    start = time.monotonic()
    assert src.poll(0.2) == []
    assert time.monotonic() - start >= 0.19
    src.resume(src.assignment())
    while src.poll(0):
        pass
    assert src.exhausted
    start = time.monotonic()
    assert src.poll(0.2) == []
    assert time.monotonic() - start >= 0.19


def test_repeat_makes_distinct_samples_until_the_frame_count(sample_drive: Path) -> None:
    frames = [r for r in replay_records(sample_drive, frames=130, repeat=True) if isinstance(r, CameraFrame)]
    assert len(frames) == 130
    assert len({f.sample_id for f in frames}) == 130
    stamps = [f.timestamp_us for f in frames]
    assert stamps == sorted(stamps)


def test_missing_log_says_which_setting(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="source.drive_log"):
        DriveLogSource(tmp_path / "nope.avro")
