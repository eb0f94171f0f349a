"""Issue 6, end to end: a stream mined into S3, label requests on the topic, the oracle answers, the
catalog shows every mined sample labeled with its provenance.

Everything is the product as deployed, configured by ``AVMINER_*`` variables: ``avminer mine`` (the
starter model, Kafka mode, frames to SeaweedFS, catalog in PostgreSQL), ``avminer label oracle`` (the
sample drive's ground-truth side file) and ``avminer label consume``. The sample drive is replayed
into the frames and radar topics of the session's broker. The same loop without a broker (embedded
mode, default catalog location) checks that the oracle labels the catalog the miner wrote.
"""

from __future__ import annotations

import hashlib
import json
import signal
from collections import Counter
from pathlib import Path

import numpy as np

from avminer.catalog.catalog import open_catalog
from avminer.config import SelectionSettings
from avminer.events import codec
from avminer.events.drivelog import ground_truth_path, read_ground_truth
from avminer.events.records import Decision, LabelRequest
from avminer.labels.masks import decode_mask_png
from avminer.storage.base import content_key
from avminer.storage.s3 import parse_s3_uri
from tests.integration.support import TopicReader, avminer, finish, kill, product_env, with_schema
from tests.mining.support import produce, sample_records
from tests.services import KafkaBroker, S3Server

TARGET_RATE = 0.2  # the sample drive has 48 frames: the production 1/1000 would mine nothing


