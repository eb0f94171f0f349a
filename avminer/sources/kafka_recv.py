"""A bulk socket read for avminer's kafka-python consumers (kafka-python 3.0.x only).

kafka-python 3.0.12 reads a connection with ``recv(4096)`` in a Python loop and joins the pieces
(``kafka/net/transport.py``, ``_sock_recv``): ~12 system calls, 12 small ``bytes`` and a join for
every 48 KB camera frame, all in its network thread under the GIL. With fetch memory kept
(:mod:`avminer.sources.kafka_memory`) that read is ~20-30 µs of kafka-python's ~105 µs of CPU a
message, this one's ~4-6 (``tools/ingest_stages.py``; README, "Ingest").

This module reads the same socket with ``recv_into`` into a buffer each connection keeps
(:data:`RECV_CHUNK` bytes, 1 MiB), looping until the socket would block exactly as kafka-python's
loop does (under TLS that also drains the records OpenSSL holds, which a selector cannot see), and
hands kafka-python's protocol parser a view of that buffer: ``(data, error or None)`` as before, with
two copies fewer per byte (no ``bytes`` per piece, no join, and the parser's slices of a view are
views).

How it reaches the consumer, without patching anything global: ``KafkaConsumer`` takes a
``kafka_client`` setting, the callable that builds its network client (documented in kafka-python's
``KafkaConsumer`` docstring). :func:`bulk_recv_settings` returns a callable that builds
kafka-python's own ``KafkaNetClient`` around a connection manager subclass whose transports get a
:class:`BulkReceiver` as their ``_sock_recv``. Only consumers built with those settings use it; every
other client in the process is untouched.

Version guard: the receiver replaces a private method, so it is installed only on the kafka-python
versions it was tested with (:data:`TESTED_VERSIONS`) and only when the private names it relies on
are there; otherwise :func:`bulk_recv_settings` returns no settings and logs once why (the consumer
then runs on kafka-python's own receive path, slower but correct).
"""

from __future__ import annotations

import functools
import logging
import ssl
from typing import Any

log = logging.getLogger(__name__)

RECV_CHUNK = 1 << 20
"""Bytes asked of the socket per ``recv_into`` (kafka-python asks 4096)."""

TESTED_VERSIONS = ("3.0.",)
"""kafka-python version prefixes whose transport this receiver was tested against."""

_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class BulkReceiver:
    """A transport's ``_sock_recv``: everything readable now, read in :data:`RECV_CHUNK` pieces.

    Args:
        transport: a kafka-python ``KafkaTCPTransport`` (or its TLS subclass); its ``_sock`` is read
            at each call (kafka-python sets it to None when the connection closes).
        chunk: bytes per ``recv_into``.
    """

    def __init__(self, transport: Any, chunk: int = RECV_CHUNK) -> None:
        self._transport = transport
        self._buf = bytearray(chunk)
        self._view = memoryview(self._buf)

    def __call__(self) -> tuple[bytes | memoryview, Exception | None]:
        from kafka.errors import KafkaConnectionError

        sock = self._transport._sock
        if sock is None:
            return b"", KafkaConnectionError("connection closed")
        filled = 0
        size = len(self._buf)
        spilled: list[bytes] = []  # only when more than a buffer's worth was readable at once
        err: Exception | None = None
        while True:
            if filled == size:
                spilled.append(bytes(self._buf))
                filled = 0
            try:
                n = sock.recv_into(self._view[filled:])
            except _WOULD_BLOCK:
                break
            except Exception as exc:  # noqa: BLE001 - kafka-python's loop turns any failure into a connection error
                log.warning("%s: error receiving from the broker, closing the connection: %s", self._transport, exc)
                err = KafkaConnectionError(exc)
                break
            if n == 0:  # orderly shutdown by the peer
                err = KafkaConnectionError("socket disconnected")
                break
            filled += n
        if spilled:
            return b"".join([*spilled, self._view[:filled]]), err
        # A view of the buffer, not a copy: kafka-python 3.0's KafkaProtocol.receive_bytes copies what it
        # is given into its own header and frame buffers before data_received returns, and the next read
        # into this buffer happens only after that (tests/sources/test_kafka_recv.py checks the bytes).
        return self._view[:filled], err


def _unsupported_reason() -> str | None:
    """Why the bulk receiver cannot be installed on this kafka-python, or None if it can."""
    try:
        import kafka
        from kafka.net.compat import KafkaNetClient
        from kafka.net.manager import KafkaConnectionManager
        from kafka.net.transport import KafkaTCPTransport
    except ImportError as exc:
        return f"kafka-python's network modules are not where 3.0 keeps them ({exc})"
    version = str(getattr(kafka, "__version__", "?"))
    if not version.startswith(TESTED_VERSIONS):
        return f"kafka-python {version} is not a version it was tested with ({', '.join(TESTED_VERSIONS)}x)"
    missing = [name for owner, name in ((KafkaConnectionManager, "_build_transport"),
                                        (KafkaTCPTransport, "_sock_recv"), (KafkaTCPTransport, "_read_from_sock"))
               if not hasattr(owner, name)]
    if missing or not hasattr(KafkaNetClient, "__init__"):
        return f"kafka-python {version} lacks {', '.join(missing)}"
    return None


@functools.cache
def _manager_class() -> type:
    from kafka.net.manager import KafkaConnectionManager

    class BulkRecvConnectionManager(KafkaConnectionManager):  # type: ignore[misc]
        """kafka-python's connection manager; every transport it builds reads with a :class:`BulkReceiver`."""

        async def _build_transport(self, node: Any, timeout_at: float | None = None) -> Any:
            transport = await super()._build_transport(node, timeout_at=timeout_at)
            # An instance attribute shadows the class's method: _read_from_sock calls self._sock_recv().
            transport._sock_recv = BulkReceiver(transport)
            return transport

    return BulkRecvConnectionManager


def build_client(**configs: Any) -> Any:
    """A ``kafka_client`` for ``KafkaConsumer``: kafka-python's ``KafkaNetClient`` with bulk reads."""
    from kafka.net.compat import KafkaNetClient
    from kafka.net.selector import NetworkSelector

    net = NetworkSelector(**configs)
    return KafkaNetClient(net=net, manager=_manager_class()(net, **configs), **configs)


@functools.cache
def bulk_recv_settings() -> dict[str, Any]:
    """``KafkaConsumer`` settings that give it the bulk receive path; empty where it is not supported."""
    reason = _unsupported_reason()
    if reason is not None:
        log.info("Kafka consumers keep kafka-python's own receive path: %s", reason)
        return {}
    return {"kafka_client": build_client}
