"""Fleet-wide selection thresholds: share per-slice quantile sketches over a compacted Kafka topic.

Every miner publishes its own cumulative per-slice sketches (:meth:`SelectionPolicy.export_sketches`)
to ``settings.topics.sketches`` keyed by its miner id, every ``selection.sketch_publish_interval_s``.
The topic is compacted, so it keeps each miner's latest publication; a tombstone (null value) removes a
miner. Every miner reads the whole topic from the beginning (no consumer group: each needs all of it)
and hands the other miners' latest sketches to :meth:`SelectionPolicy.merge_remote`. Merging adds
bucket counts, so every miner ends up thresholding on the same fleet-wide distribution whichever
partitions (vehicles) it happens to own — the fleet mines at the target rate whatever the skew.

Value format: ``u8 version=1 | u32 n | (u16 len, slice utf-8, u32 len, packed sketches)*`` with the
packed sketches of :func:`avminer.selection.policy.pack_sketches`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from avminer.config import Settings
from avminer.errors import SelectionError, SourceError
from avminer.metrics import KAFKA_ERRORS
from avminer.selection.policy import SelectionPolicy
from avminer.utils.packing import PackingError, pack_named, unpack_named

log = logging.getLogger(__name__)

_VERSION = 1


def encode_sketches(sketches: Mapping[str, bytes]) -> bytes:
    """Pack a ``slice -> packed sketches`` mapping into one message value."""
    return pack_named(_VERSION, sketches, count="I", name_length="H")


def decode_sketches(data: bytes) -> dict[str, bytes]:
    """Inverse of :func:`encode_sketches`.

    Raises:
        SelectionError: truncated, malformed or of another version.
    """
    try:
        return unpack_named(data, _VERSION, count="I", name_length="H")
    except PackingError as exc:
        raise SelectionError(f"fleet sketch message: {exc}") from exc


def default_miner_id() -> str:
    """A miner id unique to this process: host name plus a random suffix."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def ensure_compacted_topic(settings: Settings, partitions: int = 1) -> None:
    """Create the sketches topic with ``cleanup.policy=compact`` unless it exists."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    topic = settings.topics.sketches
    try:
        admin = KafkaAdminClient(**settings.kafka.client_kwargs(), request_timeout_ms=10_000)
    except KafkaError as exc:
        raise SourceError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers} to create {topic}: {exc}") from exc
    try:
        if topic in set(admin.list_topics()):
            return
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                      topic_configs={"cleanup.policy": "compact"})])
    except TopicAlreadyExistsError:
        pass  # another miner won the race
    except KafkaError as exc:
        raise SourceError(f"cannot create the compacted topic {topic}: {exc}") from exc
    finally:
        admin.close()


class FleetSketchSync:
    """Publishes this miner's sketches and merges the fleet's, from a background thread.

    Args:
        settings: Kafka connection, ``topics.sketches`` and ``selection.sketch_publish_interval_s``.
        policy: the miner's selection policy (thread-safe for merge/export).
        miner_id: this miner's key on the topic (default: host name + random suffix).
        clock: monotonic seconds (injectable).
    """

    def __init__(self, settings: Settings, policy: SelectionPolicy, miner_id: str | None = None,
                 clock: Any = time.monotonic) -> None:
        self.settings = settings
        self.policy = policy
        self.miner_id = miner_id or default_miner_id()
        self.topic = settings.topics.sketches
        self.interval_s = float(settings.selection.sketch_publish_interval_s)
        self._clock = clock
        self._producer: Any = None
        self._consumer: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_publish = -float("inf")
        self.known_miners: set[str] = set()
        self.merged_messages = 0

    # -- clients ---------------------------------------------------------------------------------------------
    def open(self, wait_s: float = 10.0) -> FleetSketchSync:
        """Connect the producer and a group-less consumer assigned every partition from the beginning."""
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition
        from kafka.errors import KafkaError

        kw = self.settings.kafka.client_kwargs()
        try:
            self._producer = KafkaProducer(**kw, acks="all", linger_ms=0, max_block_ms=10_000)
            self._consumer = KafkaConsumer(**kw, group_id=None, enable_auto_commit=False,
                                           auto_offset_reset="earliest")
            deadline = time.monotonic() + wait_s
            parts = self._consumer.partitions_for_topic(self.topic)
            while not parts and time.monotonic() < deadline:
                time.sleep(0.1)
                parts = self._consumer.partitions_for_topic(self.topic)
        except KafkaError as exc:
            KAFKA_ERRORS.labels(operation="connect").inc()
            self.close()
            raise SourceError(f"fleet sketches: cannot reach Kafka at {kw['bootstrap_servers']}: {exc}") from exc
        if not parts:
            self.close()
            raise SourceError(f"fleet sketches: topic {self.topic} does not exist; create it compacted "
                              "(avminer.mining.fleet.ensure_compacted_topic)")
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        return self

    def close(self) -> None:
        """Close the Kafka clients (after :meth:`stop` for the thread)."""
        for client in (self._producer, self._consumer):
            if client is not None:
                try:
                    client.close()
                except Exception as exc:  # closing is best effort
                    log.debug("closing a fleet client failed: %s", exc)
        self._producer = self._consumer = None

    # -- one round ---------------------------------------------------------------------------------------------
    def publish(self) -> None:
        """Send this miner's sketches now and wait until the broker has them."""
        from kafka.errors import KafkaError

        value = encode_sketches(self.policy.export_sketches())
        try:
            self._producer.send(self.topic, key=self.miner_id.encode(), value=value).get(timeout=10)
        except KafkaError as exc:
            KAFKA_ERRORS.labels(operation="produce").inc()
            raise SourceError(f"fleet sketches: publishing to {self.topic} failed: {exc}") from exc
        self._last_publish = self._clock()

    def poll(self, timeout_ms: int = 0) -> int:
        """Read what other miners published and merge the latest of each; returns messages merged."""
        from kafka.errors import KafkaError

        try:
            batches = self._consumer.poll(timeout_ms=timeout_ms)
        except KafkaError as exc:
            KAFKA_ERRORS.labels(operation="poll").inc()
            log.warning("fleet sketches: poll failed: %s", exc)
            return 0
        latest: dict[str, bytes | None] = {}
        for records in batches.values():
            for rec in records:  # in offset order per partition: later publications replace earlier
                if rec.key is None:
                    continue
                latest[rec.key.decode(errors="replace")] = rec.value
        merged = 0
        for miner, value in latest.items():
            if miner == self.miner_id:
                continue
            if value is None:
                self.policy.forget_remote(miner)
                self.known_miners.discard(miner)
                continue
            try:
                self.policy.merge_remote(miner, decode_sketches(value))
            except SelectionError as exc:  # one bad publisher must not stop the others
                log.warning("fleet sketches: ignoring miner %s: %s", miner, exc)
                continue
            self.known_miners.add(miner)
            merged += 1
        self.merged_messages += merged
        return merged

    def step(self, timeout_ms: int = 0) -> int:
        """Publish if the interval has passed, then poll; for callers that drive the sync themselves."""
        if self._clock() - self._last_publish >= self.interval_s:
            self.publish()
        return self.poll(timeout_ms)

    # -- background ---------------------------------------------------------------------------------------------
    def start(self) -> FleetSketchSync:
        """Run :meth:`step` in a daemon thread until :meth:`stop`."""
        if self._consumer is None:
            self.open()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.step(timeout_ms=500)
                except SourceError as exc:  # the broker is away: keep local thresholds, try again
                    log.warning("%s", exc)
                    self._stop.wait(1.0)

        self._thread = threading.Thread(target=loop, name="avminer-fleet-sketches", daemon=True)
        self._thread.start()
        return self

    def stop(self, leave: bool = False) -> None:
        """Stop the thread, publish a last time (or a tombstone with ``leave``), close the clients."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        try:
            if self._producer is not None:
                if leave:
                    self._producer.send(self.topic, key=self.miner_id.encode(), value=None).get(timeout=10)
                else:
                    self.publish()
        except Exception as exc:  # shutting down: best effort
            log.warning("fleet sketches: last publication failed: %s", exc)
        self.close()


def start_fleet_sync(settings: Settings, policy: SelectionPolicy, miner_id: str | None = None) -> FleetSketchSync:
    """Ensure the compacted topic exists and start syncing in the background (the daemon's entry point)."""
    ensure_compacted_topic(settings)
    return FleetSketchSync(settings, policy, miner_id).start()
