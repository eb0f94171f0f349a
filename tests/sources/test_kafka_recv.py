"""The bulk socket read of avminer's Kafka consumers: the same bytes as kafka-python's own read, on plain
sockets, under real TLS, and end to end through a real broker (tansu), with frames larger than the buffer.
"""

from __future__ import annotations

import random
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import KafkaConnectionError

from avminer.config import load_settings
from avminer.sources import kafka_recv
from avminer.sources.kafka import KafkaSource, consumer_config
from avminer.sources.kafka_recv import BulkReceiver, bulk_recv_settings
from tests.mining.support import produce
from tests.services import KafkaBroker


class _Transport:
    """What a BulkReceiver reads of a kafka-python transport: its socket (None once closed)."""

    def __init__(self, sock: socket.socket | None) -> None:
        self._sock = sock


def _drain(receiver: BulkReceiver, sock: socket.socket, want: int) -> tuple[bytes, Exception | None]:
    """Call the receiver whenever the socket is readable, as kafka-python's loop does, until ``want`` bytes."""
    import selectors

    got = bytearray()
    err: Exception | None = None
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        while len(got) < want and err is None:
            if not sel.select(timeout=10):
                raise AssertionError(f"stalled at {len(got)} of {want} bytes")
            data, err = receiver()
            got += data  # copied now: the receiver's buffer is reused by its next read
    return bytes(got), err


def test_reads_everything_in_order_including_more_than_a_buffer_at_once() -> None:
    payload = random.Random(1).randbytes(3_000_000)
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        b.sendall(payload[:200_000])  # already queued before the first read: more than the 64 KiB buffer
        receiver = BulkReceiver(_Transport(a), chunk=64 * 1024)
        sender = threading.Thread(target=b.sendall, args=(payload[200_000:],))
        sender.start()
        data, err = _drain(receiver, a, len(payload))
        sender.join()
        assert err is None
        assert data == payload
    finally:
        a.close()
        b.close()


def test_peer_close_is_a_connection_error_after_the_last_bytes() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        b.sendall(b"last words")
        b.close()
        data, err = BulkReceiver(_Transport(a))()
        assert bytes(data) == b"last words"
        assert isinstance(err, KafkaConnectionError)
        assert "disconnected" in str(err)
    finally:
        a.close()
    data, err = BulkReceiver(_Transport(None))()  # kafka-python sets _sock to None on close
    assert bytes(data) == b"" and isinstance(err, KafkaConnectionError)


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server and a client context around a fresh self-signed certificate for 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", "k.pem", "-out", "c.pem", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], cwd=tmp, check=True, capture_output=True, timeout=60)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(Path(tmp) / "c.pem", Path(tmp) / "k.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(Path(tmp) / "c.pem")
    return server, client


def test_tls_reads_drain_what_openssl_holds(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """Under TLS a selector cannot see records OpenSSL already decrypted: the receiver must drain them.

    A small buffer makes every read stop mid-record; the test's loop only calls the receiver when the
    *socket* is readable, so a receiver that left bytes inside OpenSSL would stall here.
    """
    server_ctx, client_ctx = tls_contexts
    payload = random.Random(2).randbytes(152 * 16384)  # whole 16 KiB TLS records: the last one outlasts a read
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(payload)
            tls.recv(1)  # hold the connection open until the client has read everything

    server = threading.Thread(target=serve)
    server.start()
    try:
        raw = socket.create_connection(("127.0.0.1", port))
        tls = client_ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        tls.setblocking(False)
        data, err = _drain(BulkReceiver(_Transport(tls), chunk=1000), tls, len(payload))
        assert err is None
        assert data == payload
        tls.setblocking(True)
        tls.sendall(b"k")
        tls.close()
    finally:
        server.join(timeout=10)
        listener.close()


def test_only_tested_kafka_python_versions_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import kafka

    assert kafka_recv._unsupported_reason() is None  # the pinned kafka-python is a tested one
    assert bulk_recv_settings() == {"kafka_client": kafka_recv.build_client}
    monkeypatch.setattr(kafka, "__version__", "3.1.0")
    reason = kafka_recv._unsupported_reason()
    assert reason is not None and "3.1.0" in reason


def test_the_miners_consumer_uses_it_when_asked_unless_kafka_extra_says_otherwise() -> None:
    settings = load_settings(environ={}, overrides={"kafka": {"bootstrap_servers": "127.0.0.1:9"}})
    assert "kafka_client" not in consumer_config(settings)  # off by default: kafka-python's own path
    settings = load_settings(environ={}, overrides={"kafka": {"bootstrap_servers": "127.0.0.1:9", "bulk_recv": True}})
    assert consumer_config(settings)["kafka_client"] is kafka_recv.build_client
    from kafka.net.compat import KafkaNetClient

    settings = load_settings(environ={}, overrides={"kafka": {"bootstrap_servers": "127.0.0.1:9", "bulk_recv": True,
                                                              "extra": {"kafka_client": KafkaNetClient}}})
    assert consumer_config(settings)["kafka_client"] is KafkaNetClient


def _receivers(source: KafkaSource) -> list[Any]:
    conns = source._consumer._client._manager._conns.values()
    return [c.transport._sock_recv for c in conns if getattr(c, "transport", None) is not None]


BULK_CONSUMER: dict[str, Any] = {
    "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 5000, "bulk_recv": True,
    "extra": {"max_partition_fetch_bytes": 8 << 20, "fetch_max_bytes": 16 << 20},
}
"""``kafka`` settings of a fast-joining consumer with the bulk read, fetching records up to 8 MB."""


def read_all_through_bulk_receivers(source: KafkaSource, values: list[bytes]) -> None:
    """Poll until ``values`` arrived (60 s at most); they are exactly ``values``, and every connection of
    the source read them through :class:`BulkReceiver`."""
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(got) < len(values) and time.monotonic() < deadline:
        got += [m.value for m in source.poll(0.2)]
    assert [len(v) for v in got] == [len(v) for v in values]
    assert got == values
    receivers = _receivers(source)
    assert receivers and all(isinstance(r, BulkReceiver) for r in receivers)


def test_the_miners_source_reads_large_records_intact_through_a_real_broker(kafka: KafkaBroker, unique: str) -> None:
    """Records from 10 bytes to 1.5 MB (over the 1 MiB buffer), several per fetch: every byte as sent."""
    topic = kafka.topic("recv", 1)
    rng = random.Random(3)
    sizes = [10, 70_000, 1_500_000, 300, 900_000, 48_600, *[rng.randrange(1, 400_000) for _ in range(40)]]
    values = [rng.randbytes(n) for n in sizes]
    produce(kafka.bootstrap, topic, [(b"k%d" % i, v) for i, v in enumerate(values)])
    settings = load_settings(environ={}, overrides={"kafka": {
        "bootstrap_servers": kafka.bootstrap, "group_id": f"g-{unique}", **BULK_CONSUMER}})
    source = KafkaSource(settings, topics=[topic])
    try:
        read_all_through_bulk_receivers(source, values)
    finally:
        source.close()
