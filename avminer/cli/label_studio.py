"""``avminer label push | pull | ml-backend``: a live Label Studio in the loop.

    avminer label push                     # mined frames -> tasks (+ brush pre-annotations, scores)
    avminer label pull [--every 60]        # finished annotations -> LabelResults (validated like all labels)
    avminer label ml-backend --connect     # serve pre-annotations + uncertainty; annotation events -> labels

The server and token come from ``labelstudio.url`` / ``labelstudio.token`` (``AVMINER_LABELSTUDIO__URL``,
``AVMINER_LABELSTUDIO__TOKEN``: a personal access token from Account & Settings, or a legacy token),
the project from ``labelstudio.project`` (created on first push, with the labeling config generated
from the model's classes). Frames: ``s3://`` URIs become presigned URLs (``labelstudio.presign_s``),
``file://`` URIs become Label Studio local-files URLs under ``labelstudio.local_files_root`` (its
``LOCAL_FILES_DOCUMENT_ROOT``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(ls: Any) -> None:
    push = ls.add_parser("push", help="push mined frames to a Label Studio project (idempotent by sample id)")
    push.add_argument("--project", help="project title (default: labelstudio.project)")
    push.add_argument("--state", action="append", default=[],
                      help="only samples in this state (repeatable; default: requested)")
    push.add_argument("--slice", action="append", default=[], help="slice pattern (repeatable)")
    push.add_argument("--limit", type=int, help="at most this many frames (newest first)")
    push.set_defaults(func=_push)

    pull = ls.add_parser("pull", help="pull finished Label Studio annotations back as labels")
    pull.add_argument("--project", help="project title (default: labelstudio.project)")
    pull.add_argument("--every", type=float, metavar="SECONDS", help="keep polling at this interval until stopped")
    pull.set_defaults(func=_pull)

    ml = ls.add_parser("ml-backend", help="serve Label Studio's ML-backend protocol from the current release")
    ml.add_argument("--connect", action="store_true",
                    help="also connect this backend to the project (labelstudio.project)")
    ml.add_argument("--project", help="project title for --connect (default: labelstudio.project)")
    ml.add_argument("--public-url", help="URL Label Studio reaches this backend at (default: the bound address)")
    ml.set_defaults(func=_ml_backend)


def _settings(args: argparse.Namespace) -> Any:
    from avminer.config import load_settings

    return load_settings(args.config)


def _client(settings: Any) -> Any:
    from avminer.errors import ConfigError
    from avminer.labels.labelstudio_api import LabelStudioClient

    ls = settings.labelstudio
    if not ls.url:
        raise ConfigError("not set: the Label Studio base URL (AVMINER_LABELSTUDIO__URL)", "labelstudio.url")
    if ls.token is None:
        raise ConfigError("not set: a personal access token (AVMINER_LABELSTUDIO__TOKEN)", "labelstudio.token")
    return LabelStudioClient(ls.url, ls.token.get())


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _image_urls(settings: Any, client: Any, project_id: int) -> Any:
    """Frame URI -> URL: presigned for S3, Label Studio local files (storage registered) for file://."""
    from avminer.labels.labelstudio import ImageUrls
    from avminer.labels.labelstudio_api import ensure_local_storage

    presign = None
    if settings.sinks.s3.endpoint_url:
        from avminer.storage.s3 import S3FrameStore

        store = S3FrameStore.from_settings(settings.sinks.s3, create_bucket=False)
        ttl = settings.labelstudio.presign_s
        presign = lambda uri: store.presign(uri, ttl)  # noqa: E731
    root = settings.labelstudio.local_files_root
    if root and not settings.sinks.s3.endpoint_url:
        ensure_local_storage(client, project_id, Path(settings.sinks.output_dir).expanduser())
    return ImageUrls(presign, Path(root) if root else None)


def _push(args: argparse.Namespace) -> int:
    from avminer.cli.catalog import open_from_args
    from avminer.labels.labelstudio_api import ensure_project, push_samples
    from avminer.storage import open_reader

    settings = _settings(args)
    client = _client(settings)
    pid = ensure_project(client, args.project or settings.labelstudio.project)
    urls = _image_urls(settings, client, pid)
    with open_from_args(args) as catalog:
        samples = catalog.query_samples(slices=args.slice, states=args.state or ["requested"], limit=args.limit)
        stats = push_samples(client, pid, samples, open_reader(settings), urls)
    print(json.dumps({"project": pid, **stats.to_dict()}, sort_keys=True))
    return 0


