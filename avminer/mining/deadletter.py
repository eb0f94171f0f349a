"""Poison input goes to a dead-letter topic, with its original bytes and why it was refused.

A dead letter's value is the message exactly as it arrived; its headers say what happened:

    reason       one of avminer.mining.decode.REASONS (undecodable_event, corrupt_image, ...)
    error        the decoder's message (truncated to 1 000 characters)
    source_topic, source_partition, source_offset   where it came from

Its offset counts as done only once the dead-letter write is acknowledged (``on_done(True)``), so a
crash in between replays the message and dead-letters it again (at-least-once, like everything else).
Embedded mode writes ``dead-letter/`` files in the output directory instead of a topic.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from avminer.config import Settings
from avminer.metrics import DEAD_LETTERS
from avminer.sinks.kafka_topic import dead_letter_headers
from avminer.sources.base import SourceMessage

log = logging.getLogger(__name__)

DoneCallback = Callable[[bool], None]


def original_bytes(msg: SourceMessage) -> bytes:
    """The message as it arrived (a drive log's record is re-encoded: it never had raw bytes)."""
    if msg.value or msg.record is None:
        return msg.value
    from avminer.events import codec

    return codec.encode(msg.record)


class DeadLetterSink(Protocol):
    """Where poison goes. ``send`` must not block for long; ``on_done`` may run on another thread."""

    def send(self, msg: SourceMessage, reason: str, error: str, on_done: DoneCallback) -> None: ...

    def close(self) -> None: ...


class KafkaDeadLetters:
    """Dead letters to ``topics.dead_letter`` (acks=all), key = the source message's key."""

    def __init__(self, settings: Settings, producer: Any = None) -> None:
        from avminer.sinks.kafka_topic import make_producer

        self.topic = settings.topics.dead_letter
        self._owns = producer is None
        self._producer = producer if producer is not None else make_producer(settings.kafka)

    def send(self, msg: SourceMessage, reason: str, error: str, on_done: DoneCallback) -> None:
        from kafka.errors import KafkaError

        def ok(_: Any) -> None:
            DEAD_LETTERS.labels(reason=reason).inc()
            on_done(True)

        def failed(exc: BaseException) -> None:
            log.warning("dead letter for %s[%d]@%d not written: %s", msg.topic, msg.partition, msg.offset, exc)
            on_done(False)

        try:
            future = self._producer.send(
                self.topic, key=msg.key, value=original_bytes(msg), headers=dead_letter_headers(msg.topic, msg.partition, msg.offset, reason, error)
            )
        except KafkaError as exc:
            failed(exc)
            return
        future.add_callback(ok)
        future.add_errback(failed)

    def close(self) -> None:
        self._producer.flush(timeout=10)
        if self._owns:
            self._producer.close(timeout=5)


class LocalDeadLetters:
    """Dead letters as files: ``<root>/dead-letter/<topic>-<partition>-<offset>.bin`` + ``index.jsonl``."""

    DIR, INDEX = "dead-letter", "index.jsonl"

    def __init__(self, root: str | Path) -> None:
        self.dir = Path(root) / self.DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    @classmethod
    def entries(cls, root: str | Path) -> list[dict[str, Any]]:
        """The index entries (reason, error, where from) of the dead letters written under ``root``, oldest
        first; none if nothing was dead-lettered there."""
        index = Path(root) / cls.DIR / cls.INDEX
        return [json.loads(line) for line in index.read_text().splitlines() if line] if index.exists() else []

    def send(self, msg: SourceMessage, reason: str, error: str, on_done: DoneCallback) -> None:
        name = f"{msg.topic}-{msg.partition}-{msg.offset}.bin"
        entry = {"file": name, "reason": reason, "error": error[:1000], "topic": msg.topic,
                 "partition": msg.partition, "offset": msg.offset}
        with self._lock:
            (self.dir / name).write_bytes(original_bytes(msg))
            with open(self.dir / self.INDEX, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
        DEAD_LETTERS.labels(reason=reason).inc()
        on_done(True)

    def close(self) -> None:
        pass
