"""Miner processes on a real broker: SIGTERM drains, kill -9 loses nothing, rebalances, bounded memory.

The miners are subprocesses (``python -m tests.mining.support miner``) with the engine double; the
broker, decode, scoring, selection, sinks and catalog are real. "Every offset has a decision" is
checked against the positions the producer got acknowledged; "no sample has two label requests"
against the label-request topic itself.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import simplejpeg

from avminer.events import codec
from avminer.events.records import CameraFrame, Decision, LabelRequest
from tests.mining.support import (
    committed_offsets,
    consume_all,
    fleet_frames,
    miner_env,
    produce,
    start_miner,
)
from tests.services import KafkaBroker


def decided_positions(bootstrap: str, topic: str, timeout_s: float = 120) -> Counter[tuple[int, int]]:
    out: Counter[tuple[int, int]] = Counter()
    for r in consume_all(bootstrap, topic, timeout_s=timeout_s, idle_s=1.5):
        d = codec.decode_as(r.value, Decision)
        out[(d.partition, d.offset)] += 1  # type: ignore[index]
    return out


def label_requests(bootstrap: str, topic: str) -> list[LabelRequest]:
    return [codec.decode_as(r.value, LabelRequest) for r in consume_all(bootstrap, topic, idle_s=1.5)]


def wait_decided(bootstrap: str, topic: str, n: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
                 log: Path | None = None) -> Counter[tuple[int, int]]:
    deadline = time.monotonic() + timeout_s
    got: Counter[tuple[int, int]] = Counter()
    while time.monotonic() < deadline:
        got = decided_positions(bootstrap, topic, timeout_s=4)  # while decisions still flow
        if len(got) >= n:
            return got
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise AssertionError(f"miner exited with {proc.returncode} before {n} decisions\n{tail}")
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log else ""
    raise AssertionError(f"timed out waiting for {n} decided offsets (got {len(got)})\n{tail}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 60) -> float:
    """Signal the miner and wait; returns how long it took to exit."""
    start = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return time.monotonic() - start


def exit_line(log: Path) -> dict[str, str]:
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("MINER-EXIT")]
    assert lines, f"no MINER-EXIT line in {log}:\n{log.read_text()[-3000:]}"
    return dict(kv.split("=", 1) for kv in lines[-1].split()[1:])


def publish_frames(kafka: KafkaBroker, topic: str, frames: list[CameraFrame]) -> list[tuple[int, int]]:
    return produce(kafka.bootstrap, topic, [(f.vehicle_id.encode(), codec.encode(f)) for f in frames])


def test_sigterm_drains_commits_and_exits_within_the_deadline(
    kafka: KafkaBroker, fleet_topics: dict[str, str], sample_drive: Path, tmp_path: Path, unique: str
) -> None:
    positions = publish_frames(kafka, fleet_topics["frames"], list(fleet_frames(sample_drive, 600)))
    group = f"g-{unique}"
    env = miner_env(kafka.bootstrap, group, fleet_topics, tmp_path / "out", AVMINER_SHUTDOWN_DEADLINE_S="15",
                    AVMINER_KAFKA__COMMIT_INTERVAL_MS="60000")  # only the shutdown commits
    log = tmp_path / "miner.log"
    proc = start_miner(env, log, delay_ms=150)  # slow engine: plenty in flight when the signal lands
    try:
        wait_decided(kafka.bootstrap, fleet_topics["decisions"], 40, 90, proc, log)
    finally:
        took = stop(proc, signal.SIGTERM)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert took < 15
    assert exit_line(log)["drained"] == "True"
    committed = committed_offsets(kafka.bootstrap, group, fleet_topics["frames"])
    decided = decided_positions(kafka.bootstrap, fleet_topics["decisions"])
    # Drained and committed: exactly the committed prefix of every partition was decided.
    assert set(decided) == {(p, o) for p, end in committed.items() for o in range(end)}
    assert 40 <= len(decided) < len(positions)


@pytest.mark.slow
def test_kill_9_five_times_loses_nothing_and_requests_nothing_twice(
    kafka: KafkaBroker, fleet_topics: dict[str, str], sample_drive: Path, tmp_path: Path, unique: str
) -> None:
    frames = list(fleet_frames(sample_drive, 2000, vehicles=16))
    positions = publish_frames(kafka, fleet_topics["frames"], frames)
    env = miner_env(kafka.bootstrap, f"g-{unique}", fleet_topics, tmp_path / "out",
                    AVMINER_SELECTION__MEMORY_SIZE="8")  # sample images repeat: only catch true repeats
    log = tmp_path / "miner.log"
    rng = random.Random(unique)
    kills = 0
    while kills < 5:
        proc = start_miner(env, log, delay_ms=20)
        # A random moment once it is mining (group joined, decisions flowing).
        before = len(decided_positions(kafka.bootstrap, fleet_topics["decisions"]))
        wait_decided(kafka.bootstrap, fleet_topics["decisions"], min(before + 1, len(positions)), 90, proc, log)
        time.sleep(rng.uniform(0.2, 3.0))
        if proc.poll() is not None:
            raise AssertionError(f"miner died on its own:\n{log.read_text()[-3000:]}")
        stop(proc, signal.SIGKILL)
        kills += 1
    proc = start_miner(env, log, delay_ms=20)
    try:
        decided = wait_decided(kafka.bootstrap, fleet_topics["decisions"], len(positions), 240, proc, log)
    finally:
        stop(proc)
    assert set(decided) == set(positions)  # every offset has a decision
    requests = Counter(r.sample_id for r in label_requests(kafka.bootstrap, fleet_topics["label_requests"]))
    assert requests, "nothing was mined: the test would not notice duplicate requests"
    assert requests.most_common(1)[0][1] == 1, [s for s, n in requests.items() if n > 1]
    replayed = sum(n - 1 for n in decided.values())
    print(f"crash test: {len(positions)} offsets decided after 5 x kill -9; {replayed} replayed decisions; "
          f"{len(requests)} label requests, none twice")


def test_second_miner_joins_and_leaves_nothing_lost_nothing_requested_twice(
    kafka: KafkaBroker, sample_drive: Path, tmp_path: Path, unique: str
) -> None:
    topics = {name: kafka.topic(name.replace("_", "-"), 8 if name == "frames" else 1)
              for name in ("frames", "radar", "decisions", "label_requests", "dead_letter", "releases")}
    positions = publish_frames(kafka, topics["frames"], list(fleet_frames(sample_drive, 1200, vehicles=16)))
    group = f"g-{unique}"
    env = miner_env(kafka.bootstrap, group, topics, tmp_path / "out", AVMINER_SELECTION__MEMORY_SIZE="8")
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = start_miner(env, log_a, delay_ms=120)
    b = None
    try:
        wait_decided(kafka.bootstrap, topics["decisions"], 100, 90, a, log_a)
        b = start_miner(env, log_b, delay_ms=120)  # joins: partitions move to it mid-stream
        deadline = time.monotonic() + 60
        while "assigned [(" not in log_b.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(4)  # let it mine a while
        stop(b)  # leaves: its partitions go back to the first miner
        assert b.returncode == 0, log_b.read_text()[-3000:]
        decided = wait_decided(kafka.bootstrap, topics["decisions"], len(positions), 180, a, log_a)
    finally:
        stop(a)
        if b is not None and b.poll() is None:
            stop(b)
    assert int(exit_line(log_b)["decisions"]) > 0, "the second miner never got partitions"
    assert set(decided) == set(positions)
    requests = Counter(r.sample_id for r in label_requests(kafka.bootstrap, topics["label_requests"]))
    assert requests and requests.most_common(1)[0][1] == 1


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
def test_backlog_of_100k_with_a_slow_engine_keeps_rss_bounded(
    kafka: KafkaBroker, fleet_topics: dict[str, str], tmp_path: Path, unique: str
) -> None:
    rng = np.random.default_rng(0)
    small = [simplejpeg.encode_jpeg(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), quality=70)
             for _ in range(16)]
    messages = [
        (f"veh-{i % 32}".encode(),
         codec.encode(CameraFrame(vehicle_id=f"veh-{i % 32}", camera_id="front", timestamp_us=1_700_000_000_000_000 + i,
                                  frame_id=f"bp-{i}", width=32, height=24, image=small[i % 16])))
        for i in range(100_000)
    ]
    produce(kafka.bootstrap, fleet_topics["frames"], messages)
    del messages
    env = miner_env(kafka.bootstrap, f"g-{unique}", fleet_topics, tmp_path / "out")
    log = tmp_path / "miner.log"
    proc = start_miner(env, log, delay_ms=250)  # ~32 frames/s: the backlog cannot be worked off
    peak = 0
    try:
        wait_decided(kafka.bootstrap, fleet_topics["decisions"], 1, 90, proc, log)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            assert proc.poll() is None, log.read_text()[-3000:]
            peak = max(peak, rss_bytes(proc.pid))
            time.sleep(0.5)
    finally:
        stop(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]
    stats = exit_line(log)
    print(f"backpressure: peak RSS {peak / 2**20:.0f} MiB with a 100k backlog; pauses={stats['pauses']}")
    assert peak < 1.5 * 2**30
    assert int(stats["pauses"]) > 0  # the partitions were paused, not read into memory
    assert re.search(r"decisions=\d+", log.read_text())