def _pull(args: argparse.Namespace) -> int:
    import sys

    from avminer.cli.catalog import open_from_args
    from avminer.labels.consumer import LabelApplier
    from avminer.labels.deliver import deliver
    from avminer.labels.labelstudio_api import ensure_project, pull_results
    from avminer.storage import open_frame_store

    settings = _settings(args)
    client = _client(settings)
    pid = ensure_project(client, args.project or settings.labelstudio.project)
    stop = _stop_on_signals() if args.every else None
    totals = {"new": 0, "already_applied": 0, "published": 0, "applied": 0, "refused": 0, "problems": 0}
    with open_from_args(args) as catalog:
        applier = None if settings.kafka.bootstrap_servers else LabelApplier(catalog, open_frame_store(settings))
        while True:
            pulled = pull_results(client, pid, catalog)
            for line in pulled.problems:
                print(f"skipped: {line}", file=sys.stderr)
            stats = deliver(settings, pulled.results, applier)
            for line in stats.refusals:
                print(f"refused {line}", file=sys.stderr)
            for key, value in (("new", len(pulled.results)), ("already_applied", pulled.already_applied),
                               ("published", stats.published), ("applied", stats.applied),
                               ("refused", stats.refused), ("problems", len(pulled.problems))):
                totals[key] = value if key == "already_applied" else totals[key] + value
            if stop is None or stop.wait(args.every):
                break
    print(json.dumps({"project": pid, **totals}, sort_keys=True))
    return 0 if totals["refused"] == 0 else 1


def _ml_backend(args: argparse.Namespace) -> int:
    from avminer.cli.catalog import open_from_args
    from avminer.labels.consumer import LabelApplier
    from avminer.labels.deliver import deliver
    from avminer.labels.labelstudio_api import (
        LabelStudioClient,
        UserEmails,
        connect_ml_backend,
        ensure_project,
    )
    from avminer.labels.ml_backend import EnsemblePredictor, FrameFetcher, MLBackend, MLBackendServer
    from avminer.mining.daemon import ReleaseFollower, open_engines
    from avminer.mining.pipeline import default_scorer_factory
    from avminer.storage import open_frame_store, open_reader

    settings = _settings(args)
    ls = settings.labelstudio
    client = LabelStudioClient(ls.url, ls.token.get()) if ls.url and ls.token is not None else None
    stop = _stop_on_signals()
    holder = open_engines(settings)
    follower = ReleaseFollower(settings, holder).start() if settings.kafka.bootstrap_servers else None
    with open_from_args(args) as catalog:
        applier = None if settings.kafka.bootstrap_servers else LabelApplier(catalog, open_frame_store(settings))
        backend = MLBackend(
            EnsemblePredictor(holder, default_scorer_factory(settings)),
            FrameFetcher(catalog, open_reader(settings), client,
                         allowed_origins=[settings.sinks.s3.endpoint_url or "", ls.url or ""],
                         max_bytes=settings.decode.max_bytes),
            on_results=lambda results: deliver(settings, results, applier),
            decode_limits=settings.decode,
            emails=UserEmails(client) if client is not None else None,
        )
        secret = ls.ml_backend_secret.get() if ls.ml_backend_secret is not None else None
        server = MLBackendServer(backend, ls.ml_backend_address, ls.ml_backend_port, secret)
        server.start()
        url = args.public_url or server.url
        print(json.dumps({"ml_backend": url, "model_version": holder.version}), flush=True)
        try:
            if args.connect:
                if client is None:
                    from avminer.errors import ConfigError

                    raise ConfigError("--connect needs labelstudio.url and labelstudio.token", "labelstudio.url")
                pid = ensure_project(client, args.project or ls.project)
                connect_ml_backend(client, pid, url, secret)
                log.info("connected %s to Label Studio project %d", url, pid)
            stop.wait()
        finally:
            server.shutdown()
            server.server_close()
            if follower is not None:
                follower.stop()
            holder.close()
    return 0
