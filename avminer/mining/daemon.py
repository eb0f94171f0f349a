"""The miner process: builds every part from :class:`~avminer.config.Settings` and runs the pipeline.

Two modes, chosen by whether a broker is configured:

- **Kafka** (``kafka.bootstrap_servers`` set): a consumer-group member on the frames and radar
  topics; label requests and decisions go to their topics, frames to S3 (``sinks.s3.endpoint_url``)
  or the output directory, poison to the dead-letter topic; the catalog (``sinks.catalog_url``, else
  SQLite in the output directory) remembers which label requests were sent, so a replay never sends
  one twice. Model releases are followed on the releases topic and hot-swapped; the per-slice
  quantile sketches are shared over the sketches topic when ``selection.fleet_sketches`` is on.
- **Embedded** (no broker): one drive log (``source.drive_log``, else the bundled sample drive) in;
  frames, ``requests.jsonl``, ``decisions.jsonl``, ``dead-letter/`` and a SQLite catalog out, all
  under ``sinks.output_dir``.

SIGTERM/SIGINT stop polling, drain, commit and close within ``shutdown_deadline_s``; a watchdog ends
the process if closing hangs past it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avminer.config import Settings
from avminer.errors import AvminerError, EngineError, EventDecodeError
from avminer.mining.deadletter import DeadLetterSink, KafkaDeadLetters, LocalDeadLetters
from avminer.mining.pipeline import DecidedFrame, Pipeline, PipelineStats
from avminer.sources.base import Source

log = logging.getLogger(__name__)


def catalog_url(settings: Settings) -> str:
    """``sinks.catalog_url``, else a SQLite file in the output directory (:func:`avminer.sinks.default_catalog_url`)."""
    from avminer.catalog import default_catalog_url

    return default_catalog_url(settings)


def open_engines(settings: Settings) -> Any:
    """An :class:`~avminer.engines.hotswap.EngineHolder` serving ``engine.bundle`` (or the starter bundle)."""
    from avminer.engines import default_bundle_path
    from avminer.engines.hotswap import EngineHolder

    holder = EngineHolder.from_settings(settings)
    bundle = settings.engine.bundle or default_bundle_path()
    result = holder.load(bundle)
    if not result.ok:
        holder.close()
        raise EngineError(f"cannot load model bundle {bundle}: {result.error}; check engine.bundle")
    return holder


@dataclass
class _Parts:
    source: Source
    writer: Any
    dead_letters: DeadLetterSink
    catalog: Any
    closers: list[Callable[[], None]]


def _open_parts(settings: Settings, drive_log: str | Path | None, frames: int | None, repeat: bool) -> _Parts:
    from avminer.catalog.catalog import open_catalog
    from avminer.sinks import open_writer
    from avminer.sinks.registry import Shared

    out = Path(settings.sinks.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    closers: list[Callable[[], None]] = []
    catalog = open_catalog(catalog_url(settings))
    closers.append(catalog.close)
    source: Source
    dead_letters: DeadLetterSink
    if settings.embedded:
        from avminer.datasets import sample_drive_path
        from avminer.sources.drivelog import DriveLogSource

        path = drive_log or settings.source.drive_log or sample_drive_path()
        source = DriveLogSource(path, settings.topics.frames, settings.topics.radar, frames=frames, repeat=repeat)
        writer = open_writer(settings, catalog)
        dead_letters = LocalDeadLetters(out)
    else:
        from avminer.sinks.kafka_topic import make_producer
        from avminer.sources.kafka import KafkaSource
        from avminer.sources.kafka_tls import check_kafka_tls

        # Wrong TLS settings would only show as a client retrying its bootstrap: fail with the reason instead.
        check_kafka_tls(settings.kafka)
        producer = make_producer(settings.kafka)
        closers.append(lambda: producer.close(timeout=5))
        writer = open_writer(settings, catalog, Shared(producer=producer))
        dead_letters = KafkaDeadLetters(settings, producer=producer)
        source = KafkaSource(settings)
    # Closed in reverse: source first (leave the group), then sinks, then the producer and catalog.
    closers += [dead_letters.close, writer.close, source.close]
    return _Parts(source, writer, dead_letters, catalog, closers)


class ReleaseFollower:
    """Follows the releases topic and hot-swaps each new :class:`ModelRelease` into the holder.

    Every miner must see every release, so this is not a group member: it assigns itself every
    partition of the topic, reads it from the beginning (the newest release is the production model
    after a restart) and keeps following it. Its consumer is its own, used only by its own thread.
    """

    def __init__(self, settings: Settings, holder: Any) -> None:
        self.settings = settings
        self.holder = holder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="avminer-releases", daemon=True)
        self.seen: list[str] = []

    def start(self) -> ReleaseFollower:
        self._thread.start()
        return self

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from avminer.events import codec
        from avminer.events.records import ModelRelease

        topic = self.settings.topics.releases
        consumer = KafkaConsumer(**self.settings.kafka.client_kwargs(), group_id=None,
                                 enable_auto_commit=False, auto_offset_reset="earliest")
        try:
            while not self._stop.is_set():
                parts = consumer.partitions_for_topic(topic)
                if parts:
                    consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
                    break
                self._stop.wait(5.0)  # topic not created yet: the trainer has not released anything
            latest: Any = None
            caught_up = False
            while not self._stop.is_set():
                batches = consumer.poll(timeout_ms=1000)
                for records in batches.values():
                    for r in records:
                        try:
                            release = codec.decode_as(r.value, ModelRelease)
                        except EventDecodeError as exc:
                            log.warning("skipping undecodable release at %s[%d]@%d: %s",
                                        r.topic, r.partition, r.offset, exc)
                            continue
                        if latest is None or release.created_at_us >= latest.created_at_us:
                            latest = release
                        if caught_up:
                            self._load(release)
                if not caught_up and not batches:
                    caught_up = True  # the backlog is read: serve its newest release
                    if latest is not None:
                        self._load(latest)
        except Exception:
            log.exception("release follower stopped; the serving model stays")
        finally:
            consumer.close()

    def _load(self, release: Any) -> None:
        if release.version == self.holder.version:
            return
        log.info("model release %s announced; loading it", release.version)
        self.seen.append(release.version)
        self.holder.load_async(release)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


@contextlib.contextmanager
def _signals(stop: threading.Event, deadline_s: float) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop``; a watchdog ends the process if shutdown overruns the deadline."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def watchdog() -> None:
        if not finished.wait(deadline_s):
            log.error("shutdown took longer than shutdown_deadline_s=%.0fs; exiting now", deadline_s)
            os._exit(3)

    def handle(signum: int, _frame: Any) -> None:
        if stop.is_set():
            return
        log.info("%s: stopping (drain, commit, close within %.0fs)", signal.Signals(signum).name, deadline_s)
        stop.set()
        threading.Thread(target=watchdog, name="avminer-shutdown-watchdog", daemon=True).start()

    finished = threading.Event()
    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        finished.set()
        for s, h in previous.items():
            signal.signal(s, h)


def run_miner(
    settings: Settings,
    *,
    engines: Any = None,
    stop: threading.Event | None = None,
    drive_log: str | Path | None = None,
    frames: int | None = None,
    repeat: bool = False,
    on_decided: Callable[[list[DecidedFrame]], None] | None = None,
    handle_signals: bool = True,
    serve_metrics: bool = True,
    policy: Any = None,
) -> PipelineStats:
    """Run a miner until its input ends (embedded) or it is stopped (signal or ``stop``).

    Args:
        settings: the miner's settings.
        engines: an engine holder to use (default: :func:`open_engines`); not closed here if given.
        stop: set it to shut down gracefully (signals set it too).
        drive_log: embedded mode's drive log (overrides ``source.drive_log``).
        frames: embedded mode: stop after this many camera frames.
        repeat: embedded mode: replay the log until ``frames`` frames.
        on_decided: called with every decided batch (the demo's report).
        handle_signals: install SIGTERM/SIGINT handlers (main thread only).
        serve_metrics: start the /metrics endpoint on ``metrics.address:metrics.port``.
        policy: a selection policy to keep using (a backtest's miner lives across rounds and releases);
            default: a new one, the one ``selection.policy`` names.

    Raises:
        MiningError: the pipeline failed for good (offsets of finished work are committed first).
    """
    from avminer.mining.heap import keep_freed_heap
    from avminer.selection.registry import make_policy

    keep_freed_heap(settings.batcher.heap_keep_mb)  # every frame reuses the pages the last one freed
    stop = stop or threading.Event()
    if serve_metrics and settings.metrics.port:
        from avminer.metrics import serve

        try:
            serve(settings.metrics.address, settings.metrics.port)
        except OSError as exc:
            log.warning("metrics endpoint %s:%d not started: %s", settings.metrics.address, settings.metrics.port, exc)
    owns_engines = engines is None
    holder = engines if engines is not None else open_engines(settings)
    follower: ReleaseFollower | None = None
    fleet: Any = None
    parts: _Parts | None = None
    try:
        parts = _open_parts(settings, drive_log, frames, repeat)
        policy = policy if policy is not None else make_policy(settings.selection)
        if not settings.embedded:
            if hasattr(holder, "load_async"):
                follower = ReleaseFollower(settings, holder).start()
            fleet = _start_fleet(settings, policy)
        pipeline = Pipeline(
            settings, parts.source, holder, parts.writer, parts.dead_letters, policy,
            on_decided=on_decided, source_label="drivelog" if settings.embedded else "kafka",
        )
        with _signals(stop, settings.shutdown_deadline_s) if handle_signals else contextlib.nullcontext():
            stats = pipeline.run(stop)
        log.info("mined %d of %d frame(s) (%d dead letters, %d commits) in %.1fs",
                 stats.mined, stats.decisions, stats.dead_letters, stats.commits, stats.wall_s)
        return stats
    finally:
        if follower is not None:
            follower.stop()
        if fleet is not None:
            fleet.stop()
        if parts is not None:
            for close in reversed(parts.closers):
                try:
                    close()
                except Exception as exc:  # close the rest anyway
                    log.warning("closing %s failed: %s", getattr(close, "__qualname__", close), exc)
        if owns_engines:
            holder.close()


def _start_fleet(settings: Settings, policy: Any) -> Any:
    """Share per-slice sketches over Kafka (:mod:`avminer.mining.fleet`) when ``selection.fleet_sketches``."""
    if not settings.selection.fleet_sketches:
        return None
    from avminer.mining.fleet import start_fleet_sync

    try:
        return start_fleet_sync(settings, policy)
    except AvminerError as exc:  # thresholds stay local; mining goes on
        log.warning("fleet sketches disabled: %s", exc)
        return None


__all__ = ["ReleaseFollower", "catalog_url", "open_engines", "run_miner"]
