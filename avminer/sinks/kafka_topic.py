"""Kafka producers for label requests and decisions (acks=all, key = sample id).

Records are encoded with :mod:`avminer.events.codec`. Keying by sample id puts every message about
one frame on one partition, so a compacted topic keeps one per frame and consumers can dedupe.
Request dedupe across restarts is the catalog's job (:class:`~avminer.sinks.base.MinedSampleWriter`
asks it before sending); within a process this sink also remembers what it already sent.

A broker that cannot be reached, or a flush that is not acknowledged in time, raises
:class:`~avminer.errors.SinkUnavailableError`: the caller pauses and resends the batch (same keys).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from avminer.config import KafkaSettings
from avminer.errors import SinkError, SinkUnavailableError
from avminer.events.records import Decision, LabelRequest
from avminer.metrics import KAFKA_ERRORS

log = logging.getLogger(__name__)


def make_producer(settings: KafkaSettings, **overrides: Any) -> Any:
    """A kafka-python producer with acks=all for ``settings`` (raises SinkUnavailableError if no broker)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    kwargs: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 5,
        "retries": 5,
        "max_block_ms": 10_000,
        "request_timeout_ms": 10_000,
    }
    kwargs.update(settings.client_kwargs())
    kwargs.update(overrides)
    try:
        return KafkaProducer(**kwargs)
    except KafkaError as exc:
        KAFKA_ERRORS.labels(operation="connect").inc()
        raise SinkUnavailableError(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}; the miner pauses and retries"
        ) from exc


def dead_letter_headers(topic: str, partition: int, offset: int, reason: str, error: str) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead letter: why it was refused and where it came from.

    The one header layout for every dead-letter topic (the miner's poison frames, the label consumer's
    refused results), so one tool reads them all.
    """
    return [
        ("reason", reason.encode()),
        ("error", error[:1000].encode("utf-8", "replace")),
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
    ]


class KafkaRecordSink:
    """Sends records keyed by ``record.sample_id``; durable after :meth:`flush`.

    Args:
        settings: Kafka connection settings.
        topic: destination topic.
        dedupe: skip records whose sample id this sink already sent successfully.
        flush_timeout_s: longest a flush waits for acknowledgements.
        producer: an existing producer to share (not closed by this sink).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        *,
        dedupe: bool = False,
        flush_timeout_s: float = 30.0,
        producer: Any = None,
    ) -> None:
        self.topic = topic
        self.dedupe = dedupe
        self.flush_timeout_s = flush_timeout_s
        self._settings = settings
        self._owns_producer = producer is None
        self._producer = producer
        self._pending: list[tuple[str, Any]] = []
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._sent_max = 200_000

    @property
    def producer(self) -> Any:
        if self._producer is None:
            self._producer = make_producer(self._settings)
        return self._producer

    def _send(self, record: Any) -> None:
        from kafka.errors import KafkaError

        from avminer.events import codec

        sid = record.sample_id
        if self.dedupe and sid in self._sent:
            return
        value = codec.encode(record)
        try:
            future = self.producer.send(self.topic, key=sid.encode(), value=value)
        except KafkaError as exc:
            KAFKA_ERRORS.labels(operation="produce").inc()
            raise SinkUnavailableError(f"cannot produce to {self.topic}: {exc}; pausing") from exc
        self._pending.append((sid, future))

    def flush(self) -> None:
        """Wait for every pending record's acknowledgement (acks=all)."""
        from kafka.errors import KafkaError

        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            self.producer.flush(timeout=self.flush_timeout_s)
        except KafkaError as exc:
            KAFKA_ERRORS.labels(operation="flush").inc()
            raise SinkUnavailableError(f"flush to {self.topic} failed: {exc}; pausing") from exc
        failed: list[BaseException] = []
        for sid, future in pending:
            if not future.is_done:
                failed.append(TimeoutError(f"no acknowledgement within {self.flush_timeout_s}s"))
            elif future.failed():
                failed.append(future.exception)
            elif self.dedupe:
                self._sent[sid] = None
        while len(self._sent) > self._sent_max:
            self._sent.popitem(last=False)
        if failed:
            KAFKA_ERRORS.labels(operation="produce").inc(len(failed))
            raise SinkUnavailableError(
                f"{len(failed)} of {len(pending)} records to {self.topic} were not acknowledged "
                f"(first: {failed[0]}); pausing, the batch will be resent"
            )

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._owns_producer and self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None


class KafkaRequestSink(KafkaRecordSink):
    """LabelRequests to ``topics.label_requests`` (deduped within the process)."""

    def __init__(self, settings: KafkaSettings, topic: str, **kwargs: Any) -> None:
        kwargs.setdefault("dedupe", True)
        super().__init__(settings, topic, **kwargs)

    def send(self, req: LabelRequest) -> None:
        if not isinstance(req, LabelRequest):
            raise SinkError(f"expected a LabelRequest, got {type(req).__name__}")
        self._send(req)


class KafkaDecisionSink(KafkaRecordSink):
    """Decisions to ``topics.decisions`` (at-least-once, keyed by sample id)."""

    def send(self, d: Decision) -> None:
        if not isinstance(d, Decision):
            raise SinkError(f"expected a Decision, got {type(d).__name__}")
        self._send(d)
