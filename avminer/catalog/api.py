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

Errors are JSON ``{"error": reason}`` with a 4xx status: 400 bad JSON or query, 401 missing or
wrong token, 403 a foreign Origin, 404 unknown route, dataset or version, 405 wrong method, 409
nothing matched, 411 a body without Content-Length (chunked), 413 body too large, 415 a POST body
that is not JSON, 421 a Host header naming another server; 503 when the catalog is unavailable or
the server is at its connection limit.

Exposure: the server binds to loopback by default (``sinks.api_address``). With ``sinks.api_token``
set every route but ``/healthz`` needs ``Authorization: Bearer <token>``; binding anywhere else than
loopback without a token is refused. On loopback the Host header must name loopback (or one of
``sinks.api_allowed_hosts``) and a browser's Origin must be the server itself: a web page cannot
reach the API through DNS rebinding or a cross-site form. Every connection has a socket timeout, so
half-sent requests cannot hold threads, and at most ``MAX_CONNECTIONS`` are served at once.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from avminer.catalog.catalog import Catalog, DatasetQuery
from avminer.errors import CatalogError, ConfigError, SinkUnavailableError
from avminer.utils.httpserver import BoundedHTTPServer, JsonHandler, is_loopback

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
MAX_VERSION = 2**31 - 1
_DATASET_PATH = re.compile(r"^/datasets/([^/]+)/?$")


class _ApiError(Exception):
    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class DatasetsHandler(JsonHandler):
    """Request handler; the catalog is on the server (``server.catalog``)."""

    server: DatasetsServer

    # -- plumbing -----------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        try:
            self._check_exposure()
            status, body = self._route(method)
        except _ApiError as exc:
            status, body = exc.status, {"error": exc.reason}
        except (TimeoutError, ConnectionError):  # the client stalled or left mid-body: nobody to answer
            self.close_connection = True
            return
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

    def _check_exposure(self) -> None:
        """Host, Origin and token checks, before any route runs."""
        server = self.server
        host = (self.headers.get("Host") or "").strip().lower()
        if server.check_host and _host_name(host) not in server.allowed_hosts:
            self.close_connection = True
            raise _ApiError(HTTPStatus.MISDIRECTED_REQUEST, f"Host {host[:100]!r} is not this server; use "
                            "127.0.0.1 or localhost (or list the name in sinks.api_allowed_hosts)")
        origin = self.headers.get("Origin")
        if origin is not None and origin.strip().lower() not in (f"http://{host}", f"https://{host}"):
            raise _ApiError(HTTPStatus.FORBIDDEN, "cross-origin requests are refused")
        if server.token is not None and urlsplit(self.path).path != "/healthz":
            given = self.headers.get("Authorization") or ""
            if not hmac.compare_digest(given.encode(), f"Bearer {server.token}".encode()):
                raise _ApiError(HTTPStatus.UNAUTHORIZED, "missing or wrong token: send 'Authorization: Bearer "
                                "<sinks.api_token>'")

    def _read_json(self) -> Any:
        if self.headers.get("Transfer-Encoding") is not None:
            # Bodies are small JSON documents: a Content-Length is required rather than chunked decoding.
            self.close_connection = True
            raise _ApiError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()
        if ctype != "application/json":
            self.close_connection = True
            raise _ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "the body must be application/json")
        text = (self.headers.get("Content-Length") or "0").strip()
        if not text.isdigit():  # also refuses "-1", "+5" and "1e3": the length must be exact
            self.close_connection = True
            raise _ApiError(HTTPStatus.BAD_REQUEST, "Content-Length must be a non-negative integer")
        length = int(text)
        if length > MAX_BODY:
            # Drain nothing: close the connection after the reply instead.
            self.close_connection = True
            raise _ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b"{}"
        if len(raw) < length:
            self.close_connection = True
            raise _ApiError(HTTPStatus.BAD_REQUEST, f"body ended after {len(raw)} of {length} bytes")
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise _ApiError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {str(exc)[:200]}") from None

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
            if not 1 <= version <= MAX_VERSION:
                raise _ApiError(HTTPStatus.BAD_REQUEST, f"version: must be in 1..{MAX_VERSION}")
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


def _host_name(host: str) -> str:
    """The name part of a Host header (``[::1]:8710`` -> ``::1``, ``localhost:80`` -> ``localhost``)."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class DatasetsServer(BoundedHTTPServer):
    """The datasets API server bound to ``(host, port)`` (port 0: any free port).

    Args:
        catalog: the catalog served.
        host, port: where to listen.
        token: required as ``Authorization: Bearer <token>`` when set; mandatory off loopback.
        allowed_hosts: more Host header names accepted on loopback (a reverse proxy's name).

    Raises:
        ConfigError: a non-loopback address without a token.
    """

    name = "datasets-api"

    def __init__(self, catalog: Catalog, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 allowed_hosts: Sequence[str] = ()) -> None:
        if not is_loopback(host) and not token:
            raise ConfigError(f"serving on {host}, beyond loopback, needs a token; set it (AVMINER_SINKS__API_TOKEN)",
                              "sinks.api_token")
        self.catalog = catalog
        self.token = token or None
        # Behind loopback the Host header is the only thing telling a DNS-rebound browser page apart.
        self.check_host = is_loopback(host)
        self.allowed_hosts = {"localhost", "127.0.0.1", "::1", *(h.lower() for h in allowed_hosts)}
        super().__init__((host, port), DatasetsHandler)

