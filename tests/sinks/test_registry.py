"""The sink registry: ``sinks.queues`` picks the way out, and a new sink is one entry in the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from avminer.catalog.catalog import Catalog
from avminer.config import load_settings
from avminer.errors import ConfigError
from avminer.events.records import Decision, LabelRequest
from avminer.sinks import open_writer, registry
from avminer.sinks.kafka_topic import KafkaDecisionSink, KafkaRequestSink
from avminer.sinks.local import LocalDecisionSink, LocalRequestSink, read_requests
from tests.sinks import factories as f


def test_auto_is_local_without_a_broker_and_kafka_with_one(tmp_path: Path) -> None:
    local = load_settings(overrides={"sinks": {"output_dir": str(tmp_path)}}, environ={})
    assert registry.queues_name(local) == "local"
    requests, decisions = registry.open_queues(local)
    assert isinstance(requests, LocalRequestSink) and isinstance(decisions, LocalDecisionSink)
    broker = load_settings(overrides={"kafka": {"bootstrap_servers": "127.0.0.1:1"}}, environ={})
    assert registry.queues_name(broker) == "kafka"
    # Kafka sinks connect lazily; with a shared producer they never open one of their own.
    requests, decisions = registry.open_queues(broker, registry.Shared(producer=object()))
    assert isinstance(requests, KafkaRequestSink) and isinstance(decisions, KafkaDecisionSink)


def test_an_unknown_sink_name_is_refused_naming_the_field() -> None:
    settings = load_settings(overrides={"sinks": {"queues": "carrier-pigeon"}}, environ={})
    with pytest.raises(ConfigError, match=r"sinks\.queues.*kafka, local.*carrier-pigeon"):
        registry.open_queues(settings)


class _MemorySink:
    """A sink written for this test only: keeps what it is sent."""

    def __init__(self) -> None:
        self.sent: list[LabelRequest | Decision] = []

    def send(self, record: LabelRequest | Decision) -> None:
        self.sent.append(record)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_new_sink_is_one_registry_entry(tmp_path: Path, sqlite_catalog: Catalog,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    requests, decisions = _MemorySink(), _MemorySink()
    monkeypatch.setitem(registry.QUEUES, "memory", lambda settings, shared: (requests, decisions))
    settings = load_settings(overrides={"sinks": {"output_dir": str(tmp_path), "queues": "memory"}}, environ={})
    writer = open_writer(settings, sqlite_catalog)
    report = writer.write_batch([f.sample(1), f.sample(2, mined=False)])
    writer.close()
    assert (report.decisions, report.requests_sent) == (2, 1)
    assert [r.sample_id for r in requests.sent] == ["s0001"]
    assert sorted(d.sample_id for d in decisions.sent) == ["s0001", "s0002"]
    # Nothing went to the default local files; frames still went to the frame store.
    assert not read_requests(tmp_path) and not (tmp_path / "decisions.jsonl").exists()
    assert any((tmp_path / "frames").rglob("*.jpg"))
