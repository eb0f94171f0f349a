"""``avminer replay LOG``: publish a drive log's frames and radar scans to Kafka topics.

Each record is encoded with :mod:`avminer.events.codec` and keyed by its vehicle id, so a vehicle's
events stay in one partition, in log (time) order. ``--rate realtime`` keeps the recorded spacing
(gaps longer than ``--max-gap`` seconds, e.g. between a day and a dusk drive, are shortened to it),
``--rate 10x`` plays ten times faster, ``--rate max`` as fast as the broker takes them. Kafka
message timestamps are the send time, not the (possibly years old) capture time, so time-based
retention does not delete a replay at once; the capture time is inside each record.

Nothing is created implicitly: the topics must exist, or ``--create-topics`` creates the missing
ones with ``--partitions`` partitions. Connection and security settings come from the settings
(``kafka.*``: SASL, TLS, ...); ``--bootstrap`` overrides ``kafka.bootstrap_servers``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

DEFAULT_MAX_GAP_S = 5.0


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "replay", help="publish a drive log to Kafka topics (real time, Nx or max rate)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("log", metavar="LOG", help="drive log (.avro)")
    parser.add_argument("--bootstrap", metavar="HOST:PORT", help="brokers (default: kafka.bootstrap_servers)")
    parser.add_argument("--frames-topic", metavar="T", help="camera frames topic (default: topics.frames)")
    parser.add_argument("--radar-topic", metavar="T", help="radar scans topic (default: topics.radar)")
    parser.add_argument("--rate", default="max", metavar="realtime|max|<N>x",
                        help="pace: realtime, <N>x (e.g. 10x, 0.5x) or max (default)")
    parser.add_argument("--max-gap", type=float, default=DEFAULT_MAX_GAP_S, metavar="S",
                        help=f"longest pause in realtime/Nx replay, in log seconds (default {DEFAULT_MAX_GAP_S:g})")
    parser.add_argument("--create-topics", action="store_true", help="create missing topics")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of created topics (default 3)")
    parser.add_argument("--replication-factor", type=int, default=1, help="replication of created topics (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_replay)


def parse_rate(text: str) -> float | None:
    """``max`` -> None (no pacing), ``realtime`` -> 1.0, ``<N>x`` -> N.

    Raises:
        ConfigError: anything else.
    """
    from avminer.errors import ConfigError

    value = text.strip().lower()
    if value == "max":
        return None
    if value == "realtime":
        return 1.0
    if value.endswith("x"):
        try:
            factor = float(value[:-1])
        except ValueError:
            factor = 0.0
        if factor > 0:
            return factor
    raise ConfigError(f"must be realtime, max or <N>x with N > 0 (e.g. 10x), got {text!r}", "--rate")


def kafka_settings(args: argparse.Namespace) -> Any:
    """The settings (``-c`` file, ``AVMINER_*``) with ``--bootstrap`` applied."""
    from avminer.config import load_settings

    overrides = {"kafka": {"bootstrap_servers": args.bootstrap}} if getattr(args, "bootstrap", None) else None
    return load_settings(args.config, overrides=overrides)


def client_kwargs(settings: Any, client: Any) -> dict[str, Any]:
    """``settings.kafka.client_kwargs()`` limited to what the kafka-python ``client`` class accepts.

    ``kafka.extra`` serves every client, but each kafka-python class refuses keys it does not know.
    """
    accepted = client.DEFAULT_CONFIG
    return {k: v for k, v in settings.kafka.client_kwargs().items() if k in accepted}


def ensure_topics(settings: Any, topics: list[str], create: bool, partitions: int, replication: int) -> None:
    """Check the topics exist; create the missing ones when ``create``.

    Raises:
        SinkError: a topic is missing (and not to be created) or cannot be created; broker unreachable.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError

    from avminer.errors import SinkError

    try:
        admin = KafkaAdminClient(**client_kwargs(settings, KafkaAdminClient))
    except KafkaError as exc:
        raise SinkError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}") from exc
    try:
        missing = sorted(set(topics) - set(admin.list_topics()))
        if missing and not create:
            raise SinkError(
                f"topic(s) {', '.join(missing)} do not exist; create them, or pass --create-topics "
                f"[--partitions N] to have replay create them"
            )
        if missing:
            if partitions < 1 or replication < 1:
                raise SinkError("--partitions and --replication-factor must be >= 1")
            admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=replication)
                                 for t in missing])
            print(f"created topic(s) {', '.join(missing)} with {partitions} partitions", file=sys.stderr)
    except KafkaError as exc:
        raise SinkError(f"cannot check or create topics {', '.join(topics)}: {exc}") from exc
    finally:
        admin.close()


def _replay(args: argparse.Namespace) -> int:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError
    from tqdm import tqdm

    from avminer.errors import ConfigError, SinkError
    from avminer.events import codec
    from avminer.events.drivelog import drive_log_info, read_drive_log
    from avminer.events.records import CameraFrame

    speed = parse_rate(args.rate)
    if args.max_gap <= 0:
        raise ConfigError(f"must be > 0, got {args.max_gap}", "--max-gap")
    settings = kafka_settings(args)
    frames_topic = args.frames_topic or settings.topics.frames
    radar_topic = args.radar_topic or settings.topics.radar
    info = drive_log_info(args.log)  # checks the file before touching Kafka; gives the bar its total
    ensure_topics(settings, sorted({frames_topic, radar_topic}), args.create_topics, args.partitions,
                  args.replication_factor)
    try:
        producer = KafkaProducer(**client_kwargs(settings, KafkaProducer), acks="all",
                                 linger_ms=5 if speed is None else 0)
    except KafkaError as exc:
        raise SinkError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}") from exc
    failures: list[BaseException] = []
    sent = {frames_topic: 0, radar_topic: 0}
    started = time.monotonic()
    log_clock = 0.0  # seconds of (gap-shortened) log time since the first record
    previous_us: int | None = None
    try:
        with tqdm(total=info.frames + info.radar_scans, unit="msg", file=sys.stderr,
                  disable=args.no_progress or None) as bar:
            for record in read_drive_log(args.log):
                if speed is not None:
                    if previous_us is not None:
                        log_clock += min(max(0.0, (record.timestamp_us - previous_us) / 1e6), args.max_gap)
                    previous_us = record.timestamp_us
                    delay = started + log_clock / speed - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                topic = frames_topic if isinstance(record, CameraFrame) else radar_topic
                future = producer.send(topic, key=record.vehicle_id.encode(), value=codec.encode(record))
                future.add_errback(failures.append)
                sent[topic] += 1
                bar.update(1)
                if failures:
                    break
        producer.flush()
    finally:
        producer.close()
    if failures:
        raise SinkError(f"replay stopped: {len(failures)} message(s) failed, first: {failures[0]!r}")
    took = time.monotonic() - started
    total = sum(sent.values())
    print(f"replayed {info.path}: {sent[frames_topic]} frames -> {frames_topic}, "
          f"{sent[radar_topic]} radar scans -> {radar_topic} in {took:.1f} s ({total / max(took, 1e-9):.0f} msg/s)")
    return 0