def _json_line(log_text: str) -> dict[str, object]:
    """The one JSON object a command printed (its summary)."""
    lines = [ln for ln in log_text.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON summary in:\n{log_text[-3000:]}"
    out: dict[str, object] = json.loads(lines[-1])
    return out


def test_mined_stream_to_s3_requests_oracle_labels_and_catalog_provenance(
    kafka: KafkaBroker, s3: S3Server, postgres_url: str, sample_drive: Path, tmp_path: Path, unique: str
) -> None:
    frames, radar = sample_records(sample_drive)
    parts = {"frames": 2, "radar": 2, "decisions": 1, "label_requests": 1, "label_results": 1, "dead_letter": 1,
             "releases": 1}
    topics = {name: kafka.topic(name.replace("_", "-"), n) for name, n in parts.items()}
    frame_pos = produce(kafka.bootstrap, topics["frames"], [(f.vehicle_id.encode(), codec.encode(f)) for f in frames])
    produce(kafka.bootstrap, topics["radar"], [(r.vehicle_id.encode(), codec.encode(r)) for r in radar])
    bucket = s3.bucket("frames")
    schema = f"it_{unique}"
    catalog_url = with_schema(postgres_url, schema)
    # Rare-condition overrides must not fall below the raised target rate (dusk would be mined less).
    slice_rates = {k: max(v, TARGET_RATE * 1.5) for k, v in SelectionSettings().slice_rates.items()}
    env = product_env(
        AVMINER_KAFKA__BOOTSTRAP_SERVERS=kafka.bootstrap,
        AVMINER_KAFKA__GROUP_ID=f"miners-{unique}",
        AVMINER_KAFKA__SESSION_TIMEOUT_MS="6000",
        AVMINER_KAFKA__HEARTBEAT_INTERVAL_MS="1000",
        AVMINER_KAFKA__MAX_POLL_INTERVAL_MS="5000",
        AVMINER_KAFKA__COMMIT_INTERVAL_MS="200",
        **{f"AVMINER_TOPICS__{name.upper()}": topic for name, topic in topics.items()},
        AVMINER_SINKS__OUTPUT_DIR=str(tmp_path / "out"),
        AVMINER_SINKS__CATALOG_URL=catalog_url,
        AVMINER_SINKS__S3__ENDPOINT_URL=s3.endpoint_url,
        AVMINER_SINKS__S3__BUCKET=bucket,
        AVMINER_SINKS__S3__ACCESS_KEY_ID="any",
        AVMINER_SINKS__S3__SECRET_ACCESS_KEY="any",
        AVMINER_SELECTION__TARGET_RATE=str(TARGET_RATE),
        AVMINER_SELECTION__SLICE_RATES=json.dumps(slice_rates),
        AVMINER_SELECTION__WARMUP_FRAMES="8",
        AVMINER_SELECTION__CAMERA_COOLDOWN_S="0",
        # The sample drive is consecutive video frames: at the default 0.97 the starter model's features
        # call most of them near-duplicates of the frame before and only a frame or two would be mined.
        AVMINER_SELECTION__DUPLICATE_SIMILARITY="0.999",
        AVMINER_SELECTION__FLEET_SKETCHES="false",
        AVMINER_SOURCE__RADAR_WAIT_MS="200",
        AVMINER_METRICS__PORT="0",
        AVMINER_ENGINE__CACHE_DIR=str(tmp_path / "bundle-cache"),
    )
    miner_log, oracle_log, labels_log = tmp_path / "miner.log", tmp_path / "oracle.log", tmp_path / "labels.log"
    miner = avminer(["mine", "--json"], env, miner_log)
    procs = [miner]
    decisions_topic = TopicReader(kafka.bootstrap, topics["decisions"])
    requests_topic = TopicReader(kafka.bootstrap, topics["label_requests"])
    try:
        # 1. Every frame decided (at-least-once: count distinct positions).
        def miner_died() -> str | None:
            if miner.poll() is None:
                return None
            return f"the miner exited with {miner.returncode}:\n{miner_log.read_text()[-3000:]}"

        def positions(records: list[object]) -> set[tuple[int, int]]:
            return {(d.partition, d.offset) for d in map(_decision, records)}  # type: ignore[misc]

        decisions_topic.wait_for(lambda rs: positions(rs) >= set(frame_pos), 150, "a decision per frame", miner_died)
        decisions = [_decision(r) for r in decisions_topic.settle()]
        summary = _json_line(finish(miner, miner_log, 60, signal.SIGTERM))
        assert positions(decisions_topic.records) == set(frame_pos)
        assert all(d.topic == topics["frames"] and d.model_version == "starter-1" for d in decisions)
        by_sample = {d.sample_id: d for d in decisions}
        assert set(by_sample) == {f.sample_id for f in frames}
        assert any(d.scores.get("radar", 0.0) > 0 for d in decisions), "no radar scan was joined to a frame"
        mined = {s: d for s, d in by_sample.items() if d.mined}
        assert len(mined) >= 3, f"only {len(mined)} of {len(frames)} frames mined: the loop is barely exercised"
        assert all(d.reasons for d in mined.values())
        assert summary["mode"] == "kafka" and summary["drained"] is True

        # 2. One label request per mined sample, naming its decision's provenance.
        requests_topic.wait_for(lambda rs: len(rs) >= len(mined), 30, "a label request per mined frame")
        requests = [codec.decode_as(r.value, LabelRequest) for r in requests_topic.settle()]
        counts = Counter(r.sample_id for r in requests)
        assert set(counts) == set(mined) and max(counts.values()) == 1, counts
        frame_by_sample = {f.sample_id: f for f in frames}
        client = s3.client()
        for req in requests:
            d = mined[req.sample_id]
            assert (req.frame_id, req.slice, req.model_version, req.reasons) == (
                d.frame_id, d.slice, "starter-1", d.reasons)
            assert (req.vehicle_id, req.camera_id, req.timestamp_us) == (d.vehicle_id, d.camera_id, d.timestamp_us)
            # 3. The frame is in S3, as it arrived, under the content-addressed key the request names.
            original = frame_by_sample[req.sample_id].image
            assert original is not None
            req_bucket, key = parse_s3_uri(req.frame_uri)
            assert req_bucket == bucket and key == content_key("frames/", "frame", original, "image/jpeg")
            stored = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert stored == original and key.split("/")[-1].startswith(hashlib.sha256(stored).hexdigest())
            assert req.uncertainty_uri and client.head_object(Bucket=bucket, Key=parse_s3_uri(req.uncertainty_uri)[1])

        # 4. The oracle answers on the results topic; the label consumer validates and records them.
        gt_file = ground_truth_path(sample_drive)
        oracle = avminer(["label", "oracle", "--ground-truth", str(gt_file), "--group", f"oracle-{unique}",
                          "--max", str(len(mined)), "--idle-timeout", "60"], env, oracle_log)
        procs.append(oracle)
        consumer = avminer(["label", "consume", "--group", f"labels-{unique}", "--max", str(len(mined)),
                            "--idle-timeout", "60"], env, labels_log)
        procs.append(consumer)
        answered = _json_line(finish(oracle, oracle_log, 90))
        assert answered == {"answered": len(mined), "unknown_frames": 0, "invalid": 0}
        consumed = _json_line(finish(consumer, labels_log, 90))
        assert consumed == {"ok": len(mined), "invalid": 0, "reasons": {}}
    finally:
        decisions_topic.close()
        requests_topic.close()
        for p in procs:
            kill(p)

    # 5. The catalog: every mined sample (and nothing else) labeled by the oracle, with its provenance.
    truth = read_ground_truth(gt_file)
    catalog = open_catalog(catalog_url)
    try:
        rows = {row.sample_id: row for row in catalog.query_samples()}
        assert set(rows) == set(mined)
        requested = {r.sample_id: r for r in requests}
        for sid, row in rows.items():
            d, req = mined[sid], requested[sid]
            assert row.state == "labeled" and row.labeler == "oracle" and row.labeled_at_us
            assert row.frame_uri == req.frame_uri
            assert (row.slice, row.model_version, row.reasons, row.frame_id) == (
                d.slice, "starter-1", d.reasons, d.frame_id)
            assert (row.vehicle, row.camera, row.timestamp_us) == (d.vehicle_id, d.camera_id, d.timestamp_us)
            assert row.scores == d.scores and row.mined
            assert row.label_uri and row.label_uri.startswith(f"s3://{bucket}/frames/mask/")
            mask = decode_mask_png(client.get_object(Bucket=bucket, Key=parse_s3_uri(row.label_uri)[1])["Body"].read())
            assert np.array_equal(mask, decode_mask_png(truth[d.frame_id]))
        assert {r.sample_id for r in catalog.query_samples(states=["labeled"])} == set(mined)
    finally:
        catalog.drop_schema()
    print(f"label loop: {len(mined)} of {len(frames)} frames mined, stored in S3, requested once, labeled by "
          f"the oracle; reasons {dict(Counter(r for d in mined.values() for r in d.reasons))}")


def _decision(record: object) -> Decision:
    return codec.decode_as(record.value, Decision)  # type: ignore[attr-defined]


def test_embedded_mine_then_oracle_labels_land_in_the_miners_catalog(sample_drive: Path, tmp_path: Path) -> None:
    """No broker, default catalog location: ``avminer mine`` then ``avminer label oracle`` share one catalog."""
    out = tmp_path / "out"
    env = product_env(
        AVMINER_SINKS__OUTPUT_DIR=str(out),
        AVMINER_SELECTION__TARGET_RATE=str(TARGET_RATE),
        AVMINER_SELECTION__WARMUP_FRAMES="8",
        AVMINER_SELECTION__CAMERA_COOLDOWN_S="0",
        AVMINER_SELECTION__DUPLICATE_SIMILARITY="0.999",
        AVMINER_METRICS__PORT="0",
    )
    mine_log, oracle_log = tmp_path / "mine.log", tmp_path / "oracle.log"
    summary = _json_line(finish(avminer(["mine", "--json", "--drive-log", str(sample_drive)], env, mine_log),
                                mine_log, 120))
    assert summary["mode"] == "embedded" and summary["decisions"] == 48
    mined = int(summary["mined"])  # type: ignore[call-overload]
    assert mined >= 3
    oracle = avminer(["label", "oracle", "--ground-truth", str(ground_truth_path(sample_drive))], env, oracle_log)
    assert _json_line(finish(oracle, oracle_log, 60)) == {"answered": mined, "unknown_frames": 0, "invalid": 0}
    catalogs = sorted(p.name for p in out.iterdir() if p.suffix in (".db", ".sqlite"))
    assert catalogs == ["catalog.db"], catalogs  # one catalog, written by the miner, labeled by the oracle
    catalog = open_catalog(f"sqlite:///{out / 'catalog.db'}")
    try:
        rows = catalog.query_samples()
    finally:
        catalog.close()
    assert len(rows) == mined and all(r.state == "labeled" and r.labeler == "oracle" for r in rows)
