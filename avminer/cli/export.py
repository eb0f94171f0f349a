"""``avminer export labelstudio|cvat``: mined frames for a labeling tool, pre-annotated.

    avminer export labelstudio --out tasks.json --config-out label_config.xml [--state requested]
    avminer export cvat --out DIR [--state requested]     (DIR/images/ + DIR/annotations.zip)

Import ``tasks.json`` into a project whose labeling configuration is ``label_config.xml``. Frame URLs:
``s3://`` URIs stay as they are (give the project an S3 source storage on the bucket) unless
``--presign`` makes presigned HTTP URLs; ``file://`` URIs become ``/data/local-files/?d=...`` paths
under ``--local-files-root`` (Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from avminer.cli.argtypes import POSITIVE
from avminer.cli.catalog import add_catalog_argument


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("export", help="export mined frames to labeling tools")
    es = parser.add_subparsers(dest="export_cmd", metavar="TOOL")
    es.required = True
    ls = es.add_parser("labelstudio", help="Label Studio import file (tasks + brush pre-annotations)")
    ls.add_argument("--out", required=True, help="tasks JSON file to write")
    ls.add_argument("--config-out", help="also write the matching labeling configuration (XML)")
    _add_selection(ls)
    ls.add_argument("--presign", type=POSITIVE, metavar="SECONDS", help="presign s3:// frame URLs for this long")
    ls.add_argument("--local-files-root", help="serve file:// frames as /data/local-files/ paths under this dir")
    ls.set_defaults(func=_labelstudio)

    cv = es.add_parser("cvat", help="CVAT task: frames + 'Segmentation mask 1.1' pre-annotations")
    cv.add_argument("--out", required=True, help="directory: images/ for the task, annotations.zip to upload")
    _add_selection(cv)
    cv.set_defaults(func=_cvat)


def _add_selection(parser: argparse.ArgumentParser) -> None:
    add_catalog_argument(parser)
    parser.add_argument("--state", action="append", default=[],
                        help="only samples in this state (repeatable; default: requested)")
    parser.add_argument("--slice", action="append", default=[], help="slice pattern (repeatable)")
    parser.add_argument("--since", help="frames at or after: '1h', ISO-8601 or microseconds")
    parser.add_argument("--limit", type=POSITIVE, help="at most this many frames (newest first)")


def _selected(args: argparse.Namespace, catalog: Any) -> list[Any]:
    from avminer.catalog.catalog import parse_time_us

    return list(catalog.query_samples(
        slices=args.slice, since_us=parse_time_us(args.since) if args.since else None,
        states=args.state or ["requested"], limit=args.limit,
    ))


def _local_dirs(catalog: Any) -> list[Path]:
    """Where a catalog's own ``file://`` blobs may lie: beside a SQLite catalog (its output directory)."""
    if catalog.is_postgres or not catalog.url.startswith("sqlite:///"):
        return []
    return [Path(catalog.url[len("sqlite:///"):]).expanduser().resolve().parent]


def _cvat(args: argparse.Namespace) -> int:
    from avminer.cli.catalog import open_from_args
    from avminer.config import load_settings
    from avminer.labels.cvat import export_task
    from avminer.storage import open_reader

    settings = load_settings(args.config)
    with open_from_args(args) as catalog:
        done = export_task(_selected(args, catalog), open_reader(settings, _local_dirs(catalog)), args.out)
    print(f"wrote {len(done.images)} frame(s) to {Path(args.out) / 'images'} and {done.pre_annotated} "
          f"pre-annotation(s) to {done.annotations}: create a CVAT task from the images, then upload the zip "
          "as annotations in the 'Segmentation mask 1.1' format")
    return 0


def _labelstudio(args: argparse.Namespace) -> int:
    from avminer.cli.catalog import open_from_args
    from avminer.config import load_settings
    from avminer.labels.labelstudio import ImageUrls, export_tasks, label_config
    from avminer.storage import open_reader

    settings = load_settings(args.config)
    presign = None
    if args.presign:
        from avminer.storage.s3 import S3FrameStore

        store = S3FrameStore.from_settings(settings.sinks.s3, create_bucket=False)
        ttl = int(args.presign)
        presign = lambda uri: store.presign(uri, ttl)  # noqa: E731
    urls = ImageUrls(presign, Path(args.local_files_root) if args.local_files_root else None)
    with open_from_args(args) as catalog:
        tasks = export_tasks(_selected(args, catalog), open_reader(settings, _local_dirs(catalog)), urls)
    Path(args.out).write_text(json.dumps(tasks))
    if args.config_out:
        Path(args.config_out).write_text(label_config())
    with_pred = sum(1 for t in tasks if t.get("predictions"))
    print(f"wrote {len(tasks)} task(s) ({with_pred} pre-annotated) to {args.out}")
    return 0
