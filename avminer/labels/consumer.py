"""Labels back: validate each LabelResult's mask, store it, mark the sample labeled.

:class:`LabelApplier` is the logic (no Kafka): look the sample up in the catalog, read the mask
(inline PNG or ``mask_uri``), check it against the frame's size and the class ids, store the
canonical PNG in the frame store (content-addressed, kind ``mask``) and mark the sample labeled.

:class:`LabelResultConsumer` runs it over ``topics.label_results``: offsets are committed after each
polled batch is applied or dead-lettered; an invalid result goes to ``topics.dead_letter`` with its
original bytes and headers ``reason``, ``error``, ``source_topic``, ``source_partition``,
``source_offset`` (the same headers as the miner's dead letters). An unreachable store or catalog
pauses and retries; it never dead-letters a valid label.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from avminer.catalog.catalog import Catalog
from avminer.config import Settings
from avminer.errors import CatalogError, EventDecodeError, SinkError, SinkUnavailableError
from avminer.events.records import LabelResult
from avminer.labels.masks import InvalidLabelError, encode_mask_png, image_size, validate_mask
from avminer.metrics import DEAD_LETTERS, LABELS_BACK
from avminer.safeio import printable
from avminer.sinks.base import retry_until_available
from avminer.sinks.kafka_topic import dead_letter_headers
from avminer.storage.base import MASK, FrameStore

log = logging.getLogger(__name__)


class LabelApplier:
    """Validate and record one label result.

    Args:
        catalog: the provenance catalog (knows every mined sample and its frame size).
        store: where masks are stored and frames/masks are read from.
        fetch: reads ``mask_uri`` values from elsewhere (default: ``store.get``).
    """

    def __init__(self, catalog: Catalog, store: FrameStore, fetch: Callable[[str], bytes] | None = None) -> None:
        self.catalog = catalog
        self.store = store
        self.fetch = fetch or store.get

    def apply(self, result: LabelResult) -> str:
        """Validate ``result`` and mark its sample labeled; returns the stored mask's URI.

        Raises:
            InvalidLabelError: the result can never be accepted (reason says why).
            SinkUnavailableError: the store or catalog is unreachable; retry later.
        """
        for name in ("sample_id", "labeler", "mask_uri"):
            value = getattr(result, name) or ""
            if printable(value, 1024) != value:  # NUL (no PostgreSQL text holds it), escapes, forged log lines
                raise InvalidLabelError("invalid_result", f"{name} holds control characters or is over 1024 long")
        sample = self.catalog.get_sample(result.sample_id)
        if sample is None:
            raise InvalidLabelError("unknown_sample", f"sample {result.sample_id!r} is not in the catalog")
        if result.mask_png is not None:
            png = result.mask_png
        elif result.mask_uri:
            try:
                png = self.fetch(result.mask_uri)
            except SinkUnavailableError:
                raise
            except SinkError as exc:
                raise InvalidLabelError("mask_unreadable", f"cannot read {result.mask_uri}: {exc}") from exc
        else:
            raise InvalidLabelError("no_mask", "the result has neither mask_png nor mask_uri")
        width, height = sample.width, sample.height
        if width is None or height is None:
            if not sample.frame_uri:
                raise InvalidLabelError("frame_size_unknown", f"sample {sample.sample_id} has no frame size or URI")
            width, height = image_size(self.store.get(sample.frame_uri))
        mask = validate_mask(png, width, height)  # [H, W]
        uri = self.store.put(result.sample_id, encode_mask_png(mask), "image/png", kind=MASK)
        self.catalog.mark_labeled(result.sample_id, uri, result.labeler, result.labeled_at_us or None)
        return uri


@dataclass(slots=True)
class ConsumeStats:
    """What a consumer run did."""

    ok: int = 0
    invalid: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def make_consumer(settings: Settings, topic: str, group_id: str, **overrides: Any) -> Any:
    """A kafka-python consumer on ``topic`` with manual commits, starting from the earliest offset."""
    from kafka import KafkaConsumer

    kwargs: dict[str, Any] = {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_interval_ms": settings.kafka.max_poll_interval_ms,
        "session_timeout_ms": settings.kafka.session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka.heartbeat_interval_ms,
        "max_poll_records": settings.kafka.max_poll_records,
    }
    kwargs.update(settings.kafka.client_kwargs())
    kwargs.update(overrides)
    return KafkaConsumer(topic, **kwargs)


def poll_loop(
    consumer: Any,
    handle: Callable[[Any], None],
    *,
    stop: threading.Event | None = None,
    max_messages: int | None = None,
    idle_timeout_s: float | None = None,
    after_batch: Callable[[], None] | None = None,
) -> int:
    """Poll, ``handle`` each message, run ``after_batch`` (flush), commit; returns messages handled.

    Ends when ``stop`` is set, after ``max_messages``, or after ``idle_timeout_s`` without messages.
    """
    handled = 0
    last = time.monotonic()
    while not (stop is not None and stop.is_set()):
        batch = consumer.poll(timeout_ms=500)
        msgs = [m for part in batch.values() for m in part]
        if not msgs:
            if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                break
            continue
        for msg in msgs:
            handle(msg)
            handled += 1
        if after_batch is not None:
            after_batch()
        consumer.commit()
        last = time.monotonic()
        if max_messages is not None and handled >= max_messages:
            break
    return handled


class LabelResultConsumer:
    """Consumes ``topics.label_results``; applies valid results, dead-letters invalid ones.

    Args:
        settings: Kafka settings and topic names.
        applier: the validation and catalog logic.
        group_id: consumer group (one group for all label consumers).
        consumer_overrides: extra kafka-python consumer settings (tests shorten the timeouts).
    """

    def __init__(
        self,
        settings: Settings,
        applier: LabelApplier,
        *,
        group_id: str = "avminer-labels",
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        from avminer.sinks.kafka_topic import make_producer
        from avminer.sources.kafka_tls import check_kafka_tls

        self.settings = settings
        self.applier = applier
        self.topic = settings.topics.label_results
        self.dlq_topic = settings.topics.dead_letter
        check_kafka_tls(settings.kafka)  # wrong TLS settings: one line now, not a client's retry loop
        self.consumer = make_consumer(settings, self.topic, group_id, **(consumer_overrides or {}))
        self.producer = make_producer(settings.kafka)
        self.stats = ConsumeStats()
        self._dlq_futures: list[Any] = []

    def _dead_letter(self, msg: Any, reason: str, error: str) -> None:
        log.warning("label result at %s[%d]@%d refused (%s): %s", msg.topic, msg.partition, msg.offset, reason,
                    printable(error, 1000))
        headers = dead_letter_headers(msg.topic, msg.partition, msg.offset, reason, error)
        self._dlq_futures.append(self.producer.send(self.dlq_topic, key=msg.key, value=msg.value, headers=headers))
        DEAD_LETTERS.labels(reason=reason).inc()
        LABELS_BACK.labels(result="invalid").inc()
        self.stats.invalid += 1
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1

    def handle(self, msg: Any, stop: threading.Event | None = None) -> None:
        """Apply one message (retrying while a sink is unavailable) or dead-letter it."""
        from avminer.events import codec

        try:
            result = codec.decode_as(msg.value, LabelResult)
        except EventDecodeError as exc:
            self._dead_letter(msg, "undecodable_event", str(exc))
            return
        try:
            retry_until_available(lambda: self.applier.apply(result), stop=stop)
        except InvalidLabelError as exc:
            self._dead_letter(msg, exc.reason, str(exc))
            return
        except CatalogError as exc:  # e.g. the sample vanished between lookup and update
            self._dead_letter(msg, "unknown_sample", str(exc))
            return
        except SinkError:
            raise  # a sink refusing for good (or unavailable while stopping) is no fault of this message
        except Exception as exc:  # noqa: BLE001 - no message may stop the consumer (or every restart after it)
            self._dead_letter(msg, "invalid_result", f"unexpected {type(exc).__name__}: {printable(exc)}")
            return
        LABELS_BACK.labels(result="ok").inc()
        self.stats.ok += 1

    def _flush_dead_letters(self) -> None:
        if not self._dlq_futures:
            return
        self.producer.flush(timeout=30)
        failed = [f for f in self._dlq_futures if not f.is_done or f.failed()]
        self._dlq_futures = []
        if failed:
            # Not committing: the batch is replayed and dead-lettered again (at-least-once).
            raise SinkUnavailableError(f"{len(failed)} dead letters to {self.dlq_topic} not acknowledged")

    def run(
        self,
        stop: threading.Event | None = None,
        *,
        max_messages: int | None = None,
        idle_timeout_s: float | None = None,
    ) -> ConsumeStats:
        """Consume until ``stop``, ``max_messages`` or ``idle_timeout_s`` of silence."""
        poll_loop(self.consumer, lambda m: self.handle(m, stop), stop=stop, max_messages=max_messages,
                  idle_timeout_s=idle_timeout_s, after_batch=self._flush_dead_letters)
        return self.stats

    def close(self) -> None:
        try:
            self._flush_dead_letters()
        finally:
            self.consumer.close()
            self.producer.close(timeout=5)
