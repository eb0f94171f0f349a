"""A small HTTP API over the catalog: freeze queries into immutable, versioned datasets.

Routes (JSON in and out)::

    GET  /datasets                      every dataset version (id, version, query, created, count)
    POST /datasets/{id}                 body: a DatasetQuery as JSON; freezes the matching samples into
                                        the NEXT version of {id} (1, 2, ...) and returns it (201)
    GET  /datasets/{id}[?version=N]     a version (latest by default) with its frozen sample list
    GET  /healthz                       {"ok": true}

Versioning: a second POST with the same id creates a new version; a frozen version never changes
(its sample list, and each sample's label URI as it was, are copied at freeze time). The trainer
trains from ``{id}`` at a version, so every model names exactly the data it saw.

Errors are JSON ``{"error": reason}`` with a 4xx status: 400 bad JSON or query, 404 unknown route,
dataset or version, 405 wrong method, 409 nothing matched, 413 body too large; 503 when the catalog
is unavailable. The server binds to loopback by default (``sinks.api_address``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from avminer.catalog.catalog import Catalog, DatasetQuery
from avminer.errors import CatalogError, SinkUnavailableError

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
_DATASET_PATH = re.compile(r"^/datasets/([^/]+)/?$")


class _ApiError(Exception):
    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class DatasetsHandler(BaseHTTPRequestHandler):
    """Request handler; the catalog is on the server (``server.catalog``)."""

    server: DatasetsServer
    protocol_version = "HTTP/1.1"

    # -- plumbing -----------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        log.debug("%s %s", self.address_string(), format % args)

    def _send_json(self, status: HTTPStatus, body: Any) -> None:
        data = json.dumps(body, sort_keys=True).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        try:
            status, body = self._route(method)
        except _ApiError as exc:
            status, body = exc.status, {"error": exc.reason}
        except SinkUnavailableError as exc:
            status, body = HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)}
        except CatalogError as exc:
            status, body = HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        except Exception as exc:  # a bug must not kill the server thread silently
            log.exception("datasets API: %s %s failed", method, self.path)
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(exc).__name__}"}
        self._send_json(status, body)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _read_json(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise _ApiError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from None
        if length > MAX_BODY:
            # Drain nothing: close the connection after the reply instead.
            self.close_connection = True
            raise _ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _ApiError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {exc}") from None

    # -- routes -------------------------------------------------------------------------------------

    def _route(self, method: str) -> tuple[HTTPStatus, Any]:
        url = urlsplit(self.path)
        catalog = self.server.catalog
        if url.path == "/healthz":
            self._only(method, "GET")
            return HTTPStatus.OK, {"ok": True}
        if url.path in ("/datasets", "/datasets/"):
            self._only(method, "GET")
            return HTTPStatus.OK, {"datasets": [d.to_dict() for d in catalog.list_datasets()]}
        m = _DATASET_PATH.match(url.path)
        if not m:
            raise _ApiError(HTTPStatus.NOT_FOUND, f"no route {url.path}; see GET /datasets")
        dataset_id = m.group(1)
        if method == "POST":
            query = DatasetQuery.from_json(self._read_json())
            try:
                ds = catalog.create_dataset(dataset_id, query)
            except CatalogError as exc:
                if "no sample matches" in str(exc):
                    raise _ApiError(HTTPStatus.CONFLICT, str(exc)) from None
                raise
            return HTTPStatus.CREATED, ds.to_dict()
        self._only(method, "GET", "POST")
        params = parse_qs(url.query)
        version: int | None = None
        if "version" in params:
            try:
                version = int(params["version"][-1])
            except ValueError:
                raise _ApiError(HTTPStatus.BAD_REQUEST, "version: must be an integer") from None
            if version < 1:
                raise _ApiError(HTTPStatus.BAD_REQUEST, "version: must be >= 1")
        try:
            ds = catalog.get_dataset(dataset_id, version)
        except CatalogError as exc:
            status = HTTPStatus.NOT_FOUND if "has no" in str(exc) else HTTPStatus.BAD_REQUEST
            raise _ApiError(status, str(exc)) from None
        return HTTPStatus.OK, {**ds.to_dict(), "samples": catalog.dataset_samples(ds.dataset_id, ds.version)}

    @staticmethod
    def _only(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise _ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} not allowed here; use {', '.join(allowed)}")


class DatasetsServer(ThreadingHTTPServer):
    """The datasets API server bound to ``(host, port)`` (port 0: any free port)."""

    daemon_threads = True

    def __init__(self, catalog: Catalog, host: str = "127.0.0.1", port: int = 0) -> None:
        self.catalog = catalog
        super().__init__((host, port), DatasetsHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> threading.Thread:
        """Serve in a daemon thread; stop with :meth:`shutdown` then :meth:`server_close`."""
        thread = threading.Thread(target=self.serve_forever, name="datasets-api", daemon=True)
        thread.start()
        return thread
