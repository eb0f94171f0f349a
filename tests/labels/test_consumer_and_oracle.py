"""Labels back against the real broker: oracle answers, the consumer validates, invalid results to the DLQ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avminer.catalog.catalog import Catalog
from avminer.config import load_settings
from avminer.events import codec
from avminer.events.drivelog import GroundTruthWriter, ground_truth_path
from avminer.events.records import LabelResult
from avminer.labels.consumer import LabelApplier, LabelResultConsumer
from avminer.labels.masks import CLASS_NAMES, VOID, InvalidLabelError, decode_mask_png
from avminer.labels.oracle import OracleLabeler, run_oracle_kafka, run_oracle_local
from avminer.sinks.base import MinedSampleWriter
from avminer.sinks.kafka_topic import KafkaRecordSink, KafkaRequestSink
from avminer.sinks.local import LocalDecisionSink, LocalRequestSink
from avminer.storage.local import LocalFrameStore
from tests.services import KafkaBroker
from tests.sinks import factories as f
from tests.sinks.test_kafka_topic import read_all

FAST = {"max_poll_interval_ms": 5000, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def _ground_truth(tmp_path: Path, frames: range) -> Path:
    drive = tmp_path / "drive.avro"
    with GroundTruthWriter(ground_truth_path(drive), classes=CLASS_NAMES, void=VOID) as gt:
        for i in frames:
            gt.write(f"f{i:04d}", f.png(f.class_mask(i)))
    return drive


def test_oracle_embedded_labels_every_request(tmp_path: Path, sqlite_catalog: Catalog) -> None:
    out = tmp_path / "out"
    store = LocalFrameStore(out)
    writer = MinedSampleWriter(store, LocalRequestSink(out), LocalDecisionSink(out), sqlite_catalog)
    writer.write_batch([f.sample(i) for i in range(5)])
    writer.close()
    oracle = OracleLabeler.from_file(_ground_truth(tmp_path, range(4)))  # frame 4 has no ground truth
    stats = run_oracle_local(out, oracle, LabelApplier(sqlite_catalog, store))
    assert (stats.answered, stats.unknown_frames, stats.invalid) == (4, 1, 0)
    row = sqlite_catalog.get_sample("s0002")
    assert row is not None and row.state == "labeled" and row.labeler == "oracle"
    assert np.array_equal(decode_mask_png(store.get(row.label_uri)), f.class_mask(2))  # type: ignore[arg-type]


def test_applier_refuses_unknown_samples(tmp_path: Path, sqlite_catalog: Catalog) -> None:
    applier = LabelApplier(sqlite_catalog, LocalFrameStore(tmp_path))
    with pytest.raises(InvalidLabelError) as info:
        applier.apply(LabelResult(sample_id="nope", labeler="x", labeled_at_us=1, mask_png=f.png(f.class_mask(0))))
    assert info.value.reason == "unknown_sample"


def test_stream_oracle_consumer_and_dead_letters(
    kafka: KafkaBroker, tmp_path: Path, catalog: Catalog, unique: str
) -> None:
    """Requests on the topic -> oracle -> results -> consumer: valid ones labeled, invalid ones dead-lettered."""
    topics = {name: kafka.topic(name) for name in ("requests", "results", "dlq")}
    settings = load_settings(environ={}, overrides={
        "kafka": {"bootstrap_servers": kafka.bootstrap},
        "topics": {"label_requests": topics["requests"], "label_results": topics["results"],
                   "dead_letter": topics["dlq"]},
    })
    out = tmp_path / "out"
    store = LocalFrameStore(out)
    writer = MinedSampleWriter(store, KafkaRequestSink(settings.kafka, topics["requests"]), None, catalog)
    writer.write_batch([f.sample(i) for i in range(4)])
    writer.close()

    stats = run_oracle_kafka(settings, OracleLabeler.from_file(_ground_truth(tmp_path, range(4))),
                             group_id=f"oracle-{unique}", max_messages=4, idle_timeout_s=15, consumer_overrides=FAST)
    assert stats.answered == 4

    # Invalid results from a misbehaving labeler, plus a message that is not an event at all.
    bad = KafkaRecordSink(settings.kafka, topics["results"])
    bad._send(LabelResult(sample_id="s0000", labeler="bad", labeled_at_us=1,
                          mask_png=f.png(np.zeros((f.H // 2, f.W), dtype=np.uint8))))
    bad._send(LabelResult(sample_id="s0001", labeler="bad", labeled_at_us=1,
                          mask_png=f.png(np.full((f.H, f.W), 40, dtype=np.uint8))))
    bad._send(LabelResult(sample_id="ghost", labeler="bad", labeled_at_us=1, mask_png=f.png(f.class_mask(0))))
    bad.flush()
    bad.producer.send(topics["results"], key=b"junk", value=b"not an event").get(timeout=10)
    bad.close()

    consumer = LabelResultConsumer(settings, LabelApplier(catalog, store), group_id=f"labels-{unique}",
                                   consumer_overrides=FAST)
    try:
        result = consumer.run(max_messages=8, idle_timeout_s=15)
    finally:
        consumer.close()
    assert result.ok == 4 and result.invalid == 4
    assert result.reasons == {"mask_size_mismatch": 1, "class_out_of_range": 1, "unknown_sample": 1,
                              "undecodable_event": 1}
    rows = catalog.query_samples()
    assert len(rows) == 4 and all(r.state == "labeled" and r.labeler == "oracle" for r in rows)

    from kafka import KafkaConsumer, TopicPartition

    dlq = KafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topics["dlq"], 0)
    dlq.assign([tp])
    dlq.seek_to_beginning(tp)
    letters: list[Any] = []
    while len(letters) < 4:
        for msgs in dlq.poll(timeout_ms=2000).values():
            letters.extend(msgs)
    dlq.close()
    headers = [dict(m.headers) for m in letters]
    assert sorted(h["reason"].decode() for h in headers) == sorted(result.reasons)
    assert all(h["source_topic"].decode() == topics["results"] for h in headers)
    assert sorted(int(h["source_offset"]) for h in headers) == [4, 5, 6, 7]
    assert any(b"frame is 48x32" in h["error"] for h in headers)
    # The dead letter keeps the original bytes.
    junk = next(m for m in letters if m.key == b"junk")
    assert junk.value == b"not an event"
    assert len(read_all(kafka.bootstrap, topics["results"])) == 8
    assert codec.decode_as(read_all(kafka.bootstrap, topics["results"])[0][1], LabelResult).labeler == "oracle"
