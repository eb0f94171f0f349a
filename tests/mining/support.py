"""Test support for the mining tests: an engine double, fleet data on real topics, a miner subprocess.

The only double is the engine (:class:`FakeEngine`): a cheap deterministic ensemble with a tunable
delay, so tests control timing (a slow engine for backpressure, a quick one for crash loops) without
the starter model's CPU cost. Everything else — Kafka, decode, radar join, scoring, selection, sinks,
catalog — is the real thing.

``python -m tests.mining.support miner --engine fake --delay-ms 20`` runs one miner process with the
settings from ``AVMINER_*`` (the subprocess tests use it; ``--engine real`` uses the starter bundle).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avminer.engines.base import Engine, compact_from_probs
from avminer.engines.bundle import Bundle
from avminer.engines.contract import EngineOutput, HeadSpec
from avminer.events.records import CameraFrame, RadarScan

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian",
           "bicyclist", "void"]


def fake_bundle(version: str = "fake-1", height: int = 36, width: int = 48, members: int = 3) -> Bundle:
    """A bundle manifest for :class:`FakeEngine` (no files: nothing is loaded from it)."""
    manifest = {
        "format": "avminer-bundle/2", "version": version, "members": members,
        "input": {"height": height, "width": width}, "classes": CLASSES, "void_index": 11,
        "feature_dim": 16, "files": {"model.onnx": "0" * 64}, "head": HeadSpec.for_classes(CLASSES).to_manifest(),
    }
    return Bundle(Path("/nonexistent-fake-bundle"), manifest)


class FakeEngine(Engine):
    """A deterministic 'ensemble': per-member linear logits of the grey level, softmax over classes.

    Members disagree more on mid-grey pixels, so frames differ in uncertainty and selection has
    something to rank. ``delay_s`` per batch makes it a slow engine.
    """

    backend = "fake"

    def __init__(self, bundle: Bundle | None = None, delay_s: float = 0.0) -> None:
        super().__init__(bundle or fake_bundle())
        self.delay_s = delay_s
        rng = np.random.default_rng(7)
        k, c = self.bundle.members, len(self.bundle.classes)
        self._w = rng.normal(0, 4, (k, c)).astype(np.float32)
        self._b = rng.normal(0, 1, (k, c)).astype(np.float32)
        self._proj = rng.normal(0, 1, (64, self.bundle.feature_dim)).astype(np.float32)

    def _run(self, images: np.ndarray, probs: bool) -> EngineOutput:
        """The probabilities below, scored by the numpy twin of the in-graph head."""
        p, features = self._probs(images)
        scores, features, umap, fetch = compact_from_probs(p, features, self.head, len(self.bundle.classes))
        return self._output(scores, features, umap, fetch, p if probs else None)

    def _probs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.delay_s:
            time.sleep(self.delay_s)
        grey = images.mean(axis=3, dtype=np.float32) / 255.0  # [N, H, W]
        logits = self._w[:, None, :, None, None] * grey[None, :, None] + self._b[:, None, :, None, None]
        logits -= logits.max(axis=2, keepdims=True)  # [K, N, C, H, W]
        e = np.exp(logits)
        probs = (e / e.sum(axis=2, keepdims=True)).astype(np.float32)
        n, h, w = grey.shape
        # Features: a fixed random projection of the centred 8x8 thumbnail, so different images get
        # clearly different embeddings (near-duplicate checks) and identical ones identical embeddings.
        thumb = grey[:, : h - h % 8, : w - w % 8].reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(n, 64)
        thumb -= thumb.mean(axis=1, keepdims=True)
        return probs, (thumb @ self._proj).astype(np.float32)


def fake_holder(delay_s: float = 0.0) -> Any:
    """A real :class:`EngineHolder` serving :class:`FakeEngine`; a release of version V swaps in a fake V."""
    from avminer.engines.hotswap import EngineHolder

    return EngineHolder(
        FakeEngine(delay_s=delay_s),
        opener=lambda bundle: FakeEngine(bundle, delay_s=delay_s),
        fetcher=lambda release: fake_bundle(version=release.version),
    )


# -- fleet data --------------------------------------------------------------------------------------------

def sample_records(drive_log: Path) -> tuple[list[CameraFrame], list[RadarScan]]:
    from avminer.events.drivelog import read_drive_log

    frames: list[CameraFrame] = []
    radar: list[RadarScan] = []
    for rec in read_drive_log(drive_log):
        if isinstance(rec, CameraFrame):
            frames.append(rec)
        else:
            radar.append(rec)
    return frames, radar


def fleet_frames(drive_log: Path, n: int, vehicles: int = 8) -> Iterator[CameraFrame]:
    """``n`` distinct frames made from the sample drive's: new vehicle ids and timestamps, same images."""
    frames, _ = sample_records(drive_log)
    for i in range(n):
        base = frames[i % len(frames)]
        yield dataclasses.replace(
            base, vehicle_id=f"veh-{i % vehicles}", timestamp_us=1_700_000_000_000_000 + i * 100_000,
            frame_id=f"{base.frame_id}#{i}",
        )


