"""``avminer bench ingest`` against the real broker of the ``kafka`` fixture (tansu or $AVMINER_TEST_KAFKA)."""

from __future__ import annotations

import json
import socket

import pytest

from avminer.cli.main import main
from avminer.evaluation import ingest
from avminer.events import codec
from avminer.events.records import CameraFrame
from avminer.sources.kafka_memory import glibc_version
from tests.services import KafkaBroker


def test_build_messages_are_distinct_decodable_frames_of_the_asked_size() -> None:
    messages, payload = ingest.build_messages(5, message_bytes=10_000)
    assert "synthetic" in payload
    assert len({key for key, _ in messages}) == 5
    for _, value in messages:
        assert abs(len(value) - 10_000) <= 16
        assert codec.decode_as(value, CameraFrame).width == 480

    frames, payload = ingest.build_messages(60)  # the sample drive has 48 frames: wraps around
    decoded = [codec.decode_as(value, CameraFrame) for _, value in frames]
    assert "sample drive" in payload
    assert len({f.sample_id for f in decoded}) == len({f.frame_id for f in decoded}) == 60
    assert all(f.image and f.image[:2] == b"\xff\xd8" for f in decoded)  # real JPEG frames


def test_every_client_reads_every_message_and_the_no_crc32c_run_has_no_crc32c(kafka: KafkaBroker) -> None:
    report = ingest.run_ingest_bench(bootstrap=kafka.bootstrap, messages=200, partitions=2, decode=True)

    rows = {(row.client, row.decode): row for row in report.rows}
    expected = {(ingest.KAFKA_PYTHON, False), (ingest.KAFKA_PYTHON_NO_CRC32C, False),
                (ingest.KAFKA_PYTHON_AVMINER, False), (ingest.KAFKA_PYTHON_AVMINER_RECV, False),
                (ingest.CONFLUENT, False), (ingest.KAFKA_PYTHON, True), (ingest.KAFKA_PYTHON_AVMINER, True),
                (ingest.KAFKA_PYTHON_AVMINER_RECV, True), (ingest.CONFLUENT, True)}
    assert set(rows) == expected
    for row in report.rows:
        if not row.available:
            assert row.client == ingest.CONFLUENT and row.note == ingest.CONFLUENT_MISSING
            continue
        assert row.messages == 200
        assert row.bytes == pytest.approx(200 * report.message_bytes_mean, rel=1e-6)
        assert row.msgs_per_s > 0 and row.mb_per_s > 0
        assert row.checks_crcs is True
        assert row.cpu_us_per_msg > 0
        # Each kafka-python row reads through the receive path it names, on every open connection, and
        # runs with the allocator it names (avminer's rows as the miner sets it up).
        if row.client == ingest.KAFKA_PYTHON_AVMINER_RECV:
            assert row.recv_path == "avminer bulk"
        elif row.client != ingest.CONFLUENT:
            assert row.recv_path == "kafka-python"
        if row.client in (ingest.KAFKA_PYTHON_AVMINER, ingest.KAFKA_PYTHON_AVMINER_RECV):
            assert row.malloc.startswith("kept (glibc") if glibc_version() else "not glibc" in row.malloc
        elif row.client != ingest.CONFLUENT:
            assert row.malloc.startswith("C library defaults")

    with_c = rows[ingest.KAFKA_PYTHON, False]
    without = rows[ingest.KAFKA_PYTHON_NO_CRC32C, False]
    assert with_c.crc32c_native is True and with_c.crc32c_impl.startswith("crc32c.")
    assert without.crc32c_native is False and without.crc32c_impl == "kafka.record._crc32c.crc"
    assert report.ratios["kafka_python_crc32c_over_no_crc32c"] > 0
    assert report.ratios["avminer_over_kafka_python"] > 0
    assert report.ratios["avminer_recv_over_kafka_python"] > 0


def test_a_missing_confluent_kafka_is_reported_not_fatal(kafka: KafkaBroker,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "confluent_available", lambda: False)
    report = ingest.run_ingest_bench(bootstrap=kafka.bootstrap, messages=20, message_bytes=1000,
                                     clients=(ingest.KAFKA_PYTHON, ingest.CONFLUENT))
    rows = {row.client: row for row in report.rows}
    assert rows[ingest.CONFLUENT].available is False
    assert "pip install 'avminer[bench]'" in ingest.format_report(report)
    assert rows[ingest.KAFKA_PYTHON].messages == 20
    assert "kafka_python_over_confluent" not in report.ratios


def test_cli_prints_one_json_object(kafka: KafkaBroker, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "ingest", "--bootstrap", kafka.bootstrap, "--messages", "50", "--message-bytes", "2000",
               "--partitions", "2", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["messages"] == 50 and out["partitions"] == 2
    assert {row["client"] for row in out["rows"]} == {ingest.KAFKA_PYTHON, ingest.KAFKA_PYTHON_NO_CRC32C,
                                                      ingest.KAFKA_PYTHON_AVMINER, ingest.KAFKA_PYTHON_AVMINER_RECV,
                                                      ingest.CONFLUENT}


def test_without_bootstrap_it_starts_and_stops_its_own_broker() -> None:
    report = ingest.run_ingest_bench(messages=20, message_bytes=1000, clients=(ingest.KAFKA_PYTHON,))
    assert report.broker.startswith("tansu") and report.rows[0].messages == 20
    host, port = report.bootstrap.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1.0)
        assert s.connect_ex((host, int(port))) != 0  # stopped


def test_kafka_python_settings_reach_the_consumer_and_unknown_ones_are_refused(
    kafka: KafkaBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["bench", "ingest", "--bootstrap", kafka.bootstrap, "--messages", "30", "--message-bytes", "2000",
               "--kafka-python", "fetch_max_bytes=4194304", "--kafka-python", "max_partition_fetch_bytes=2097152",
               "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    # The worker reads the settings back from its KafkaConsumer; the bench refuses a run that differs.
    assert out["kafka_python_config"] == {"fetch_max_bytes": 4194304, "max_partition_fetch_bytes": 2097152}
    # Every client that ran read every message (confluent-kafka is an optional extra: absent, it is reported).
    ran = [row for row in out["rows"] if row["available"]]
    assert ran and all(row["messages"] == 30 for row in ran)

    with pytest.raises(ingest.IngestBenchError, match="fetch_max_byte.*not a kafka-python KafkaConsumer setting"):
        ingest.run_ingest_bench(bootstrap=kafka.bootstrap, messages=5, kafka_python_config={"fetch_max_byte": 1})
    with pytest.raises(ingest.IngestBenchError, match="check_crcs.*fixed by the bench"):
        ingest.run_ingest_bench(bootstrap=kafka.bootstrap, messages=5, kafka_python_config={"check_crcs": False})


def test_cli_runs_the_asked_clients_only(kafka: KafkaBroker, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "ingest", "--bootstrap", kafka.bootstrap, "--messages", "30", "--message-bytes", "2000",
               "--clients", "kafka-python,avminer-recv", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [row["client"] for row in out["rows"]] == [ingest.KAFKA_PYTHON, ingest.KAFKA_PYTHON_AVMINER_RECV]
    assert [row["recv_path"] for row in out["rows"]] == ["kafka-python", "avminer bulk"]
    assert out["ratios"]["avminer_recv_over_kafka_python"] > 0
    assert main(["bench", "ingest", "--bootstrap", kafka.bootstrap, "--clients", "kafka-python,nope"]) == 2
    assert "--clients takes some of" in capsys.readouterr().err
