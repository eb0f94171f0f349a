"""One bounded HTTP server for the small JSON services avminer runs (datasets API, Label Studio ML backend).

Both are standard-library servers facing clients we do not control, so they share the same limits: a
thread per request but at most ``max_connections`` at once (more get an immediate 503 instead of a
thread each), a real listen backlog, a socket timeout on every connection (a half-sent request cannot
hold a thread), and clients that hang up mid-reply are routine, not errors.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
"""Requests served at once; more get an immediate 503 instead of a thread each."""
REQUEST_TIMEOUT_S = 10.0
"""Socket timeout of a connection: a client that stops sending mid-request is dropped after this."""
LISTEN_BACKLOG = 128


def is_loopback(address: str) -> bool:
    """True for loopback addresses and ``localhost``."""
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class JsonHandler(BaseHTTPRequestHandler):
    """Request handler plumbing: HTTP/1.1, the socket timeout, JSON replies, access lines at DEBUG."""

    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT_S  # socket timeout (StreamRequestHandler): slow or stalled clients are cut off

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        log.debug("%s %s", self.address_string(), format % args)

    def _send_json(self, status: HTTPStatus, body: Any) -> None:
        data = json.dumps(body, sort_keys=True).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class BoundedHTTPServer(ThreadingHTTPServer):
    """A threading server with a connection cap, a listen backlog and quiet client disconnects.

    Attributes:
        name: shown in logs and as the serving thread's name.
        max_connections: requests served at once.
    """

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    name = "http"
    max_connections = MAX_CONNECTIONS

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-reply is routine; anything else is logged once, with its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("%s: client %s went away: %s", self.name, client_address, exc)
            return
        log.exception("%s: error serving %s", self.name, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> threading.Thread:
        """Serve in a daemon thread; stop with :meth:`shutdown` then :meth:`server_close`."""
        thread = threading.Thread(target=self.serve_forever, name=self.name, daemon=True)
        thread.start()
        return thread


def _refuse_busy(request: socket.socket) -> None:
    body = b'{"error": "too many connections; retry later"}'
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
            "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
    try:
        request.settimeout(1.0)
        request.sendall(head + body)
    except OSError:
        pass  # the client is gone already
