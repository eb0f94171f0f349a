"""Fleet topics through a Kafka consumer group (the scale-out path).

Every miner of a fleet joins one consumer group; partitions are keyed by vehicle, so a vehicle's
camera and radar stay with one miner between rebalances. Offsets are never auto-committed: the
pipeline commits the contiguous prefix whose decisions and sinks are durable
(:mod:`avminer.mining.offsets`).

Backpressure pauses partitions (``consumer.pause``) rather than not polling: the poll thread keeps
calling :meth:`KafkaSource.poll`, which keeps the member inside ``max_poll_interval_ms`` and its
heartbeats flowing, so a long batch never triggers a rebalance.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from avminer.config import Settings
from avminer.errors import SourceError
from avminer.metrics import ASSIGNED_PARTITIONS, COMMITS, KAFKA_ERRORS
from avminer.sources.base import AssignedCallback, Partition, RevokedCallback, SourceMessage
from avminer.sources.kafka_memory import keep_fetch_memory
from avminer.sources.kafka_recv import bulk_recv_settings

log = logging.getLogger(__name__)


def consumer_config(settings: Settings, group_id: str | None = None) -> dict[str, Any]:
    """kafka-python consumer settings of a miner: security passthrough, manual commits, raw bytes."""
    k = settings.kafka
    cfg: dict[str, Any] = {
        **k.client_kwargs(),
        "group_id": group_id if group_id is not None else k.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": k.max_poll_records,
        "max_poll_interval_ms": k.max_poll_interval_ms,
        "session_timeout_ms": k.session_timeout_ms,
        "heartbeat_interval_ms": k.heartbeat_interval_ms,
        # kafka.bulk_recv: read the socket 1 MiB at a time, not 4 KiB (avminer.sources.kafka_recv).
        **(bulk_recv_settings() if k.bulk_recv else {}),
    }
    # client_kwargs() already carries kafka.extra, but the group settings above must not override it.
    cfg.update(k.extra)
    return cfg


def source_message(record: Any) -> SourceMessage:
    """A kafka-python ``ConsumerRecord`` as a :class:`SourceMessage` (a null value becomes empty bytes)."""
    return SourceMessage(
        topic=record.topic, partition=record.partition, offset=record.offset,
        value=record.value if record.value is not None else b"", key=record.key,
        timestamp_ms=int(record.timestamp or 0),
    )


class KafkaSource:
    """A consumer-group member on the camera (and radar) topics.

    Args:
        settings: the miner's settings (``kafka.*`` for the client, ``topics.*`` for names).
        topics: topics to subscribe to (default: frames and radar).
        group_id: override ``kafka.group_id``.
    """

    def __init__(self, settings: Settings, topics: Sequence[str] | None = None, group_id: str | None = None) -> None:
        self.topics = list(topics) if topics is not None else [settings.topics.frames, settings.topics.radar]
        self._frames_topic = settings.topics.frames
        self._owned: set[Partition] = set()
        self._on_assigned: AssignedCallback | None = None
        self._on_revoked: RevokedCallback | None = None
        self._committed: dict[Partition, int] = {}
        # Partitions assigned since the last poll: their position must be reset to the committed offset.
        self._reset: set[Partition] = set()
        self._reset_lock = threading.Lock()
        if settings.kafka.keep_fetch_memory:
            keep_fetch_memory()
        try:
            self._consumer = KafkaConsumer(**consumer_config(settings, group_id))
            self._consumer.subscribe(self.topics, listener=_Listener(self))
        except KafkaError as exc:
            raise SourceError(
                f"cannot join consumer group {group_id or settings.kafka.group_id!r} on "
                f"{settings.kafka.bootstrap_servers}: {exc}; check kafka.bootstrap_servers and security settings"
            ) from exc

    def set_rebalance_callbacks(self, on_assigned: AssignedCallback, on_revoked: RevokedCallback) -> None:
        self._on_assigned, self._on_revoked = on_assigned, on_revoked

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[SourceMessage]:
        try:
            self._reset_positions()
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            # Transient broker trouble: the consumer reconnects on the next poll.
            KAFKA_ERRORS.labels(operation="poll").inc()
            log.warning("poll failed: %s", exc)
            return []
        with self._reset_lock:
            stale = set(self._reset)  # (re)assigned during this poll: records may predate the reset
        out: list[SourceMessage] = []
        for tp, records in batches.items():
            if (tp.topic, tp.partition) in stale:
                continue
            out += map(source_message, records)
        return out

    def _reset_positions(self) -> None:
        """Seek freshly (re)assigned partitions to their committed offset.

        A partition that stays with this member across an eager rebalance keeps its fetch position in
        kafka-python (as in the Java client), but the pipeline dropped that partition's uncommitted
        work on revocation — so without this it would never be fetched again. Reset to the committed
        offset (or the reset policy when nothing was committed), all of it replays.
        """
        with self._reset_lock:
            todo, self._reset = self._reset, set()
        owned = self._consumer.assignment()
        for key in todo:
            tp = TopicPartition(*key)
            if tp not in owned:
                continue
            try:
                committed = self._consumer.committed(tp)
            except KafkaError:
                with self._reset_lock:
                    self._reset.add(key)  # try again on the next poll; its records are dropped till then
                raise
            if committed is None:
                if str(self._consumer.config.get("auto_offset_reset")) == "latest":
                    self._consumer.seek_to_end(tp)
                else:
                    self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)
                self._committed[key] = committed

    def commit(self, offsets: Mapping[Partition, int]) -> bool:
        if not offsets:
            return True
        payload = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        try:
            self._consumer.commit(payload)
        except KafkaError as exc:
            # CommitFailedError after a rebalance is expected: the partitions' new owner replays.
            COMMITS.labels(result="failed").inc()
            KAFKA_ERRORS.labels(operation="commit").inc()
            log.warning("commit of %d partition(s) failed: %s", len(payload), exc)
            return False
        COMMITS.labels(result="ok").inc()
        self._committed.update(offsets)
        return True

    def pause(self, partitions: Collection[Partition]) -> None:
        owned = self._consumer.assignment()
        tps = [TopicPartition(t, p) for t, p in partitions if TopicPartition(t, p) in owned]
        if tps:
            self._consumer.pause(*tps)

    def resume(self, partitions: Collection[Partition]) -> None:
        owned = self._consumer.assignment()
        tps = [TopicPartition(t, p) for t, p in partitions if TopicPartition(t, p) in owned]
        if tps:
            self._consumer.resume(*tps)

    def assignment(self) -> set[Partition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def lag(self) -> dict[Partition, int]:
        out: dict[Partition, int] = {}
        for tp in self._consumer.assignment():
            key = (tp.topic, tp.partition)
            high = self._consumer.highwater(tp)
            if high is None:  # no fetch response yet
                continue
            if key not in self._committed:
                try:
                    self._committed[key] = self._consumer.committed(tp) or 0
                except KafkaError:
                    continue
            out[key] = max(0, high - self._committed[key])
        return out

    @property
    def exhausted(self) -> bool:
        return False

    def close(self) -> None:
        # Offsets are committed explicitly by the pipeline; autocommit here would commit unfinished work.
        self._consumer.close(autocommit=False)

    # -- rebalance callbacks ---------------------------------------------------------------------------
    # kafka-python 3 runs these on its IO thread (2.x: inside poll()). Blocking consumer calls are not
    # allowed there, so the revocation commit is sent with commit_async: it is queued on the IO loop
    # ahead of the JoinGroup request that follows, so the coordinator sees it while this member still
    # owns the partitions. If it is refused anyway, the new owner replays from the previous commit
    # (at-least-once; the sinks are idempotent).
    def _track_assignment(self, added: set[Partition], removed: set[Partition]) -> None:
        self._owned = (self._owned - removed) | added
        ASSIGNED_PARTITIONS.set(sum(1 for topic, _ in self._owned if topic == self._frames_topic))

    def _revoked(self, tps: set[Partition]) -> None:
        self._track_assignment(set(), tps)
        offsets = self._on_revoked(tps) if self._on_revoked is not None else {}
        for tp in tps:
            self._committed.pop(tp, None)
        if not offsets:
            return
        payload = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}

        def done(_: object, result: object) -> None:
            ok = not isinstance(result, BaseException)
            COMMITS.labels(result="ok" if ok else "failed").inc()
            if not ok:
                log.warning("commit on revocation failed (%s); the new owner replays from the last commit", result)

        try:
            self._consumer.commit_async(payload, callback=done)
        except KafkaError as exc:
            COMMITS.labels(result="failed").inc()
            log.warning("commit on revocation not sent: %s", exc)

    def _assigned(self, tps: set[Partition]) -> None:
        self._track_assignment(tps, set())
        with self._reset_lock:
            self._reset |= tps
        if self._on_assigned is not None:
            self._on_assigned(tps)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.source._revoked({(tp.topic, tp.partition) for tp in revoked})

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.source._assigned({(tp.topic, tp.partition) for tp in assigned})

    def on_partitions_lost(self, lost: Any) -> None:
        # Membership is gone (session timeout): another member may own these already; commit nothing.
        tps = {(tp.topic, tp.partition) for tp in lost}
        self.source._track_assignment(set(), tps)
        if self.source._on_revoked is not None:
            self.source._on_revoked(tps)
