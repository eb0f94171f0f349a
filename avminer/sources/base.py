"""The one interface every source of fleet events implements.

A source hands out raw messages with their position (topic, partition, offset), accepts commits of
"everything before this offset is handled", and can pause and resume partitions for backpressure.
Two implementations: :class:`avminer.sources.kafka.KafkaSource` (a consumer group; the scale-out
path) and :class:`avminer.sources.drivelog.DriveLogSource` (one drive log file; embedded mode).

Sources are not thread-safe: the pipeline's poll thread is the only caller (kafka-python's consumer
is not thread-safe either). Rebalance callbacks are the exception: see
:meth:`Source.set_rebalance_callbacks`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from avminer.events.records import CameraFrame, RadarScan

Partition = tuple[str, int]
"""(topic, partition)."""

AssignedCallback = Callable[[set[Partition]], None]
RevokedCallback = Callable[[set[Partition]], Mapping[Partition, int]]
"""Called with the revoked partitions; returns the offsets to commit for them before they go."""


@dataclass(slots=True)
class SourceMessage:
    """One message as it left the source.

    Attributes:
        topic: source topic (the drive log source uses the configured topic names).
        partition: partition number.
        offset: position in the partition; commits name ``offset + 1``.
        value: the encoded event (the original bytes the dead-letter topic keeps).
        key: message key (vehicle id for fleet topics), if any.
        timestamp_ms: broker or log timestamp.
        record: the event already decoded, when the source has it (a drive log yields records);
            None means :func:`avminer.events.codec.decode` it from ``value``.
    """

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    timestamp_ms: int = 0
    record: CameraFrame | RadarScan | None = None

    @property
    def tp(self) -> Partition:
        return (self.topic, self.partition)


@runtime_checkable
class Source(Protocol):
    """Raw fleet events with positions, commits, pause/resume and rebalance notifications."""

    def set_rebalance_callbacks(self, on_assigned: AssignedCallback, on_revoked: RevokedCallback) -> None:
        """Register callbacks for partitions assigned or revoked.

        They may run on another thread than :meth:`poll`'s (kafka-python 3 runs them on its IO thread),
        so they must only do thread-safe bookkeeping; ``on_revoked`` returns the offsets to commit for
        the revoked partitions and the source commits them before the partitions go.
        """
        ...

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[SourceMessage]:
        """Messages of the assigned, unpaused partitions (empty on timeout). Keeps group membership alive."""
        ...

    def commit(self, offsets: Mapping[Partition, int]) -> bool:
        """Commit ``partition -> next offset to read``; True on success (a failed commit is retried later)."""
        ...

    def pause(self, partitions: Collection[Partition]) -> None: ...

    def resume(self, partitions: Collection[Partition]) -> None: ...

    def assignment(self) -> set[Partition]: ...

    def lag(self) -> dict[Partition, int]:
        """Messages behind the end of each assigned partition (for the consumer-lag gauge)."""
        ...

    @property
    def exhausted(self) -> bool:
        """True when no message will ever come again (the end of a drive log; never for Kafka)."""
        ...

    def close(self) -> None: ...
