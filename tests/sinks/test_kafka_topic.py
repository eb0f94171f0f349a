"""Label requests and decisions on a real broker: keyed by sample id, one request per sample on replay."""

from __future__ import annotations

from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from avminer.catalog.catalog import Catalog
from avminer.config import KafkaSettings
from avminer.events import codec
from avminer.events.records import Decision, LabelRequest
from avminer.sinks.base import MinedSampleWriter
from avminer.sinks.kafka_topic import KafkaDecisionSink, KafkaRequestSink
from avminer.storage.local import LocalFrameStore
from tests.services import KafkaBroker
from tests.sinks import factories as f


def read_all(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    """Every (key, value) on a one-partition topic, without a consumer group."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=2000)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end = consumer.end_offsets([tp])[tp]
    out: list[tuple[bytes, bytes]] = []
    while consumer.position(tp) < end:
        for msgs in consumer.poll(timeout_ms=1000).values():
            out.extend((m.key, m.value) for m in msgs)
    consumer.close()
    return out


def _writer(kafka: KafkaBroker, req_topic: str, dec_topic: str, out: Path, catalog: Catalog) -> MinedSampleWriter:
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap)
    return MinedSampleWriter(LocalFrameStore(out), KafkaRequestSink(settings, req_topic),
                             KafkaDecisionSink(settings, dec_topic), catalog)


def test_replayed_samples_give_one_request_each(kafka: KafkaBroker, tmp_path: Path, sqlite_catalog: Catalog) -> None:
    req_topic, dec_topic = kafka.topic("req"), kafka.topic("dec")
    batch = [f.sample(1), f.sample(2, mined=False), f.sample(3)]
    writer = _writer(kafka, req_topic, dec_topic, tmp_path, sqlite_catalog)
    writer.write_batch(batch)
    writer.write_batch(batch)  # replay in the same process
    writer.close()
    writer = _writer(kafka, req_topic, dec_topic, tmp_path, sqlite_catalog)  # and after a "restart"
    writer.write_batch(batch)
    writer.close()

    requests = read_all(kafka.bootstrap, req_topic)
    assert sorted(k for k, _ in requests) == [b"s0001", b"s0003"]
    decoded = [codec.decode_as(v, LabelRequest) for _, v in requests]
    assert {r.slice for r in decoded} == {"dusk/clear/cambridge_uk"}
    assert all(r.frame_uri.startswith("file://") and r.model_version == "v1" for r in decoded)
    assert decoded[0].reasons == ["uncertainty"]
    decisions = [codec.decode_as(v, Decision) for _, v in read_all(kafka.bootstrap, dec_topic)]
    # Decisions are at-least-once (keyed, compactable): every frame at least once.
    assert {d.sample_id for d in decisions} == {"s0001", "s0002", "s0003"}
    assert sqlite_catalog.stats()["by_state"]["requested"] == 2
