"""The datasets API under hostile clients: raw sockets, lying headers, foreign hosts, floods."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from avminer.catalog import api as api_module
from avminer.catalog.api import DatasetsServer
from avminer.catalog.catalog import Catalog
from avminer.errors import ConfigError
from tests.catalog.test_api import call


@pytest.fixture
def server(sqlite_catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> Iterator[DatasetsServer]:
    monkeypatch.setattr(api_module.DatasetsHandler, "timeout", 0.5)  # stalled clients cut off fast in tests
    srv = DatasetsServer(sqlite_catalog, "127.0.0.1", 0)
    srv.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def raw(srv: DatasetsServer, request: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send ``request`` bytes as they are; return the status and the whole reply."""
    host, port = srv.server_address[:2]
    with socket.create_connection((str(host), port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in b"".join(chunks):
                    break
        except TimeoutError:
            pass
    reply = b"".join(chunks)
    return int(reply.split(b" ", 2)[1]), reply


def post(path: str, headers: str, body: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n").encode() + body


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (post("/datasets/x", "Content-Type: application/json\r\nContent-Length: -1\r\n", b"{}"), 400),
        (post("/datasets/x", "Content-Type: application/json\r\nContent-Length: +2\r\n", b"{}"), 400),
        (post("/datasets/x", "Content-Type: application/json\r\nContent-Length: 1e3\r\n", b"{}"), 400),
        (post("/datasets/x", "Content-Type: application/json\r\nContent-Length: 99999999999999999999\r\n"), 413),
        (post("/datasets/x", "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
              b"2\r\n{}\r\n0\r\n\r\n"), 411),
        (post("/datasets/x", "Content-Type: text/plain\r\nContent-Length: 2\r\n", b"{}"), 415),
        (post("/datasets/x", "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n", b"a=b"), 415),
        (post("/datasets/x", "Content-Type: application/json\r\nContent-Length: 5\r\n", b"[[[[["), 400),
        (post("/datasets/x", "Content-Type: application/json\r\nContent-Length: 4\r\n", b"\xff\xfe{}"), 400),
        (b"GET /datasets/x?version=100000000000000000000000000 HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /datasets/x?version=1e26 HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /datasets/x?version=-1 HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /datasets HTTP/1.1\r\nHost: evil.example\r\n\r\n", 421),
        (b"GET /datasets HTTP/1.1\r\nHost: 127.0.0.1.evil.example:80\r\n\r\n", 421),
        (b"GET /datasets HTTP/1.1\r\n\r\n", 421),
        (b"GET /datasets HTTP/1.1\r\nHost: localhost\r\nOrigin: http://evil.example\r\n\r\n", 403),
        (post("/datasets/x", "Origin: null\r\nContent-Type: application/json\r\nContent-Length: 2\r\n", b"{}"), 403),
        (b"GET /../../etc/passwd HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
        (b"GARBAGE / HTTP/1.1\r\nHost: localhost\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    ],
)
def test_hostile_requests_get_4xx(server: DatasetsServer, request_bytes: bytes, status: int) -> None:
    got, reply = raw(server, request_bytes)
    assert got == status, reply[:300]


def test_same_origin_browser_requests_pass(server: DatasetsServer) -> None:
    port = server.server_address[1]
    got, _ = raw(server, f"GET /datasets HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: http://localhost:{port}\r\n"
                 "Connection: close\r\n\r\n".encode())
    assert got == 200


def test_stalled_clients_time_out_and_the_server_stays_bounded(server: DatasetsServer) -> None:
    host, port = server.server_address[:2]
    threads_before = threading.active_count()
    stalled = []
    for _ in range(150):  # half-sent requests: headers promise a body that never comes
        sock = socket.create_connection((str(host), port))
        sock.sendall(b"POST /datasets/x HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        stalled.append(sock)
    time.sleep(0.2)
    assert threading.active_count() <= threads_before + api_module.DatasetsServer.max_connections + 2
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:  # the stalled ones are cut off after the socket timeout
        status, _ = call(server.url + "/healthz")
        if status == 200:
            break
        time.sleep(0.2)
    assert status == 200
    for sock in stalled:
        sock.close()


def test_parallel_clients_are_all_answered(server: DatasetsServer) -> None:
    def get(_: int) -> int:
        return call(server.url + "/datasets")[0]

    with ThreadPoolExecutor(40) as pool:
        statuses = list(pool.map(get, range(200)))
    assert statuses == [200] * 200


def test_token_is_required_when_set(sqlite_catalog: Catalog) -> None:
    srv = DatasetsServer(sqlite_catalog, "127.0.0.1", 0, token="s3cret-token")
    srv.start()
    try:
        assert call(srv.url + "/datasets")[0] == 401
        assert call(srv.url + "/healthz")[0] == 200
        for auth in ("Bearer wrong", "s3cret-token", "Bearer s3cret-token "):
            req = urllib.request.Request(srv.url + "/datasets", headers={"Authorization": auth})
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(req, timeout=10)
            assert info.value.code == 401
        req = urllib.request.Request(srv.url + "/datasets", headers={"Authorization": "Bearer s3cret-token"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_serving_beyond_loopback_needs_a_token(sqlite_catalog: Catalog, host: str) -> None:
    with pytest.raises(ConfigError, match="sinks.api_token"):
        DatasetsServer(sqlite_catalog, host, 0)
