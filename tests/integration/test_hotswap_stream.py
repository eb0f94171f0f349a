"""Issue 4, end to end: a model release published mid-stream while the miner works off a backlog.

A few hundred frames on a 3-partition frames topic, the real starter model (ONNX Runtime) serving,
releases fetched from SeaweedFS. First a release whose bundle has one flipped byte: refused, the old
model keeps serving. Then a good release (the starter model re-versioned ``starter-2``): swapped in
between two batches. From the decisions topic: every offset of the frames topic has a decision
(duplicates only if they agree on the model), and per partition, in offset order, the model version
switches exactly once.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from avminer.config import load_settings
from avminer.engines import default_bundle_path
from avminer.engines.bundle import ONNX_FILE, Bundle, load_bundle, write_bundle
from avminer.errors import BundleError
from avminer.events import codec
from avminer.events.records import Decision, ModelRelease
from avminer.metrics import MODEL_SWAPS
from avminer.mining.daemon import open_engines
from avminer.storage.bundles import MANIFEST
from tests.integration.support import FAST_GROUP, MinerThread, TopicReader
from tests.mining.support import fleet_frames, produce
from tests.services import KafkaBroker, S3Server

BACKLOG = 300  # frames waiting when the miner starts (~20 s of work for the starter model on 2 cores)
TAIL = 48  # frames produced after the swap, so every partition sees the new model


def _swaps(result: str) -> float:
    return float(MODEL_SWAPS.labels(result=result)._value.get())


def _release_bundle(out: Path, version: str) -> Bundle:
    """The starter bundle re-versioned (same weights, checksums rewritten by write_bundle)."""
    starter = load_bundle(default_bundle_path())
    manifest = {k: v for k, v in starter.manifest.items() if k not in ("format", "files")}
    manifest["version"] = version
    return write_bundle(out, manifest, {rel: starter.path / rel for rel in starter.manifest["files"]})


def _publish_release(kafka: KafkaBroker, s3: S3Server, topic: str, bucket: str, bundle: Bundle) -> None:
    """Upload a bundle directory under ``releases/<version>/`` and announce it on the releases topic."""
    client = s3.client()
    prefix = f"releases/{bundle.version}/"
    for path in sorted(bundle.path.iterdir()):
        client.upload_file(str(path), bucket, prefix + path.name)
    release = ModelRelease(
        version=bundle.version, bundle_uri=f"s3://{bucket}/{prefix}",
        manifest_sha256=hashlib.sha256((bundle.path / MANIFEST).read_bytes()).hexdigest(),
        created_at_us=int(time.time() * 1e6), members=bundle.members,
    )
    produce(kafka.bootstrap, topic, [(bundle.version.encode(), codec.encode(release))])


def _wait(check: Any, timeout_s: float, what: str, miner: MinerThread) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        problem = miner.problem()
        assert problem is None, problem
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(0.1)


def test_release_mid_stream_switches_once_per_partition_and_a_corrupt_one_is_refused(
    kafka: KafkaBroker, s3: S3Server, sample_drive: Path, tmp_path: Path, unique: str
) -> None:
    topics = {name: kafka.topic(name.replace("_", "-"), 3 if name == "frames" else 1)
              for name in ("frames", "radar", "decisions", "label_requests", "dead_letter", "releases")}
    bucket = s3.bucket("models")
    good = _release_bundle(tmp_path / "starter-2", "starter-2")
    corrupt = _release_bundle(tmp_path / "starter-3", "starter-3")
    onnx = bytearray((corrupt.path / ONNX_FILE).read_bytes())
    onnx[len(onnx) // 2] ^= 0x01  # one flipped bit; the manifest still names the original sha256
    (corrupt.path / ONNX_FILE).write_bytes(bytes(onnx))
    with pytest.raises(BundleError, match=r"model\.onnx sha256 mismatch"):
        load_bundle(corrupt.path)

    settings = load_settings(environ={}, overrides={
        "kafka": {"bootstrap_servers": kafka.bootstrap, "group_id": f"miners-{unique}", "commit_interval_ms": 200,
                  **FAST_GROUP},
        "topics": topics,
        "sinks": {"output_dir": str(tmp_path / "out"),
                  "catalog_url": f"sqlite:///{tmp_path / 'catalog.db'}",
                  "s3": {"endpoint_url": s3.endpoint_url, "bucket": bucket, "access_key_id": "any",
                         "secret_access_key": "any"}},
        "engine": {"cache_dir": str(tmp_path / "bundle-cache")},
        "selection": {"fleet_sketches": False},
        "metrics": {"port": 0},
    })
    frames = list(fleet_frames(sample_drive, BACKLOG + TAIL, vehicles=12))
    positions = produce(kafka.bootstrap, topics["frames"],
                        [(f.vehicle_id.encode(), codec.encode(f)) for f in frames[:BACKLOG]])
    assert len({p for p, _ in positions}) >= 2, "the frames landed in one partition: nothing to check per partition"
    failed_before = _swaps("failed")
    holder = open_engines(settings)
    assert holder.version == "starter-1"
    decisions = TopicReader(kafka.bootstrap, topics["decisions"])
    try:
        with MinerThread(settings, holder) as miner:
            decisions.wait_for(lambda rs: len(rs) >= 30, 120, "the miner to get going", miner.problem)
            # A corrupt release: refused after download, the starter model keeps serving.
            _publish_release(kafka, s3, topics["releases"], bucket, corrupt)
            _wait(lambda: _swaps("failed") > failed_before, 60, "the corrupt release to be refused", miner)
            assert holder.version == "starter-1"
            # The good one, while the backlog is still being worked off.
            _publish_release(kafka, s3, topics["releases"], bucket, good)
            _wait(lambda: holder.version == "starter-2", 90, "the swap to starter-2", miner)
            positions += produce(kafka.bootstrap, topics["frames"],
                                 [(f.vehicle_id.encode(), codec.encode(f)) for f in frames[BACKLOG:]])

            def all_decided(records: list[Any]) -> bool:
                return len(records) >= len(positions) and {_position(r) for r in records} >= set(positions)

            decisions.wait_for(all_decided, 180, "a decision for every frame", miner.problem)
            decisions.settle()
    finally:
        decisions.close()
        holder.close()

    got = [codec.decode_as(r.value, Decision) for r in decisions.records]
    versions: dict[tuple[int, int], set[str]] = defaultdict(set)
    for d in got:
        assert d.topic == topics["frames"]
        versions[(d.partition, d.offset)].add(d.model_version)  # type: ignore[index]
    # Zero frames without a decision, none decided by two models (at-least-once replays must agree).
    assert set(versions) == set(positions)
    assert all(len(v) == 1 for v in versions.values()), {p: v for p, v in versions.items() if len(v) > 1}
    assert {v for vs in versions.values() for v in vs} == {"starter-1", "starter-2"}  # never the corrupt one
    # Per partition, in offset order: starter-1 ... starter-1 starter-2 ... starter-2.
    switch_at = {}
    for part in sorted({p for p, _ in positions}):
        seq = [next(iter(versions[(p, o)])) for p, o in sorted(versions) if p == part]
        first_new = seq.index("starter-2") if "starter-2" in seq else len(seq)
        assert seq == ["starter-1"] * first_new + ["starter-2"] * (len(seq) - first_new), (
            f"partition {part} switches more than once: {''.join(v[-1] for v in seq)}")
        assert first_new < len(seq), f"partition {part} never saw starter-2"
        switch_at[part] = first_new
    # The consumer tends to work one partition's backlog at a time: the swap lands inside at least one.
    assert any(k > 0 for k in switch_at.values()), f"no partition switched inside its offsets: {switch_at}"
    # The swap landed while the backlog was being worked off, not after the miner ran dry; the frames
    # produced after it saw only the new model.
    old = sum(1 for v in versions.values() if v == {"starter-1"})
    assert old < BACKLOG, f"all {BACKLOG} backlog frames were decided before the swap: not mid-stream"
    assert all(versions[p] == {"starter-2"} for p in positions[BACKLOG:])
    print(f"hot-swap: {len(positions)} frames over {len(switch_at)} partitions, switch at offsets {switch_at}; "
          f"{old} frames decided by starter-1; {len(got) - len(versions)} replayed decisions")


def _position(record: Any) -> tuple[int, int]:
    d = codec.decode_as(record.value, Decision)
    return (d.partition, d.offset)  # type: ignore[return-value]
