"""Serve a written report folder on the loopback interface (``avminer report --serve``)."""

from __future__ import annotations

import functools
import logging
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from avminer.errors import ConfigError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        log.debug("report server: " + format, *args)


def make_server(folder: str | Path, port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for ``folder`` on 127.0.0.1 (port 0: a free one); call ``serve_forever``.

    It binds the loopback address only: the report shows fleet frames and is not for the network.

    Raises:
        ConfigError: the folder has no report, or the port cannot be bound.
    """
    root = Path(folder)
    if not (root / "index.html").is_file():
        raise ConfigError(f"{root} holds no index.html; write a report there first (avminer report --out)")
    handler = functools.partial(_QuietHandler, directory=str(root))
    try:
        return ThreadingHTTPServer((LOOPBACK, port), handler)
    except OSError as exc:
        raise ConfigError(f"--serve: cannot listen on {LOOPBACK}:{port}: {exc.strerror}") from exc
