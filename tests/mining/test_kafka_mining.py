"""The miner on a real broker: every frame decided once, poison dead-lettered, commits after the sinks."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg

from avminer.config import Settings, load_settings
from avminer.events import codec
from avminer.events.records import CameraFrame, Decision, LabelRequest, ModelRelease
from avminer.mining import decode
from avminer.mining.daemon import open_engines
from tests.integration.support import MinerThread as _MinerThread
from tests.mining.support import (
    committed_offsets,
    consume_all,
    fake_holder,
    fleet_frames,
    miner_env,
    produce,
    sample_records,
)
from tests.services import KafkaBroker


def ends(positions: list[tuple[int, int]]) -> dict[int, int]:
    """Partition -> offset after its last produced record (what a complete commit names)."""
    out: dict[int, int] = {}
    for p, o in positions:
        out[p] = max(out.get(p, 0), o + 1)
    return out


def decisions_of(bootstrap: str, topic: str, expect: int | None = None, timeout_s: float = 90) -> list[Decision]:
    return [codec.decode_as(r.value, Decision) for r in consume_all(bootstrap, topic, expect, timeout_s)]


class MinerThread(_MinerThread):
    """:class:`tests.integration.support.MinerThread` with the test-double engine unless one is given."""

    def __init__(self, settings: Settings, engines: Any = None) -> None:
        super().__init__(settings, engines if engines is not None else fake_holder())


def settings_for(kafka: KafkaBroker, topics: dict[str, str], tmp_path: Path, group: str, **extra: str) -> Settings:
    return load_settings(environ=miner_env(kafka.bootstrap, group, topics, tmp_path / "out", **extra))


def wait_for_count(fetch: Any, n: int, timeout_s: float, what: str) -> list[Any]:
    """Call ``fetch()`` until it returns at least ``n`` items."""
    deadline = time.monotonic() + timeout_s
    got: list[Any] = []
    while time.monotonic() < deadline:
        got = fetch()
        if len(got) >= n:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {n} {what}; got {len(got)}")


def test_mines_the_sample_drive_over_kafka(
    kafka: KafkaBroker, fleet_topics: dict[str, str], sample_drive: Path, tmp_path: Path, unique: str
) -> None:
    frames, radar = sample_records(sample_drive)
    frame_pos = produce(kafka.bootstrap, fleet_topics["frames"],
                        [(f.vehicle_id.encode(), codec.encode(f)) for f in frames])
    radar_pos = produce(kafka.bootstrap, fleet_topics["radar"], [(r.vehicle_id.encode(), codec.encode(r)) for r in radar])
    settings = settings_for(kafka, fleet_topics, tmp_path, f"g-{unique}", AVMINER_SOURCE__RADAR_WAIT_MS="200",
                            AVMINER_SELECTION__FLEET_SKETCHES="true", AVMINER_TOPICS__SKETCHES=f"sketches-{unique}")
    holder = open_engines(settings)  # the real starter model: this is the end-to-end test
    with MinerThread(settings, holder) as miner:
        got = wait_for_count(lambda: decisions_of(kafka.bootstrap, fleet_topics["decisions"], len(frames), 5),
                             len(frames), 120, "decisions")
    assert miner.error is None and miner.stats is not None
    by_sample = {d.sample_id: d for d in got}
    assert set(by_sample) == {f.sample_id for f in frames}
    version = holder.version
    holder.close()
    assert all(d.model_version == version and d.topic == fleet_topics["frames"] for d in got)
    assert {(d.partition, d.offset) for d in got} == set(frame_pos)
    # Commits cover every frame and every radar scan (joined or expired by the drain).
    group = f"g-{unique}"
    assert committed_offsets(kafka.bootstrap, group, fleet_topics["frames"]) == ends(frame_pos)
    assert committed_offsets(kafka.bootstrap, group, fleet_topics["radar"]) == ends(radar_pos)
    assert radar and miner.stats.radar == len(radar)
    # Radar was joined to frames (a disagreement score needs a joined scan).
    assert any(d.scores["radar"] > 0 for d in got)
    requests = [codec.decode_as(r.value, LabelRequest)
                for r in consume_all(kafka.bootstrap, fleet_topics["label_requests"], idle_s=1)]
    assert Counter(r.sample_id for r in requests).most_common(1)[0][1] == 1 if requests else True
    assert {r.sample_id for r in requests} == {d.sample_id for d in got if d.mined}


def poison_values(good: CameraFrame, rng: np.random.Generator) -> list[tuple[bytes, str]]:
    """(value, expected reason) for the kinds of poison a fleet produces."""
    truncated = dataclasses.replace(good, image=good.image[: len(good.image) // 3] if good.image else b"")
    garbage_jpeg = dataclasses.replace(good, image=b"\xff\xd8\xff\xe0" + rng.bytes(300))
    huge = simplejpeg.encode_jpeg(np.zeros((1100, 1000, 3), np.uint8), quality=30)
    oversize = dataclasses.replace(good, image=huge, width=1000, height=1100)
    kinds = [
        (rng.bytes(64), decode.UNDECODABLE),
        (b"AV\x01\x0aNotARecord\x00\x01" + rng.bytes(20), decode.UNKNOWN_SCHEMA),
        (codec.encode(truncated), decode.CORRUPT_IMAGE),
        (codec.encode(garbage_jpeg), decode.CORRUPT_IMAGE),
        (codec.encode(oversize), decode.OVERSIZE_IMAGE),
    ]
    return kinds


def test_poison_goes_to_the_dead_letter_topic_and_mining_goes_on(
    kafka: KafkaBroker, fleet_topics: dict[str, str], sample_drive: Path, tmp_path: Path, unique: str
) -> None:
    rng = np.random.default_rng(1)
    good = list(fleet_frames(sample_drive, 100))
    kinds = poison_values(good[0], rng)
    messages: list[tuple[bytes | None, bytes]] = []
    expected: Counter[str] = Counter()
    poison_by_value: dict[bytes, str] = {}
    for i in range(1000):
        value, reason = kinds[i % len(kinds)]
        if reason == decode.UNDECODABLE:
            value = rng.bytes(64)
        messages.append((f"veh-{i % 8}".encode(), value))
        expected[reason] += 1
        poison_by_value[value] = reason
        if i % 10 == 0:
            f = good[i // 10]
            messages.append((f.vehicle_id.encode(), codec.encode(f)))
    positions = produce(kafka.bootstrap, fleet_topics["frames"], messages)
    settings = settings_for(kafka, fleet_topics, tmp_path, f"g-{unique}", AVMINER_DECODE__MAX_PIXELS="1000000")
    with MinerThread(settings):
        dead = wait_for_count(lambda: consume_all(kafka.bootstrap, fleet_topics["dead_letter"], 1000, 5),
                              1000, 120, "dead letters")
        decided = wait_for_count(lambda: decisions_of(kafka.bootstrap, fleet_topics["decisions"], 100, 5),
                                 100, 60, "decisions")
    assert {d.sample_id for d in decided} == {f.sample_id for f in good}
    got: Counter[str] = Counter()
    dead_positions: set[tuple[int, int]] = set()
    for r in dead:
        headers = {k: v.decode() for k, v in r.headers}
        assert headers["source_topic"] == fleet_topics["frames"]
        assert headers["error"]
        assert headers["reason"] == poison_by_value[r.value]  # the original bytes, with their reason
        dead_positions.add((int(headers["source_partition"]), int(headers["source_offset"])))
        got[headers["reason"]] += 1
    poison_positions = {pos for pos, (_, value) in zip(positions, messages, strict=True) if value in poison_by_value}
    assert dead_positions == poison_positions and len(dead_positions) == 1000
    assert got == expected
    assert committed_offsets(kafka.bootstrap, f"g-{unique}", fleet_topics["frames"]) == ends(positions)


def test_model_releases_are_hot_swapped_and_named_by_every_decision(
    kafka: KafkaBroker, fleet_topics: dict[str, str], sample_drive: Path, tmp_path: Path, unique: str
) -> None:
    frames = list(fleet_frames(sample_drive, 96))
    first, second = frames[:48], frames[48:]
    produce(kafka.bootstrap, fleet_topics["frames"], [(f.vehicle_id.encode(), codec.encode(f)) for f in first])
    settings = settings_for(kafka, fleet_topics, tmp_path, f"g-{unique}")
    holder = fake_holder()
    with MinerThread(settings, holder):
        wait_for_count(lambda: decisions_of(kafka.bootstrap, fleet_topics["decisions"], 48, 5), 48, 90, "decisions")
        release = ModelRelease(version="fake-2", bundle_uri="file:///releases/fake-2/", manifest_sha256="0" * 64,
                               created_at_us=int(time.time() * 1e6), members=3)
        produce(kafka.bootstrap, fleet_topics["releases"], [(b"fake-2", codec.encode(release))])
        deadline = time.monotonic() + 60
        while holder.version != "fake-2" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert holder.version == "fake-2"
        produce(kafka.bootstrap, fleet_topics["frames"], [(f.vehicle_id.encode(), codec.encode(f)) for f in second])
        got = wait_for_count(lambda: decisions_of(kafka.bootstrap, fleet_topics["decisions"], 96, 5), 96, 90,
                             "decisions")
    version = {d.sample_id: d.model_version for d in got}
    assert {version[f.sample_id] for f in first} == {"fake-1"}
    assert {version[f.sample_id] for f in second} == {"fake-2"}
