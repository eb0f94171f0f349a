"""One drive log file as a source (embedded mode: no broker).

The log's records come out in time order as messages of the configured frames and radar topics,
partition 0, offsets counting from 0 per topic, so the rest of the pipeline — offsets, radar join,
dead letters — behaves exactly as it does on Kafka. Commits are kept in memory (:attr:`committed`):
an embedded run starts from the beginning of its log.

``frames`` with ``repeat=True`` replays the log until that many camera frames went out, shifting
timestamps (and frame ids) per pass so every replayed frame is a distinct sample: the benchmark and
the tests use it to get long streams from the small sample drive.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

from avminer.errors import SourceError
from avminer.events.records import CameraFrame, RadarScan
from avminer.sources.base import AssignedCallback, Partition, RevokedCallback, SourceMessage

REPLAY_CACHE_BYTES = 256 << 20
"""A repeated log up to this size is decoded once and replayed from memory (see :func:`replay_records`)."""


def replay_records(
    path: str | Path, frames: int | None = None, repeat: bool = False
) -> Iterator[CameraFrame | RadarScan]:
    """The log's records in time order; with ``repeat``, passes shifted in time until ``frames`` frames.

    A repeated log no larger than :data:`REPLAY_CACHE_BYTES` is read and Avro-decoded once; later
    passes replay the decoded records (new records, shifted, sharing the unchanged nested values:
    records are not modified downstream). Re-decoding the same small file on every pass was most of
    the poll thread's time in ``avminer bench pipeline``, which replays the 48-frame sample drive.

    Args:
        path: drive log file.
        frames: stop after this many camera frames (None: the whole log, once).
        repeat: replay the log (timestamps shifted past the previous pass, frame ids suffixed ``#pass``).
    """
    from avminer.events.drivelog import read_drive_log

    cache: list[CameraFrame | RadarScan] | None = None
    if repeat and frames is not None and Path(path).stat().st_size <= REPLAY_CACHE_BYTES:
        cache = []
    emitted = 0
    shift_us = 0
    for pass_no in range(1 << 30):
        first = last = None
        any_frame = False
        for rec in read_drive_log(path) if not pass_no or cache is None else cache:
            if not pass_no and cache is not None:
                cache.append(rec)
            first = rec.timestamp_us if first is None else first
            last = rec.timestamp_us
            if pass_no:
                if isinstance(rec, CameraFrame):
                    rec = dataclasses.replace(rec, timestamp_us=rec.timestamp_us + shift_us,
                                              frame_id=f"{rec.frame_id}#{pass_no}")
                else:
                    rec = dataclasses.replace(rec, timestamp_us=rec.timestamp_us + shift_us)
            if isinstance(rec, CameraFrame):
                if frames is not None and emitted >= frames:
                    return
                emitted += 1
                any_frame = True
            yield rec
        if not repeat or frames is None or not any_frame or first is None or last is None:
            return
        shift_us += (last - first) + 1_000_000


class DriveLogSource:
    """A drive log behind the :class:`~avminer.sources.base.Source` interface.

    Args:
        path: the drive log.
        frames_topic: topic name camera frames are reported under.
        radar_topic: topic name radar scans are reported under.
        frames: stop after this many camera frames (None: whole log).
        repeat: replay the log until ``frames`` frames (distinct sample ids per pass).
        max_records: messages per :meth:`poll`.
    """

    def __init__(
        self,
        path: str | Path,
        frames_topic: str = "avminer.frames",
        radar_topic: str = "avminer.radar",
        frames: int | None = None,
        repeat: bool = False,
        max_records: int = 64,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"drive log {self.path} does not exist; set source.drive_log to a drive log file")
        self.frames_topic, self.radar_topic = frames_topic, radar_topic
        self._records = replay_records(self.path, frames, repeat)
        self._next_offset = {frames_topic: 0, radar_topic: 0}
        self._paused: set[Partition] = set()
        self._exhausted = False
        self._announced = False
        self._on_assigned: AssignedCallback | None = None
        self.max_records = max_records
        self.committed: dict[Partition, int] = {}

    def set_rebalance_callbacks(self, on_assigned: AssignedCallback, on_revoked: RevokedCallback) -> None:
        self._on_assigned = on_assigned

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[SourceMessage]:
        if not self._announced:
            self._announced = True
            if self._on_assigned is not None:
                self._on_assigned(self.assignment())
        if self._paused or self._exhausted:
            # Nothing to hand out: wait like a consumer poll does, so a caller's loop does not spin.
            time.sleep(max(0.0, timeout_s))
            return []
        out: list[SourceMessage] = []
        for rec in self._records:
            topic = self.frames_topic if isinstance(rec, CameraFrame) else self.radar_topic
            offset = self._next_offset[topic]
            self._next_offset[topic] = offset + 1
            out.append(
                SourceMessage(
                    topic=topic, partition=0, offset=offset, value=b"", key=rec.vehicle_id.encode(),
                    timestamp_ms=rec.timestamp_us // 1000, record=rec,
                )
            )
            if len(out) >= min(self.max_records, max_records or self.max_records):
                return out
        self._exhausted = True
        return out

    def commit(self, offsets: Mapping[Partition, int]) -> bool:
        self.committed.update(offsets)
        return True

    def pause(self, partitions: Collection[Partition]) -> None:
        self._paused.update(partitions)

    def resume(self, partitions: Collection[Partition]) -> None:
        self._paused.difference_update(partitions)

    def assignment(self) -> set[Partition]:
        return {(self.frames_topic, 0), (self.radar_topic, 0)}

    def lag(self) -> dict[Partition, int]:
        return {tp: max(0, self._next_offset[tp[0]] - self.committed.get(tp, 0)) for tp in self.assignment()}

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def close(self) -> None:
        self._records.close()  # type: ignore[attr-defined]
