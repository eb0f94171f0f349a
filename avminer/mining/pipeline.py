"""The mining pipeline: bounded stages from a source to the sinks, commits after the sinks.

::

    poll (caller's thread) ─► decode ×N ─► assemble (radar join + micro-batch) ─► engine ─► score+select ─► sinks
       ▲        owns the source: polls, commits, pauses/resumes, rebalances              │
       └──────────────── done offsets, dead-letter acks (one event queue) ◄─────────────────┘

- **Only the poll thread touches the source** (kafka-python's consumer is not thread-safe). The
  other stages talk back through one event queue: "offset done", "dead letter failed", "stage died".
- **Backpressure.** Every queue is bounded and the stages block on ``put``; the poll thread never
  blocks: when the decode queue is full it keeps what it fetched in a small overflow list and pauses
  every assigned partition (``consumer.pause``, no rebalance), then resumes once the queue has drained
  to half. It keeps polling while paused, so heartbeats and ``max_poll_interval_ms`` stay happy during
  a long batch; between those polls it waits for the decode workers to say the queue is down to half
  (``_drained``), not for a fixed tick: a 50 ms sleep per refill of a 64-message queue capped the
  pipeline at ~600 frames/s whatever the CPU. Memory is bounded by the queue sizes, one poll's worth of overflow, and the radar
  join's buffer.
- **Offsets** (:mod:`avminer.mining.offsets`): a camera frame is done when its decision and sinks are
  durable; poison when its dead letter is acknowledged; a radar scan when the join no longer needs
  it. Only the contiguous done prefix per partition is committed.
- **Rebalance.** Every assignment of a partition gets a fresh *epoch*; work carries the epoch it was
  fetched under. On revocation the poll thread commits the done prefix of the revoked partitions,
  forgets their staged offsets and retires the epoch: queued items of revoked partitions are dropped
  when a stage reaches them and in-flight engine results for them are discarded without a commit
  (the new owner replays them; deterministic sample ids make every sink idempotent).
- **Shutdown** (:meth:`Pipeline.run` with ``stop`` set): stop fetching, flush the radar join and the
  batcher, wait for in-flight work up to ``shutdown_deadline_s``, commit, return.
- **Hot-swap**: the engine stage pins one engine per batch (``engines.acquire()``); every decision
  names the model version that produced it.
- **Typed stages.** decode -> :class:`FrameWork`; engine -> :class:`~avminer.engines.contract.EngineOutput`
  (compact, scored in the graph); scoring (:class:`~avminer.scoring.scorer.BatchScorer`) ->
  ``FrameScore``; selection (:func:`avminer.selection.decide.decide` over a
  :class:`~avminer.selection.decide.Policy`) -> the Decisions; the sinks store them. The wiring only
  moves what each stage returns. Frames are resized to the engine's input size in one place
  (:meth:`Pipeline._fit`).
- **Per-stage CPU** (``PipelineStats.stage_cpu_s``): thread CPU seconds spent in each stage's work.

Why one module of ~800 lines: the stage loops share one set of queues, epochs, the event queue and the
offset tracker, and their correctness (no commit past an unfinished frame, no result of a revoked
partition committed) is a protocol between them; it reads best in one place. The parts without that
shared state live beside it: decode (:mod:`~avminer.mining.decode`), batching, offsets, dead letters.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from avminer.config import Settings
from avminer.engines.base import resize_batch
from avminer.engines.bundle import Bundle
from avminer.engines.contract import EngineOutput, HeadSpec
from avminer.errors import EngineError, MiningError, SelectionError, SinkUnavailableError
from avminer.events.records import CameraFrame, Decision, RadarScan
from avminer.metrics import (
    CONSUMER_LAG,
    DECISIONS,
    FRAMES_IN,
    MINED,
    MINING_RATE,
    MINING_TARGET,
    PAUSES,
    QUEUE_DEPTH,
    SELECTION_THRESHOLD,
    SINK_ERRORS,
)
from avminer.mining.batcher import MicroBatcher
from avminer.mining.deadletter import DeadLetterSink
from avminer.mining.decode import as_poison, decode_event, decode_image, image_bytes
from avminer.mining.offsets import OffsetTracker, Partition
from avminer.scoring.scorer import BatchScorer, FrameScore
from avminer.selection.decide import Policy, Position, Selected, decide
from avminer.sources.base import Source, SourceMessage
from avminer.sources.join import RadarJoiner

if TYPE_CHECKING:
    from avminer.sinks.base import MinedSample

log = logging.getLogger(__name__)

_TICK_S = 0.05  # stage loops wake this often to notice shutdown


class ServingEngine(Protocol):
    """The engine stage's view of an engine (:class:`avminer.engines.base.Engine`)."""

    @property
    def version(self) -> str: ...

    @property
    def input_hw(self) -> tuple[int, int]: ...

    @property
    def bundle(self) -> Bundle: ...

    @property
    def head(self) -> HeadSpec: ...

    def infer(self, images: np.ndarray, probs: bool = False) -> EngineOutput: ...