def produce(bootstrap: str, topic: str, values: Sequence[tuple[bytes | None, bytes]]) -> list[tuple[int, int]]:
    """Produce (key, value) pairs, wait for every acknowledgement, return their (partition, offset)s.

    The positions come from the produce acknowledgements: ask them rather than ``end_offsets`` (tansu's
    ListOffsets answers per batch, not per record).
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024,
                             max_request_size=16 * 1024 * 1024)
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in values]
        producer.flush(timeout=300)
        return [(md.partition, md.offset) for md in (f.get(timeout=30) for f in futures)]
    finally:
        producer.close(timeout=10)


def consume_all(bootstrap: str, topic: str, expect: int | None = None, timeout_s: float = 60.0,
                idle_s: float = 3.0) -> list[Any]:
    """Every record of ``topic`` (all partitions, from the beginning), waiting for ``expect`` if given."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    try:
        deadline = time.monotonic() + timeout_s
        parts = None
        while parts is None and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                time.sleep(0.2)
        if not parts:
            return []
        consumer.assign([TopicPartition(topic, p) for p in parts])
        out: list[Any] = []
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                out.extend(records)
            if batch:
                last = time.monotonic()
            if expect is not None and len(out) >= expect:
                # Short grace for duplicates already on their way, then stop.
                if time.monotonic() - last > 0.5:
                    break
            elif expect is None and time.monotonic() - last > idle_s:
                break
        return out
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (partitions without a commit are left out)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        out = {}
        for p in parts:
            off = consumer.committed(TopicPartition(topic, p))
            if off is not None:
                out[p] = off
        return out
    finally:
        consumer.close(autocommit=False)


def miner_env(bootstrap: str, group: str, topics: dict[str, str], out: Path, **extra: str) -> dict[str, str]:
    """Environment of a miner subprocess: a test broker, fast group settings, its own topics and dirs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVMINER_")}
    env.update({
        "AVMINER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "AVMINER_KAFKA__GROUP_ID": group,
        "AVMINER_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "AVMINER_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "AVMINER_KAFKA__MAX_POLL_INTERVAL_MS": "5000",
        "AVMINER_KAFKA__COMMIT_INTERVAL_MS": "200",
        "AVMINER_SINKS__OUTPUT_DIR": str(out),
        "AVMINER_METRICS__PORT": "0",
        "AVMINER_SELECTION__FLEET_SKETCHES": "false",
        "AVMINER_SELECTION__TARGET_RATE": "0.2",
        "AVMINER_SELECTION__WARMUP_FRAMES": "10",
        "AVMINER_SELECTION__CAMERA_COOLDOWN_S": "0",
        "AVMINER_SOURCE__RADAR_WAIT_MS": "0",
        "PYTHONPATH": str(REPO),
    })
    for name, topic in topics.items():
        env[f"AVMINER_TOPICS__{name.upper()}"] = topic
    env.update(extra)
    return env


def start_miner(env: dict[str, str], log: Path, engine: str = "fake", delay_ms: float = 0.0) -> subprocess.Popen[bytes]:
    """Start ``python -m tests.mining.support miner`` in its own session, logging to ``log``."""
    fh = open(log, "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(
        [sys.executable, "-m", "tests.mining.support", "miner", "--engine", engine, "--delay-ms", str(delay_ms)],
        env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _miner_main(argv: list[str]) -> int:
    import logging

    from avminer.config import load_settings
    from avminer.mining.daemon import open_engines, run_miner

    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", default="fake", choices=["fake", "real"])
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    holder = fake_holder(args.delay_ms / 1000.0) if args.engine == "fake" else open_engines(settings)
    try:
        stats = run_miner(settings, engines=holder)
    finally:
        holder.close()
    print(f"MINER-EXIT decisions={stats.decisions} commits={stats.commits} pauses={stats.pauses} "
          f"dead_letters={stats.dead_letters} drained={stats.drained}", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "miner":
        sys.exit(_miner_main(sys.argv[2:]))
    sys.exit(f"usage: python -m {__spec__.name if __spec__ else 'support'} miner [--engine fake|real]")
