"""``avminer catalog``: ask the provenance catalog what was mined, why, and what trained which model.

Examples::

    avminer catalog mined --slice 'dusk/*/*' --since 1h      # what did we mine at dusk last hour, and why
    avminer catalog trained-on v7                             # which labels trained model v7
    avminer catalog stats
    avminer catalog runs
    avminer catalog show SAMPLE_ID
    avminer catalog freeze dusk --query '{"slices": ["dusk/*/*"]}'   # the next version of dataset 'dusk'
    avminer catalog datasets                                  # frozen dataset versions
    avminer catalog serve                                     # the datasets HTTP API
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from avminer.cli.argtypes import POSITIVE


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("catalog", help="query the provenance catalog")
    add_catalog_argument(parser)
    cs = parser.add_subparsers(dest="catalog_cmd", metavar="QUERY")
    cs.required = True

    mined = cs.add_parser("mined", help="mined samples with their slice, reasons and scores")
    mined.add_argument("--slice", action="append", default=[], help="slice pattern, e.g. 'dusk/*/*' (repeatable)")
    mined.add_argument("--since", help="frames at or after: '1h', '30m', ISO-8601 or microseconds")
    mined.add_argument("--until", help="frames before (same forms as --since)")
    mined.add_argument("--reason", help="only samples mined for this reason (uncertainty, shift, radar, novelty)")
    mined.add_argument("--state", action="append", default=[], help="mined, requested, labeled or used (repeatable)")
    mined.add_argument("--limit", type=POSITIVE, default=100, help="at most this many rows (default 100)")
    mined.add_argument("--json", action="store_true", help="print one JSON object")
    mined.set_defaults(func=_mined)

    trained = cs.add_parser("trained-on", help="the labels that trained a model version")
    trained.add_argument("model_version")
    trained.add_argument("--json", action="store_true", help="print one JSON object")
    trained.set_defaults(func=_trained_on)

    stats = cs.add_parser("stats", help="counts by state, slice and reason")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=_stats)

    runs = cs.add_parser("runs", help="training runs and the dataset versions they used")
    runs.add_argument("--json", action="store_true", help="print one JSON object")
    runs.set_defaults(func=_runs)

    show = cs.add_parser("show", help="everything the catalog knows about one sample")
    show.add_argument("sample_id")
    show.set_defaults(func=_show)

    from avminer.cli.catalog_datasets import add_actions

    add_actions(cs)


def add_catalog_argument(parser: argparse.ArgumentParser) -> None:
    """``--catalog URL``, read back by :func:`open_from_args`."""
    parser.add_argument("--catalog", help="catalog URL (sqlite:///path or postgresql://...); default from settings")


def open_from_args(args: argparse.Namespace) -> Any:
    """The catalog named by ``--catalog``, else by the settings (shared by the label/export commands)."""
    from avminer.catalog import default_catalog_url
    from avminer.catalog.catalog import open_catalog
    from avminer.config import load_settings

    url = getattr(args, "catalog", None) or default_catalog_url(load_settings(args.config))
    return open_catalog(url, create=False)


def _when(us: int | None) -> str:
    if us is None:
        return "-"
    return datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _mined(args: argparse.Namespace) -> int:
    from avminer.catalog.catalog import parse_time_us

    with open_from_args(args) as catalog:
        rows = catalog.query_samples(
            slices=args.slice,
            since_us=parse_time_us(args.since) if args.since else None,
            until_us=parse_time_us(args.until) if args.until else None,
            states=args.state, reason=args.reason, limit=args.limit,
        )
    if args.json:
        print(json.dumps({"count": len(rows), "samples": [r.to_dict() for r in rows]}, sort_keys=True))
        return 0
    print(f"{'time (UTC)':19s}  {'slice':28s} {'state':9s} {'reasons':22s} {'model':10s} scores")
    for r in rows:
        scores = " ".join(f"{k}={v:.3g}" for k, v in sorted(r.scores.items()))
        print(f"{_when(r.timestamp_us):19s}  {r.slice:28s} {r.state:9s} {','.join(r.reasons):22s} "
              f"{r.model_version:10s} {scores}")
    print(f"{len(rows)} sample(s)")
    return 0


def _trained_on(args: argparse.Namespace) -> int:
    with open_from_args(args) as catalog:
        rows = catalog.trained_on(args.model_version)
    if args.json:
        print(json.dumps({"model_version": args.model_version, "count": len(rows), "labels": rows}, sort_keys=True))
        return 0
    for r in rows:
        print(f"{r['run_id']:16s} {r['dataset_id']}@v{r['dataset_version']:<3d} {r['sample_id']} "
              f"{r['slice'] or '-':28s} {r['labeler'] or '-':14s} {r['label_uri']}")
    print(f"{len(rows)} label(s) trained {args.model_version}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    with open_from_args(args) as catalog:
        stats = catalog.stats()
    if args.json:
        print(json.dumps(stats, sort_keys=True))
        return 0
    print(f"samples: {stats['samples']}  " + "  ".join(f"{k}: {v}" for k, v in stats["by_state"].items()))
    print(f"datasets: {stats['datasets']} ({stats['dataset_versions']} versions)  "
          f"training runs: {stats['training_runs']}")
    print("by reason: " + ("  ".join(f"{k}: {v}" for k, v in stats["by_reason"].items()) or "-"))
    for slice_key, states in stats["by_slice"].items():
        print(f"  {slice_key:32s} " + "  ".join(f"{k}: {v}" for k, v in states.items()))
    return 0


def _runs(args: argparse.Namespace) -> int:
    with open_from_args(args) as catalog:
        runs = catalog.training_runs()
    if args.json:
        print(json.dumps({"runs": runs}, sort_keys=True))
        return 0
    for r in runs:
        print(f"{r['run_id']:20s} model={r['model_version'] or '-':10s} "
              f"dataset={r['dataset_id']}@v{r['dataset_version']} started={_when(r['started_at_us'])}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from avminer.errors import CatalogError

    with open_from_args(args) as catalog:
        row = catalog.get_sample(args.sample_id)
    if row is None:
        raise CatalogError(f"sample {args.sample_id!r} is not in the catalog")
    print(json.dumps(row.to_dict(), indent=2, sort_keys=True))
    return 0
