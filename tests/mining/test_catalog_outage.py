"""PostgreSQL away for 30 s mid-stream: the miner pauses on its catalog, resumes, loses and repeats nothing.

The shared PostgreSQL of the machine is not stopped (other suites use it): the miner reaches it through
a TCP proxy of this test, and the proxy is cut — listener closed, live connections reset — then restored.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import REGISTRY

from avminer.catalog.catalog import open_catalog
from avminer.config import load_settings
from avminer.mining.daemon import run_miner
from avminer.sinks.local import read_jsonl, read_requests
from tests.mining.support import fake_holder, sample_records

OUTAGE_S = 30.0


class CuttableProxy:
    """A loopback TCP forwarder to ``upstream`` that can be cut (refuse and reset) and restored."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                with contextlib.suppress(OSError):  # wakes the thread blocked in accept() (close alone does not)
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def writer_pauses() -> float:
    return REGISTRY.get_sample_value("avminer_sink_errors_total", {"sink": "writer"}) or 0.0


def test_postgres_down_30s_mid_stream(sample_drive: Path, tmp_path: Path, postgres_url: str, unique: str) -> None:
    frames, _ = sample_records(sample_drive)
    parts = urlsplit(postgres_url)
    proxy = CuttableProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = f"{parts.username + '@' if parts.username else ''}127.0.0.1:{proxy.port}"
    url = urlunsplit(parts._replace(netloc=netloc, query=f"schema=t_{unique}"))
    out = tmp_path / "out"
    settings = load_settings(environ={}, overrides={
        "sinks": {"output_dir": str(out), "catalog_url": url}, "metrics": {"port": 0},
        "selection": {"target_rate": 1.0, "slice_rates": {}, "warmup_frames": 1, "camera_cooldown_s": 0.0},
        "batcher": {"max_batch": 2},
    })
    timeline: dict[str, float] = {}
    before = writer_pauses()

    def written() -> int:
        path = out / "decisions.jsonl"
        return len(read_jsonl(path)) if path.exists() else 0

    def outage() -> None:
        while written() < 6:  # mid-stream: some frames are through the sinks
            time.sleep(0.005)
        proxy.cut()
        timeline["written_at_cut"] = written()
        time.sleep(OUTAGE_S)
        timeline["paused_while_down"] = writer_pauses() - before
        timeline["written_while_down"] = written()
        proxy.restore()
        timeline["restored"] = time.monotonic()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    try:
        stats = run_miner(settings, engines=fake_holder(), drive_log=sample_drive,  # type: ignore[arg-type]
                          handle_signals=False, serve_metrics=False)
        thread.join(timeout=OUTAGE_S + 30)
        assert "restored" in timeline and timeline["paused_while_down"] > 0
        # Batches with nothing mined need no catalog and went on; the first one that did stopped the sink
        # stage (in order: nothing behind it overtook it) until PostgreSQL was back.
        assert timeline["written_at_cut"] <= timeline["written_while_down"] < len(frames)
        assert stats.decisions == len(frames) and stats.drained
        ids = [d["sample_id"] for d in read_jsonl(out / "decisions.jsonl")]
        assert len(ids) == len(set(ids)) and set(ids) == {f.sample_id for f in frames}
        requests = read_requests(out)
        assert len(requests) == len({r.sample_id for r in requests})  # nothing requested twice
        with open_catalog(url) as catalog:
            rows = catalog.query_samples(limit=10_000)
            assert {r.sample_id for r in rows} == {r.sample_id for r in requests} == {
                d["sample_id"] for d in read_jsonl(out / "decisions.jsonl") if d["mined"]}
    finally:
        proxy.cut()
        open_catalog(urlunsplit(parts._replace(query=f"schema=t_{unique}"))).drop_schema()
