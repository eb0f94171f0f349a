"""``avminer catalog freeze|datasets|serve``: versioned datasets frozen from the catalog, and their HTTP API.

Part of ``avminer catalog`` (:mod:`avminer.cli.catalog` adds these actions; this module has no
``register`` of its own): a frozen dataset is a query over the catalog, so it lives where the catalog's
other questions do.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from typing import Any

from avminer.cli.argtypes import PORT

log = logging.getLogger(__name__)


def add_actions(ds: Any) -> None:
    """Add ``freeze``, ``datasets`` and ``serve`` to the ``avminer catalog`` actions ``ds``."""
    serve = ds.add_parser("serve", help="serve the frozen datasets over HTTP (GET/POST /datasets)")
    serve.add_argument("--host", help="bind address (default sinks.api_address, loopback)")
    serve.add_argument("--port", type=PORT, help="port (default sinks.api_port)")
    serve.set_defaults(func=_serve)

    freeze = ds.add_parser("freeze", help="freeze a query into the next version of a dataset")
    freeze.add_argument("dataset_id")
    freeze.add_argument("--query", default="{}", help='JSON query, e.g. \'{"slices": ["dusk/*/*"], "start": "7d"}\'')
    freeze.set_defaults(func=_freeze)

    show = ds.add_parser("datasets", help="list the frozen dataset versions")
    show.set_defaults(func=_list)


def _serve(args: argparse.Namespace) -> int:
    from avminer.catalog.api import DatasetsServer
    from avminer.cli.catalog import open_from_args
    from avminer.config import load_settings, mask_url

    settings = load_settings(args.config)
    host = args.host or settings.sinks.api_address
    port = settings.sinks.api_port if args.port is None else args.port
    with open_from_args(args) as catalog:
        token = settings.sinks.api_token.get() if settings.sinks.api_token is not None else None
        server = DatasetsServer(catalog, host, port, token=token, allowed_hosts=settings.sinks.api_allowed_hosts)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        server.start()
        log.info("datasets API on %s (catalog %s)", server.url, mask_url(catalog.url))
        print(f"serving {server.url}", flush=True)
        stop.wait()
        server.shutdown()
        server.server_close()
    return 0


def _freeze(args: argparse.Namespace) -> int:
    from avminer.catalog.catalog import DatasetQuery
    from avminer.cli.catalog import open_from_args
    from avminer.errors import CatalogError

    try:
        data = json.loads(args.query)
    except ValueError as exc:
        raise CatalogError(f"--query is not valid JSON: {exc}") from exc
    with open_from_args(args) as catalog:
        ds = catalog.create_dataset(args.dataset_id, DatasetQuery.from_json(data))
    print(json.dumps(ds.to_dict(), sort_keys=True))
    return 0


def _list(args: argparse.Namespace) -> int:
    from avminer.cli.catalog import open_from_args

    with open_from_args(args) as catalog:
        for ds in catalog.list_datasets():
            print(json.dumps(ds.to_dict(), sort_keys=True))
    return 0