class EngineProvider(Protocol):
    """The engine for each batch (:class:`avminer.engines.hotswap.EngineHolder`): hot-swappable."""

    @property
    def current(self) -> ServingEngine: ...

    def acquire(self) -> contextlib.AbstractContextManager[ServingEngine]:
        """Pin the serving engine for one batch (a swap does not close it under the batch)."""
        ...


class WriteReport(Protocol):
    @property
    def requests_sent(self) -> int: ...


class BatchWriter(Protocol):
    """:class:`avminer.sinks.base.MinedSampleWriter`: durable when ``write_batch`` returns."""

    def write_batch(self, samples: Sequence[MinedSample]) -> WriteReport: ...


@dataclass(slots=True)
class _Job:
    """Where an in-flight item came from, and under which assignment epoch."""

    topic: str
    partition: int
    offset: int
    epoch: int

    @property
    def tp(self) -> Partition:
        return (self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class _DeadLetterFailed:
    """Event: a dead letter could not be sent; the poll thread retries it."""

    msg: SourceMessage
    job: _Job
    reason: str
    error: str


_Event = _Job | _DeadLetterFailed | BaseException
"""What the stages tell the poll thread: a job is done, a dead letter failed, a stage died."""
_T = TypeVar("_T")


@dataclass(slots=True)
class FrameWork:
    """A decoded camera frame on its way through the pipeline.

    Attributes:
        job: position and epoch.
        frame: the event (its ``image`` bytes are kept: a mined frame is stored as it arrived).
        image: uint8 ``[H, W, 3]``, at the engine's input size when decoded.
        radar: the joined radar scan, if any.
    """

    job: _Job
    frame: CameraFrame
    image: np.ndarray
    encoded: bytes
    radar: RadarScan | None = None


@dataclass(slots=True)
class DecidedFrame:
    """One frame after selection, for report hooks (the demo's contact sheet)."""

    frame: CameraFrame
    image: np.ndarray  # uint8 [H, W, 3] at the engine's input size
    decision: Decision
    score: FrameScore
    priority: float
    rejected: str | None = None  # why selection passed on it (warmup, below_threshold, duplicate, ...)


@dataclass(slots=True)
class _Scored:
    """An engine batch on its way to scoring."""

    batch: list[FrameWork]
    out: EngineOutput
    images: np.ndarray  # [N, H, W, 3] uint8 at the engine's input size
    engine: ServingEngine


@dataclass
class PipelineStats:
    """Counters of one :meth:`Pipeline.run`."""

    frames: int = 0
    radar: int = 0
    decisions: int = 0
    mined: int = 0
    dead_letters: int = 0
    requests_sent: int = 0
    commits: int = 0
    pauses: int = 0
    batches: int = 0
    engine_s: float = 0.0  # time inside engine.infer
    wall_s: float = 0.0
    stage_cpu_s: dict[str, float] = field(default_factory=dict)  # thread CPU seconds per stage
    dropped_revoked: int = 0
    drained: bool = True  # False: the shutdown deadline cut in-flight work short
    mined_by_reason: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """Wires a source, an engine, a scorer, a selection policy and sinks into bounded stages.

    Args:
        settings: everything (batcher, decode limits, radar join, shutdown deadline, commit interval).
        source: where messages come from; only :meth:`run`'s thread touches it.
        engines: provides the engine for each batch (hot-swappable).
        writer: stores, requests and decides a batch durably (``MinedSampleWriter``).
        dead_letters: where poison goes.
        policy: the selection policy (``SelectionPolicy``); used from one thread only.
        scorer_for: builds the scorer for an engine (cached per model version).
        fetch: reads ``image_uri`` frames (default: ``file://`` only).
        on_decided: called on the scoring thread with every decided batch (reports, tests).
        source_label: ``avminer_frames_in_total`` label.
    """

    def __init__(
        self,
        settings: Settings,
        source: Source,
        engines: EngineProvider,
        writer: BatchWriter,
        dead_letters: DeadLetterSink,
        policy: Policy,
        scorer_for: Callable[[ServingEngine], BatchScorer] | None = None,
        *,
        fetch: Callable[[str], bytes] | None = None,
        on_decided: Callable[[list[DecidedFrame]], None] | None = None,
        source_label: str = "kafka",
    ) -> None:
        self.settings = settings
        self.source = source
        self.engines = engines
        self.writer = writer
        self.dead_letters = dead_letters
        self.policy = policy
        self._selection_exported = float("-inf")
        self._scorer_for = scorer_for or default_scorer_factory(settings)
        self._scorers: dict[str, BatchScorer] = {}
        self.fetch = fetch
        self.on_decided = on_decided
        self.source_label = source_label
        self.stats = PipelineStats()

        qs = settings.batcher.queue_size
        # Items carry a sequence number from the moment they enter decoding: with several decode workers
        # the assemble stage puts their outcomes back in that order (a partition's frames stay in order).
        self._decode_q: queue.Queue[tuple[int, SourceMessage, _Job]] = queue.Queue(qs)
        self._assemble_q: queue.Queue[tuple[int, FrameWork | tuple[RadarScan, _Job] | None]] = queue.Queue(qs)
        self._decode_seq = 0
        # Engine outputs are large ([K, N, C, H, W] float32): keep only a couple in flight.
        self._engine_q: queue.Queue[list[FrameWork]] = queue.Queue(2)
        self._score_q: queue.Queue[_Scored] = queue.Queue(2)
        self._sink_q: queue.Queue[tuple[list[FrameWork], list[MinedSample]]] = queue.Queue(4)
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()

        self._tracker = OffsetTracker()
        self._epochs: dict[Partition, int] = {}  # written by the poll thread only
        self._next_epoch = 1
        self._overflow: deque[tuple[SourceMessage, _Job]] = deque()
        # Rebalance callbacks may run on the Kafka client's IO thread: the tracker, the epochs and the
        # overflow are shared with it. Never held across a source call (the IO thread serves those).
        self._lock = threading.RLock()
        self._paused = False
        self._drained = threading.Event()  # set by a decode worker: paused, and the decode queue is down to half
        self._paused_parts: set[Partition] = set()
        self._halt = threading.Event()  # stages exit
        self._flush = threading.Event()  # assembler: no more waiting (end of input or draining)
        self._threads: list[threading.Thread] = []
        self._last_commit = 0.0
        self._last_metrics = 0.0
        self._lag_labels: set[Partition] = set()
        self._fatal: BaseException | None = None
        self._poison_logged: dict[str, int] = {}
        self._cpu_lock = threading.Lock()

    # -- public ----------------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, max_frames: int | None = None) -> PipelineStats:
        """Run until the source is exhausted and drained, or ``stop`` is set (then drain and commit).

        Args:
            stop: set it (from a signal handler) to shut down gracefully.
            max_frames: stop fetching after this many camera frames (benchmarks, tests).

        Raises:
            MiningError: a stage failed for good (the engine keeps failing, a sink refuses data).
                Offsets of finished work are committed first.
        """
        stop = stop or threading.Event()
        self.source.set_rebalance_callbacks(self._on_assigned, self._on_revoked)
        self._start_threads()
        start = time.monotonic()
        deadline: float | None = None
        try:
            while True:
                self._handle_events()
                if self._fatal is not None:
                    break
                now = time.monotonic()
                if deadline is None and stop.is_set():
                    deadline = now + self.settings.shutdown_deadline_s * 0.8  # the rest: commit + close
                    self._set_paused(True)
                    self._drop_overflow()
                    log.info("stopping: draining %d in-flight message(s)", self._in_flight())
                    self._flush.set()
                draining = deadline is not None
                if self.source.exhausted and not self._overflow:
                    self._flush.set()
                    if self._in_flight() == 0:
                        break
                if draining and (self._in_flight() == 0 or now >= deadline):  # type: ignore[operator]
                    self.stats.drained = self._in_flight() == 0
                    break
                if max_frames is not None and self.stats.frames >= max_frames and not draining:
                    stop.set()
                    continue
                self._feed()
                if now - self._last_commit >= self.settings.kafka.commit_interval_ms / 1000.0:
                    self._commit()
                self._backpressure()
                # Fetch no more than the decode queue can take: what does not fit waits in the overflow.
                room = max(1, self._decode_q.maxsize - self._decode_q.qsize())
                timeout = _TICK_S if (self._paused or draining) else 0.1
                if self._paused and not draining:
                    # Woken as soon as there is room again: poll without waiting, then refill.
                    self._drained.clear()
                    if self._decode_q.qsize() <= self._decode_q.maxsize // 2 or self._drained.wait(_TICK_S):
                        timeout = 0.0
                msgs = self.source.poll(timeout, room)
                if msgs and not draining:
                    self._accept(msgs)
                elif msgs:
                    # Fetched just before the pause took effect: not tracked, so not committed past;
                    # they are fetched again after a restart or by the partition's next owner.
                    log.debug("ignoring %d message(s) fetched while draining", len(msgs))
                if now - self._last_metrics >= 5.0:
                    self._publish_metrics()
        finally:
            self._handle_events()
            self._commit()
            self._halt.set()
            for t in self._threads:
                t.join(timeout=2.0)
            self.stats.wall_s = time.monotonic() - start
        if self._fatal is not None:
            raise MiningError(f"mining pipeline stopped: {self._fatal}") from self._fatal
        return self.stats

    # -- poll thread -----------------------------------------------------------------------------------
    def _in_flight(self) -> int:
        with self._lock:
            return self._tracker.in_flight()

    def _accept(self, msgs: list[SourceMessage]) -> None:
        with self._lock:
            self._accept_locked(msgs)
        self._feed()

    def _accept_locked(self, msgs: list[SourceMessage]) -> None:
        for m in msgs:
            epoch = self._epochs.get(m.tp)
            if epoch is None:  # a partition we no longer own (fetched before a revocation)
                continue
            try:
                self._tracker.track(m.tp, m.offset)
            except ValueError as exc:  # re-delivered without a revocation (a position reset): skip
                log.warning("%s", exc)
                continue
            self._overflow.append((m, _Job(m.topic, m.partition, m.offset, epoch)))
            if m.topic == self.settings.topics.radar:
                self.stats.radar += 1
            else:
                self.stats.frames += 1
                FRAMES_IN.labels(source=self.source_label).inc()

    def _feed(self) -> None:
        with self._lock:
            while self._overflow:
                msg, job = self._overflow[0]
                try:
                    self._decode_q.put_nowait((self._decode_seq, msg, job))
                except queue.Full:
                    return
                self._decode_seq += 1
                self._overflow.popleft()

    def _drop_overflow(self) -> None:
        """Shutdown: forget fetched work that never entered the pipeline (it is fetched again later)."""
        with self._lock:
            first: dict[Partition, int] = {}
            for _, job in self._overflow:
                first.setdefault(job.tp, job.offset)
            for tp, offset in first.items():
                self._tracker.untrack_from(tp, offset)
            self._overflow.clear()

    def _backpressure(self) -> None:
        draining = self._flush.is_set() and not self.source.exhausted
        if draining or self._overflow:
            self._set_paused(True)
        elif self._paused:
            self._set_paused(self._decode_q.qsize() > self._decode_q.maxsize // 2)

    def _set_paused(self, paused: bool) -> None:
        if paused and self._paused:
            # Partitions assigned since the pause start unpaused: pause them too.
            new = self.source.assignment() - self._paused_parts
            if new:
                self.source.pause(new)
                self._paused_parts |= new
            return
        if paused == self._paused:
            return
        self._paused = paused
        if paused:
            self._paused_parts = self.source.assignment()
            self.source.pause(self._paused_parts)
            self.stats.pauses += 1
            PAUSES.inc()
        else:
            self.source.resume(self.source.assignment())
            self._paused_parts = set()

    def _handle_events(self) -> None:
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return
            if isinstance(ev, _Job):  # done
                with self._lock:
                    if self._epochs.get(ev.tp) == ev.epoch:
                        self._tracker.done(ev.tp, ev.offset)
            elif isinstance(ev, _DeadLetterFailed):
                if self._epochs.get(ev.job.tp) == ev.job.epoch:
                    time.sleep(0.2)  # the broker is struggling; the offset stays open until it works
                    self._send_dead_letter(ev.msg, ev.job, ev.reason, ev.error)
            elif self._fatal is None:
                self._fatal = ev

    def _commit(self) -> None:
        self._last_commit = time.monotonic()
        with self._lock:
            offsets = {tp: off for tp, off in self._tracker.to_commit().items() if tp in self._epochs}
        if offsets and self.source.commit(offsets):
            with self._lock:
                self._tracker.committed(offsets)
            self.stats.commits += 1

    def _on_assigned(self, tps: set[Partition]) -> None:
        with self._lock:
            for tp in tps:
                self._epochs[tp] = self._next_epoch
                self._next_epoch += 1
        log.info("assigned %s", sorted(tps))

    def _on_revoked(self, tps: set[Partition]) -> dict[Partition, int]:
        """Retire the partitions' epochs, drop their queued work, return their done prefix to commit."""
        log.info("revoked %s: committing what is done, dropping the rest", sorted(tps))
        with self._lock:
            # Done marks already reported still count; later ones (a retired epoch) are ignored.
            self._handle_events()
            for tp in tps:
                self._epochs.pop(tp, None)
            offsets = {tp: off for tp, off in self._tracker.to_commit().items() if tp in tps}
            self._tracker.forget(tps)
            before = len(self._overflow)
            self._overflow = deque(item for item in self._overflow if item[1].tp not in tps)
            self.stats.dropped_revoked += before - len(self._overflow)
            for tp in tps & self._lag_labels:
                self._lag_labels.discard(tp)
                CONSUMER_LAG.remove(tp[0], str(tp[1]))
        return offsets

    def _publish_metrics(self) -> None:
        self._last_metrics = time.monotonic()
        QUEUE_DEPTH.labels(stage="overflow").set(len(self._overflow))
        QUEUE_DEPTH.labels(stage="decode").set(self._decode_q.qsize())
        QUEUE_DEPTH.labels(stage="assemble").set(self._assemble_q.qsize())
        QUEUE_DEPTH.labels(stage="engine").set(self._engine_q.qsize())
        QUEUE_DEPTH.labels(stage="score").set(self._score_q.qsize())
        QUEUE_DEPTH.labels(stage="sink").set(self._sink_q.qsize())
        for (topic, part), lag in self.source.lag().items():
            CONSUMER_LAG.labels(topic=topic, partition=str(part)).set(lag)
            self._lag_labels.add((topic, part))

    # -- stages ----------------------------------------------------------------------------------------
    def _start_threads(self) -> None:
        stages: list[tuple[str, Callable[[], None]]] = [
            (f"decode-{i}", self._decode_loop) for i in range(max(1, self.settings.decode.workers))
        ]
        stages += [("assemble", self._assemble_loop), ("engine", self._engine_loop),
                   ("score", self._score_loop), ("sink", self._sink_loop)]
        for name, fn in stages:
            nice = 0 if name in ("assemble", "engine") else self.settings.batcher.stage_nice
            t = threading.Thread(target=self._guard(fn, nice), name=f"avminer-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _guard(self, fn: Callable[[], None], nice: int = 0) -> Callable[[], None]:
        def run() -> None:
            if nice:
                _renice_current_thread(nice)
            try:
                fn()
            except BaseException as exc:  # the poll thread turns this into MiningError
                log.exception("pipeline stage %s failed", threading.current_thread().name)
                self._events.put(exc)

        return run

    def _live(self, job: _Job) -> bool:
        return self._epochs.get(job.tp) == job.epoch

    def _get(self, q: queue.Queue[_T], timeout: float = _TICK_S) -> _T | None:
        try:
            return q.get(timeout=timeout)
        except queue.Empty:
            return None

    def _put(self, q: queue.Queue[_T], item: _T) -> bool:
        while not self._halt.is_set():
            try:
                q.put(item, timeout=_TICK_S)
                return True
            except queue.Full:
                continue
        return False

    def _done(self, job: _Job) -> None:
        self._events.put(job)

    def _send_dead_letter(self, msg: SourceMessage, job: _Job, reason: str, error: str) -> None:
        def on_done(ok: bool) -> None:
            if ok:
                self.stats.dead_letters += 1
                self._done(job)
            else:
                self._events.put(_DeadLetterFailed(msg, job, reason, error))

        self.dead_letters.send(msg, reason, error, on_done)

    def _target_hw(self) -> tuple[int, int]:
        """The serving engine's input size: decode resizes to it (DCT-scaled JPEG decode + one resize)."""
        h, w = self.engines.current.input_hw
        return int(h), int(w)

    @staticmethod
    def _fit(images: list[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
        """Stack a batch at the engine's input size: the one place frames are resized.

        Decode already targets the serving engine's size, so this only resizes frames decoded just
        before a hot-swap to a model with another input size.
        """
        if all(img.shape[:2] == hw for img in images):
            return np.stack(images)  # [N, H, W, 3]
        return resize_batch(images, hw[0], hw[1])

    def _add_cpu(self, stage: str, start: float) -> None:
        spent = time.thread_time() - start
        with self._cpu_lock:
            self.stats.stage_cpu_s[stage] = self.stats.stage_cpu_s.get(stage, 0.0) + spent

    def _decode_loop(self) -> None:
        # The thread's whole CPU time is the stage's (waiting on a queue costs next to none): read the
        # clock once, not twice a frame (a thread-CPU clock read is a system call, slow on a busy host).
        cpu = time.thread_time()
        try:
            while not self._halt.is_set():
                item = self._get(self._decode_q)
                if item is None:
                    continue
                seq, msg, job = item
                if self._paused and self._decode_q.qsize() <= self._decode_q.maxsize // 2:
                    self._drained.set()  # the poll thread may resume and refill now
                outcome = self._decode_one(msg, job)
                # Exactly one outcome per sequence number reaches the assemble stage (None: nothing to assemble).
                self._put(self._assemble_q, (seq, outcome))
        finally:
            self._add_cpu("decode", cpu)

    def _decode_one(self, msg: SourceMessage, job: _Job) -> FrameWork | tuple[RadarScan, _Job] | None:
        if not self._live(job):
            return None
        limits = self.settings.decode
        try:
            record = decode_event(msg)
            if isinstance(record, RadarScan):
                return record, job
            data = image_bytes(record, self.fetch, limits)
            image = decode_image(data, limits, self._target_hw(), record.encoding, (record.width, record.height))
        except Exception as raw:  # noqa: BLE001 - no message may stop the stage: the unforeseen is poison too
            exc = as_poison(raw)
            # Every dead letter is counted (avminer_dead_letters_total); the log gets a sample.
            seen = self._poison_logged.get(exc.reason, 0)
            self._poison_logged[exc.reason] = seen + 1
            if seen < 10 or seen % 1000 == 0:
                log.warning("poison %s[%d]@%d: %s (%s)%s", msg.topic, msg.partition, msg.offset, exc.reason,
                            exc, " (logging every 1000th from now on)" if seen == 9 else "")
            self._send_dead_letter(msg, job, exc.reason, str(exc))
            return None
        # The event's bytes are not kept: only the image (to store a mined frame as it arrived).
        return FrameWork(job, record, image, data)

    def _assemble_loop(self) -> None:
        src = self.settings.source
        joiner: RadarJoiner[FrameWork, _Job] = RadarJoiner(src.radar_join_window_ms, src.radar_wait_ms)
        batcher: MicroBatcher[FrameWork] = MicroBatcher(self.settings.batcher.max_batch,
                                                        self.settings.batcher.max_wait_ms)
        pending: dict[int, FrameWork | tuple[RadarScan, _Job] | None] = {}  # decoded out of order
        next_seq = 0
        while not self._halt.is_set():
            deadlines = [d for d in (joiner.next_deadline(), batcher.next_deadline()) if d is not None]
            wait = _TICK_S if not deadlines else min(_TICK_S, max(0.0, min(deadlines) - time.monotonic()))
            got = self._get(self._assemble_q, timeout=wait) if wait > 0 else self._get_nowait(self._assemble_q)
            if got is not None:
                pending[got[0]] = got[1]
            while next_seq in pending:
                item = pending.pop(next_seq)
                next_seq += 1
                if isinstance(item, FrameWork):
                    joiner.add_frame(item.frame.vehicle_id, item.frame.timestamp_us, item, item.job.tp)
                elif item is not None:
                    radar_scan, radar_job = item
                    joiner.add_radar(radar_scan, radar_job, radar_job.tp)
            # Flush only once every message fed to decoding has come through here (not merely when this
            # queue is empty for a moment while a decode worker is still busy): a flush releases every
            # frame waiting for radar and drops every buffered scan, so an early one cost frames their
            # radar whenever the source ran out before decoding caught up (the drive log's end).
            flushing = self._flush.is_set() and not pending and next_seq >= self._decode_seq
            joiner.tick(flush=flushing)
            for job in joiner.pop_expired():
                if self._live(job):
                    self._done(job)
            for work, scan in joiner.pop_ready():
                work.radar = scan
                batch = batcher.add(work)
                if batch is not None:
                    self._emit(batch)
            batch = batcher.flush() if flushing else batcher.due()
            if batch is not None:
                self._emit(batch)

    @staticmethod
    def _get_nowait(q: queue.Queue[_T]) -> _T | None:
        try:
            return q.get_nowait()
        except queue.Empty:
            return None

    def _emit(self, batch: list[FrameWork]) -> None:
        live = [w for w in batch if self._live(w.job)]
        self.stats.dropped_revoked += len(batch) - len(live)
        if live:
            self._put(self._engine_q, live)

    def _engine_loop(self) -> None:
        while not self._halt.is_set():
            batch: list[FrameWork] | None = self._get(self._engine_q)
            if batch is None:
                continue
            cpu = time.thread_time()
            # One model per batch: a hot-swap lands between batches, never inside one.
            with self.engines.acquire() as engine:
                images = self._fit([f.image for f in batch], engine.input_hw)
                start = time.perf_counter()
                try:
                    out = engine.infer(images)
                except EngineError as exc:
                    log.warning("engine %s failed on a batch of %d (%s); retrying once",
                                engine.version, len(batch), exc)
                    out = engine.infer(images)
            self.stats.engine_s += time.perf_counter() - start
            self.stats.batches += 1
            self._add_cpu("engine", cpu)
            live = [i for i, f in enumerate(batch) if self._live(f.job)]
            if len(live) < len(batch):  # revoked while at the engine: discard, never commit
                self.stats.dropped_revoked += len(batch) - len(live)
                if not live:
                    continue
                batch = [batch[i] for i in live]
                out = out.take(live)
                images = images[live]
            self._put(self._score_q, _Scored(batch, out, images, engine))

    def _scorer(self, engine: ServingEngine) -> BatchScorer:
        scorer = self._scorers.get(engine.version)
        if scorer is None:
            scorer = self._scorer_for(engine)
            self._scorers = {engine.version: scorer}  # one model at a time; the old one can go
            # Before the first frame this model scored is selected: where its gates measured it weak.
            try:
                self.policy.set_model_quality(engine.bundle.manifest.get("gate_quality"))
            except SelectionError as exc:
                log.warning("model %s: its gate_quality is not used (%s)", engine.version, exc)
                self.policy.set_model_quality(None)
        return scorer

    def _score_loop(self) -> None:
        while not self._halt.is_set():
            item: _Scored | None = self._get(self._score_q)
            if item is None:
                continue
            cpu = time.thread_time()
            frames = [w.frame for w in item.batch]
            scores = self._scorer(item.engine).score(item.out, item.images, frames, [w.radar for w in item.batch])
            self._add_cpu("score", cpu)
            cpu = time.thread_time()
            positions = [Position(w.job.topic, w.job.partition, w.job.offset) for w in item.batch]
            selected = decide(self.policy, frames, scores, positions, item.out.version)
            self._export_selection()
            self._add_cpu("select", cpu)
            cpu = time.thread_time()
            samples = [self._sample(w, sel, s) for w, sel, s in zip(item.batch, selected, scores, strict=True)]
            self._add_cpu("sample", cpu)
            if self.on_decided is not None:
                self.on_decided([
                    DecidedFrame(w.frame, img, sel.decision, s, sel.priority, sel.rejected)
                    for w, sel, s, img in zip(item.batch, selected, scores, item.images, strict=True)
                ])
            self._put(self._sink_q, (item.batch, samples))

    def _export_selection(self, every_s: float = 1.0) -> None:
        """Mining rate, target and threshold per slice, from the policy, at most once per ``every_s``."""
        now = time.monotonic()
        if now - self._selection_exported < every_s:
            return
        self._selection_exported = now
        for key, st in self.policy.stats().items():
            MINING_RATE.labels(slice=key).set(st["mined_rate"])
            MINING_TARGET.labels(slice=key).set(st["target_rate"])
            if st["threshold"] is not None and np.isfinite(st["threshold"]):
                SELECTION_THRESHOLD.labels(slice=key, score="priority").set(st["threshold"])

    def _sample(self, w: FrameWork, selected: Selected, s: FrameScore) -> MinedSample:
        from avminer.sinks.base import MinedSample

        d = selected.decision
        sample = MinedSample(decision=d, width=w.frame.width, height=w.frame.height, priority=selected.priority,
                             image_uri=w.frame.image_uri)
        if d.mined:
            if sample.image_uri is None:
                sample.image = w.encoded
                sample.content_type = f"image/{'jpeg' if w.frame.encoding in ('jpeg', 'jpg') else w.frame.encoding}"
            sample.uncertainty_png = uncertainty_png(s.uncertainty_map)
            sample.prediction_png = _png(np.asarray(s.prediction, dtype=np.uint8))
        return sample

    def _sink_loop(self) -> None:
        from avminer.sinks.base import retry_until_available

        def paused(exc: SinkUnavailableError, attempt: int) -> None:
            SINK_ERRORS.labels(sink="writer").inc()

        while not self._halt.is_set():
            item = self._get(self._sink_q)
            if item is None:
                continue
            batch, samples = item
            cpu = time.thread_time()
            try:
                report = retry_until_available(functools.partial(self.writer.write_batch, samples),
                                               stop=self._halt, on_pause=paused)
            except SinkUnavailableError:
                return  # shutting down while a sink is away: nothing committed, replayed later
            self._add_cpu("sink", cpu)
            self.stats.requests_sent += int(report.requests_sent)
            for w, sample in zip(batch, samples, strict=True):
                d = sample.decision
                DECISIONS.labels(slice=d.slice, mined=str(d.mined).lower()).inc()
                self.stats.decisions += 1
                if d.mined:
                    self.stats.mined += 1
                    for reason in d.reasons:
                        MINED.labels(slice=d.slice, reason=reason).inc()
                        self.stats.mined_by_reason[reason] = self.stats.mined_by_reason.get(reason, 0) + 1
                self._done(w.job)


def _renice_current_thread(increment: int) -> None:
    """Lower this thread's CPU priority (Linux: niceness is per thread). Best effort elsewhere.

    The engine's intra-op threads synchronise at every layer, so a plumbing thread that preempts one
    of them stalls all of them; at a higher niceness the plumbing runs in the engine's gaps instead.
    """
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except (AttributeError, OSError) as exc:
        log.debug("cannot renice stage thread: %s", exc)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def uncertainty_png(umap: np.ndarray) -> bytes:
    """A per-pixel uncertainty map as an 8-bit grey PNG, scaled to its own maximum (a picture for labelers)."""
    m = np.asarray(umap, dtype=np.float32)  # [H, W]
    top = float(m.max()) if m.size else 0.0
    scaled = np.zeros(m.shape, np.uint8) if top <= 0 else np.clip(m / top * 255.0, 0, 255).astype(np.uint8)
    return _png(scaled)


def default_scorer_factory(settings: Settings) -> Callable[[ServingEngine], BatchScorer]:
    """Build a :class:`~avminer.scoring.scorer.Scorer` from an engine's bundle (classes, reference stats)."""

    def build(engine: ServingEngine) -> BatchScorer:
        from avminer.mining.score_metrics import export_scores
        from avminer.scoring.scorer import Scorer
        from avminer.scoring.shift import ShiftReference

        bundle = engine.bundle
        wanted = HeadSpec.from_settings(settings.scoring, bundle.classes)
        if engine.head != wanted:
            # The pooling runs in the model graph, fixed when the bundle was exported.
            log.warning("model %s pools scores with %s, not the configured %s; the bundle's head is used "
                        "(re-export it with tools/reexport_bundle.py to change)", bundle.version, engine.head, wanted)
        ref_path = bundle.reference_path
        reference = ShiftReference.load(ref_path) if ref_path is not None else None
        return Scorer(settings.scoring, list(bundle.classes), reference, observer=export_scores)

    return build

