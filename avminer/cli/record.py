"""``avminer record``: consume camera and radar topics into a drive log.

Reads every partition of the given topics directly (no consumer group, nothing committed), from the
earliest offset by default, and stops after ``--max-messages`` messages, after ``--idle-timeout``
seconds without a message, or on Ctrl-C; then writes the drive log. Records are sorted by capture
time before writing (a stable sort: a partition whose records arrive in time order keeps its order),
so the whole recording is held in memory: bound it with ``--max-messages``. Messages that are not
CameraFrame or RadarScan events, or do not decode, are counted and skipped.

Connection and security settings come from the settings (``kafka.*``); ``--bootstrap`` overrides
``kafka.bootstrap_servers``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "record", help="record Kafka camera/radar topics into a drive log",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bootstrap", metavar="HOST:PORT", help="brokers (default: kafka.bootstrap_servers)")
    parser.add_argument("--topics", nargs="+", metavar="T",
                        help="topics to record (default: topics.frames and topics.radar)")
    parser.add_argument("--out", required=True, metavar="LOG", help="drive log to write (.avro)")
    parser.add_argument("--max-messages", type=int, metavar="N", help="stop after N messages")
    parser.add_argument("--idle-timeout", type=float, default=10.0, metavar="S",
                        help="stop after S seconds without a message (default 10)")
    parser.add_argument("--from", dest="start", choices=["earliest", "latest"], default="earliest",
                        help="start at the earliest offsets (default) or only record new messages")
    parser.add_argument("--drive", help="drive name for the log header (default: the file name)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_record)


def _record(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError
    from tqdm import tqdm

    from avminer.cli.replay import client_kwargs, kafka_settings
    from avminer.errors import ConfigError, EventDecodeError, SourceError
    from avminer.events import codec
    from avminer.events.drivelog import DriveLogWriter
    from avminer.events.records import CameraFrame, RadarScan

    if args.max_messages is not None and args.max_messages < 1:
        raise ConfigError(f"must be >= 1, got {args.max_messages}", "--max-messages")
    if args.idle_timeout <= 0:
        raise ConfigError(f"must be > 0, got {args.idle_timeout}", "--idle-timeout")
    settings = kafka_settings(args)
    topics = args.topics or [settings.topics.frames, settings.topics.radar]
    try:
        consumer = KafkaConsumer(
            **client_kwargs(settings, KafkaConsumer), group_id=None, enable_auto_commit=False,
            auto_offset_reset=args.start,
        )
    except KafkaError as exc:
        raise SourceError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}") from exc
    events: list[tuple[int, int, CameraFrame | RadarScan]] = []  # (timestamp, arrival, record)
    consumed = skipped_other = undecodable = 0
    try:
        partitions = []
        for topic in topics:
            ids = consumer.partitions_for_topic(topic)
            if not ids:
                raise SourceError(f"topic {topic} does not exist (or has no partitions) on "
                                  f"{settings.kafka.bootstrap_servers}")
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(partitions)
        if args.start == "earliest":
            consumer.seek_to_beginning(*partitions)
        else:
            consumer.seek_to_end(*partitions)
        last_message = time.monotonic()
        with tqdm(total=args.max_messages, unit="msg", file=sys.stderr, disable=args.no_progress or None) as bar:
            while args.max_messages is None or consumed < args.max_messages:
                try:
                    batches = consumer.poll(timeout_ms=500)
                except KafkaError as exc:
                    raise SourceError(f"consuming {', '.join(topics)} failed: {exc}") from exc
                except KeyboardInterrupt:
                    print("interrupted: writing what was recorded", file=sys.stderr)
                    break
                if not batches:
                    if time.monotonic() - last_message > args.idle_timeout:
                        break
                    continue
                last_message = time.monotonic()
                for messages in batches.values():
                    for message in messages:
                        if args.max_messages is not None and consumed >= args.max_messages:
                            break
                        consumed += 1
                        bar.update(1)
                        try:
                            record = codec.decode(message.value or b"")
                        except EventDecodeError as exc:
                            undecodable += 1
                            if undecodable == 1:
                                log.warning("skipping undecodable message %s[%d]@%d: %s", message.topic,
                                            message.partition, message.offset, exc)
                            continue
                        if isinstance(record, (CameraFrame, RadarScan)):
                            events.append((record.timestamp_us, len(events), record))
                        else:
                            skipped_other += 1
    finally:
        consumer.close()
    events.sort(key=lambda e: (e[0], e[1]))
    with DriveLogWriter(args.out, drive=args.drive, source=f"kafka:{','.join(topics)}") as writer:
        for _, _, record in events:
            writer.write(record)
    print(f"recorded {consumed} messages from {', '.join(topics)} into {args.out}: {writer.frames} frames, "
          f"{writer.radar_scans} radar scans; skipped {skipped_other} other events, {undecodable} undecodable")
    return 0
