"""``avminer label``: labels back into the catalog.

    avminer label consume                          # validate LabelResults, mark samples labeled (DLQ the rest)
    avminer label oracle --ground-truth drive.avro # answer label requests from the drive's ground truth
    avminer label import-labelstudio export.json   # Label Studio JSON export -> LabelResults
    avminer label push | pull | ml-backend         # a live Label Studio (labelstudio.url, labelstudio.token)

With a broker (``kafka.bootstrap_servers``) the oracle and the importer publish LabelResults to
``topics.label_results`` for ``label consume``; embedded, they apply them to the catalog directly.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from typing import Any

from avminer.cli.catalog import add_catalog_argument


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("label", help="labels back: consumer, oracle, importers")
    add_catalog_argument(parser)
    ls = parser.add_subparsers(dest="label_cmd", metavar="ACTION")
    ls.required = True

    consume = ls.add_parser("consume", help="consume LabelResults: validate, store, mark labeled")
    consume.add_argument("--group", default="avminer-labels", help="consumer group")
    consume.add_argument("--max", type=int, help="stop after this many results")
    consume.add_argument("--idle-timeout", type=float, help="stop after this many seconds without results")
    consume.set_defaults(func=_consume)

    oracle = ls.add_parser("oracle", help="answer label requests from a drive log's ground truth")
    oracle.add_argument("--ground-truth", required=True, help="<stem>.gt.avro or the drive log next to it")
    oracle.add_argument("--group", default="avminer-oracle", help="consumer group (broker mode)")
    oracle.add_argument("--max", type=int, help="stop after this many requests (broker mode)")
    oracle.add_argument("--idle-timeout", type=float, help="stop after this many idle seconds (broker mode)")
    oracle.set_defaults(func=_oracle)

    imp = ls.add_parser("import-labelstudio", help="import a Label Studio JSON export (brush masks)")
    imp.add_argument("export", help="the JSON export file")
    imp.set_defaults(func=_import_labelstudio)

    cvat = ls.add_parser("import-cvat", help="import a CVAT 'Segmentation mask 1.1' export (zip)")
    cvat.add_argument("export", help="the zip CVAT exported")
    cvat.add_argument("--labeler", default="cvat", help="labeler recorded with each label (default: cvat)")
    cvat.set_defaults(func=_import_cvat)

    from avminer.cli import label_studio

    label_studio.register(ls)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _applier(args: argparse.Namespace, catalog: Any) -> Any:
    from avminer.config import load_settings
    from avminer.labels.consumer import LabelApplier
    from avminer.storage import open_frame_store

    settings = load_settings(args.config)
    return settings, LabelApplier(catalog, open_frame_store(settings))


def _consume(args: argparse.Namespace) -> int:
    from avminer.cli.catalog import open_from_args
    from avminer.labels.consumer import LabelResultConsumer

    with open_from_args(args) as catalog:
        settings, applier = _applier(args, catalog)
        consumer = LabelResultConsumer(settings, applier, group_id=args.group)
        try:
            stats = consumer.run(_stop_on_signals(), max_messages=args.max, idle_timeout_s=args.idle_timeout)
        finally:
            consumer.close()
    print(json.dumps({"ok": stats.ok, "invalid": stats.invalid, "reasons": stats.reasons}, sort_keys=True))
    return 0


def _oracle(args: argparse.Namespace) -> int:
    from avminer.cli.catalog import open_from_args
    from avminer.config import load_settings
    from avminer.labels.oracle import OracleLabeler, run_oracle_kafka, run_oracle_local

    settings = load_settings(args.config)
    oracle = OracleLabeler.from_file(args.ground_truth)
    if settings.kafka.bootstrap_servers:
        stats = run_oracle_kafka(settings, oracle, group_id=args.group, stop=_stop_on_signals(),
                                 max_messages=args.max, idle_timeout_s=args.idle_timeout)
    else:
        with open_from_args(args) as catalog:
            _, applier = _applier(args, catalog)
            stats = run_oracle_local(settings.sinks.output_dir, oracle, applier)
    print(json.dumps({"answered": stats.answered, "unknown_frames": stats.unknown_frames,
                      "invalid": stats.invalid}, sort_keys=True))
    return 0


def _import_labelstudio(args: argparse.Namespace) -> int:
    from avminer.labels.labelstudio import results_from_export

    return _import(args, *results_from_export(args.export))


def _import_cvat(args: argparse.Namespace) -> int:
    from avminer.labels.cvat import results_from_zip

    return _import(args, *results_from_zip(args.export, labeler=args.labeler))


def _import(args: argparse.Namespace, results: list[Any], problems: list[str]) -> int:
    """Send imported labels to the label-results topic (broker configured) or apply them to the catalog."""
    import sys

    from avminer.cli.catalog import open_from_args
    from avminer.config import load_settings
    from avminer.labels.deliver import deliver

    settings = load_settings(args.config)
    for line in problems:
        print(f"skipped: {line}", file=sys.stderr)
    if settings.kafka.bootstrap_servers:
        stats = deliver(settings, results)
    else:
        with open_from_args(args) as catalog:
            _, applier = _applier(args, catalog)
            stats = deliver(settings, results, applier)
    for line in stats.refusals:
        print(f"refused {line}", file=sys.stderr)
    print(json.dumps({"imported": stats.published + stats.applied, "refused": stats.refused,
                      "skipped": len(problems)}, sort_keys=True))
    return 0 if stats.refused == 0 else 1
