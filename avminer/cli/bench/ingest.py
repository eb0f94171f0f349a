"""``avminer bench ingest``: Kafka consume rate, kafka-python (with/without crc32c) vs confluent-kafka.

Produces the messages once into a fresh topic, then times each client reading all of them, each in a
fresh process; see :mod:`avminer.evaluation.ingest`. Without ``--bootstrap`` a tansu broker is started
on a free loopback port. confluent-kafka is optional (``pip install 'avminer[bench]'``): without it its
row says so and the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "ingest", help="Kafka consume msgs/s: kafka-python (with/without crc32c) vs confluent-kafka"
    )
    parser.add_argument("--bootstrap", metavar="HOST:PORT",
                        help="Kafka broker to use (a fresh topic is created and deleted); default: start tansu")
    parser.add_argument("--messages", type=int, default=1000, metavar="N", help="messages to read (default 1000)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--message-bytes", type=int, metavar="B",
                      help="synthetic CameraFrame messages of B bytes (random image)")
    size.add_argument("--sample-drive", action="store_true",
                      help="the sample drive's CamVid frames, ~48 KB each, repeated with distinct ids (default)")
    parser.add_argument("--partitions", type=int, default=1, metavar="P", help="topic partitions (default 1)")
    parser.add_argument("--decode", action="store_true",
                        help="also time decoding every message with avminer.events.codec.decode")
    parser.add_argument("--repeats", type=int, default=1, metavar="R",
                        help="measure each client R times, interleaved, and keep the best (default 1)")
    parser.add_argument("--kafka-python", action="append", default=[], metavar="KEY=VALUE",
                        help="a KafkaConsumer setting for the kafka-python rows, e.g. fetch_max_bytes=16777216 "
                             "(repeatable; integers and true/false are converted)")
    parser.add_argument("--clients", metavar="NAMES", default=",".join(_CLIENTS),
                        help="comma-separated variants to run, of " + ", ".join(_CLIENTS) + " (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_run)


_CLIENTS = {"kafka-python": "kafka-python", "no-crc32c": "kafka-python (no crc32c)",
            "avminer": "kafka-python (avminer)", "avminer-recv": "kafka-python (avminer recv)",
            "confluent": "confluent-kafka"}
"""``--clients`` names -> the bench's variants (:mod:`avminer.evaluation.ingest`)."""


def _run(args: argparse.Namespace) -> int:
    from avminer.errors import AvminerError
    from avminer.evaluation.ingest import format_report, run_ingest_bench

    names = [n.strip() for n in args.clients.split(",") if n.strip()]
    unknown = [n for n in names if n not in _CLIENTS]
    if unknown or not names:
        raise AvminerError(f"--clients takes some of {', '.join(_CLIENTS)}, got {args.clients!r}")

    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO lines would bury the table

    report = run_ingest_bench(
        bootstrap=args.bootstrap, messages=args.messages, message_bytes=args.message_bytes,
        partitions=args.partitions, decode=args.decode, repeats=args.repeats,
        clients=tuple(_CLIENTS[n] for n in names), kafka_python_config=_settings(args.kafka_python),
    )
    print(json.dumps(report.to_dict()) if args.json else format_report(report))
    return 0


def _settings(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict: integers and true/false converted, anything else kept as text."""
    from avminer.errors import AvminerError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise AvminerError(f"--kafka-python takes KEY=VALUE, got {pair!r}")
        value: Any = text
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        elif text.strip().lstrip("-").isdigit():
            value = int(text)
        out[key.strip()] = value
    return out
