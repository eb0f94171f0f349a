"""Fleet-wide thresholds over the real broker: skewed partitions converge after sharing sketches."""

from __future__ import annotations

import time

import numpy as np
import pytest

from avminer.config import Settings, load_settings
from avminer.errors import SelectionError
from avminer.mining.fleet import (
    FleetSketchSync,
    decode_sketches,
    encode_sketches,
    ensure_compacted_topic,
)
from avminer.selection.policy import Candidate, SelectionPolicy
from avminer.selection.sketch import QuantileSketch

SLICE = "dusk/clear/cambridge_uk"


def _settings(bootstrap: str, topic: str) -> Settings:
    return load_settings(environ={}, overrides={
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": {"sketches": topic},
        "selection": {"slice_rates": {SLICE: 0.05}, "camera_cooldown_s": 0.0, "sketch_publish_interval_s": 0.0},
    })


def _frames(n: int, seed: int, mi_loc: float, vehicle: str) -> list[Candidate]:
    """One vehicle's frames; vehicles differ (a skewed partition sees a different score distribution)."""
    rng = np.random.default_rng(seed)
    return [
        Candidate(f"{vehicle}-{i}", f"{vehicle}/front", SLICE,
                  {"mi": float(np.exp(rng.normal(mi_loc, 0.8))), "shift": float(rng.chisquare(16)), "radar": 0.0},
                  None, float(i))
        for i in range(n)
    ]


def _feed(policy: SelectionPolicy, cands: list[Candidate]) -> None:
    for i in range(0, len(cands), 16):
        policy.select(cands[i: i + 16])


def test_message_codec_round_trip() -> None:
    value = {"day/clear/x": b"\x01abc", "night/fog/y": b""}
    assert decode_sketches(encode_sketches(value)) == value
    with pytest.raises(SelectionError):
        decode_sketches(b"\x01\x05\x00\x00\x00\x03")


def test_skewed_partitions_converge_to_the_fleet_threshold(kafka, unique) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(kafka.bootstrap, kafka.topic("sketches"))
    a = SelectionPolicy(settings.selection, clock=lambda: 0.0)
    b = SelectionPolicy(settings.selection, clock=lambda: 0.0)
    # miner A owns 90% of the slice's frames (calm vehicles), miner B 10% (a vehicle in harder scenes)
    _feed(a, _frames(2700, seed=1, mi_loc=-3.0, vehicle="v-a"))
    _feed(b, _frames(300, seed=2, mi_loc=-2.0, vehicle="v-b"))
    assert a.threshold(SLICE) is not None and b.threshold(SLICE) is not None
    probe = {"mi": float(np.exp(-1.0)), "shift": 16.0, "radar": 0.0}  # a fairly uncertain frame
    alone_a, alone_b = a.priority(SLICE, probe)[0], b.priority(SLICE, probe)[0]

    # the fleet-wide reference: one sketch of every frame's priority, as either miner computed it
    fleet = QuantileSketch.from_bytes(a._slices[SLICE].local["priority"].to_bytes())
    fleet.merge(b._slices[SLICE].local["priority"])
    expected = fleet.quantile(1 - 0.05)

    sync_a = FleetSketchSync(settings, a, miner_id=f"miner-a-{unique}").open()
    sync_b = FleetSketchSync(settings, b, miner_id=f"miner-b-{unique}").open()
    try:
        sync_a.publish()
        sync_b.publish()
        deadline = time.monotonic() + 30
        while (not sync_a.known_miners or not sync_b.known_miners) and time.monotonic() < deadline:
            sync_a.poll(200)
            sync_b.poll(200)
        assert sync_a.known_miners == {sync_b.miner_id}
        assert sync_b.known_miners == {sync_a.miner_id}
        # one fleet-wide priority distribution on both; each miner's threshold reads it at its own budget
        assert a.pooled_quantile(1 - 0.05) == b.pooled_quantile(1 - 0.05) == pytest.approx(expected)
        assert a.threshold(SLICE) is not None and b.threshold(SLICE) is not None
        # the same frame now gets the same priority on both miners; alone, B (which sees harder frames)
        # ranked it far lower than the fleet does
        both_a, both_b = a.priority(SLICE, probe)[0], b.priority(SLICE, probe)[0]
        assert both_a == both_b
        assert alone_b < both_b < alone_a  # the fleet view sits between the two skewed local views
        assert alone_b < 0.75 * both_b
        assert a.stats()[SLICE]["fleet_frames"] == b.stats()[SLICE]["fleet_frames"] == 3000

        # republishing replaces (not adds): counts stay those of the latest publication
        sync_a.publish()
        deadline = time.monotonic() + 30
        before = sync_b.merged_messages
        while sync_b.merged_messages == before and time.monotonic() < deadline:
            sync_b.poll(200)
        assert b.stats()[SLICE]["fleet_frames"] == 3000
    finally:
        sync_a.stop(leave=True)
        sync_b.close()


def test_background_sync_and_compacted_topic(kafka, unique) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(kafka.bootstrap, f"avminer.sketches-{unique}")
    ensure_compacted_topic(settings)
    ensure_compacted_topic(settings)  # idempotent
    a = SelectionPolicy(settings.selection, clock=lambda: 0.0)
    b = SelectionPolicy(settings.selection, clock=lambda: 0.0)
    _feed(a, _frames(400, seed=3, mi_loc=-3.0, vehicle="v-a"))
    sync_a = FleetSketchSync(settings, a, miner_id="a").start()
    sync_b = FleetSketchSync(settings, b, miner_id="b").start()
    try:
        deadline = time.monotonic() + 30
        while b.stats().get(SLICE, {}).get("fleet_frames", 0) < 400 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert b.stats()[SLICE]["fleet_frames"] == 400
    finally:
        sync_a.stop()
        sync_b.stop()
