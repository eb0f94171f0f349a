"""``avminer replay`` and ``avminer record`` against a real Kafka-protocol broker."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from avminer.cli.main import main
from avminer.cli.replay import parse_rate
from avminer.errors import ConfigError
from avminer.events import codec
from avminer.events.drivelog import read_drive_log
from avminer.events.records import CameraFrame, RadarScan
from tests.services import KafkaBroker


def _read_topic(bootstrap: str, topic: str, expected: int) -> dict[int, list[tuple[bytes, object]]]:
    """Every message of a topic by partition, in offset order: (key, decoded record)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: dict[int, list[tuple[bytes, object]]] = defaultdict(list)
        for _ in range(60):
            for tp, messages in consumer.poll(timeout_ms=500).items():
                out[tp.partition] += [(m.key, codec.decode(m.value)) for m in messages]
            if sum(map(len, out.values())) >= expected:
                break
        return dict(out)
    finally:
        consumer.close()


def test_replay_then_record_keeps_per_partition_order(kafka: KafkaBroker, sample_drive: Path,
                                                      tmp_path: Path) -> None:
    frames_topic, radar_topic = kafka.topic("frames", 3), kafka.topic("radar", 3)
    source = list(read_drive_log(sample_drive))
    assert main(["replay", str(sample_drive), "--bootstrap", kafka.bootstrap, "--frames-topic", frames_topic,
                 "--radar-topic", radar_topic, "--rate", "max", "--no-progress"]) == 0

    for topic, kind in ((frames_topic, CameraFrame), (radar_topic, RadarScan)):
        expected = [r for r in source if isinstance(r, kind)]
        by_partition = _read_topic(kafka.bootstrap, topic, len(expected))
        assert sum(map(len, by_partition.values())) == len(expected)
        for partition, messages in by_partition.items():
            vehicles = {key for key, _ in messages}
            assert all(rec.vehicle_id.encode() == key for key, rec in messages)  # type: ignore[attr-defined]
            # A vehicle stays in one partition, in the log's order.
            assert [rec for _, rec in messages] == [r for r in expected if r.vehicle_id.encode() in vehicles], partition

    recorded = tmp_path / "recorded.avro"
    assert main(["record", "--bootstrap", kafka.bootstrap, "--topics", frames_topic, radar_topic,
                 "--out", str(recorded), "--max-messages", str(len(source)), "--idle-timeout", "20",
                 "--no-progress"]) == 0
    back = list(read_drive_log(recorded))
    assert sorted(map(repr, back)) == sorted(map(repr, source))  # the same records
    assert [r.timestamp_us for r in back] == sorted(r.timestamp_us for r in back)
    for vehicle in {r.vehicle_id for r in source}:  # and per vehicle (hence per partition) the same order
        for kind in (CameraFrame, RadarScan):
            assert [r for r in back if r.vehicle_id == vehicle and isinstance(r, kind)] == \
                   [r for r in source if r.vehicle_id == vehicle and isinstance(r, kind)]


def test_replay_creates_nothing_unless_asked(kafka: KafkaBroker, sample_drive: Path, unique: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    frames, radar = f"frames-{unique}", f"radar-{unique}"
    args = ["replay", str(sample_drive), "--bootstrap", kafka.bootstrap, "--frames-topic", frames,
            "--radar-topic", radar, "--no-progress"]
    assert main(args) == 2
    assert "do not exist" in capsys.readouterr().err
    assert main([*args, "--create-topics", "--partitions", "2", "--rate", "1000x"]) == 0
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap)
    try:
        assert consumer.partitions_for_topic(frames) == {0, 1}
    finally:
        consumer.close()


def test_record_from_a_missing_topic_fails_clearly(kafka: KafkaBroker, tmp_path: Path, unique: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["record", "--bootstrap", kafka.bootstrap, "--topics", f"missing-{unique}",
                 "--out", str(tmp_path / "x.avro"), "--idle-timeout", "1", "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.avro").exists()


def test_parse_rate() -> None:
    assert parse_rate("max") is None and parse_rate("realtime") == 1.0 and parse_rate("10x") == 10.0
    assert parse_rate("0.5X") == 0.5
    for bad in ("fast", "0x", "-2x", "x"):
        with pytest.raises(ConfigError, match="--rate"):
            parse_rate(bad)
