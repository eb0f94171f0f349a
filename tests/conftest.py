"""Shared fixtures: real services (tansu broker, SeaweedFS S3, PostgreSQL) and sample data."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import services

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DRIVE = REPO / "avminer" / "data" / "sample_drive.avro"
SHARED_CAMVID = REPO.parent / "shared" / "data" / "camvid"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow") or os.environ.get("AVMINER_RUNSLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.KafkaBroker]:
    """A real Kafka-protocol broker for the whole session (tansu, or $AVMINER_TEST_KAFKA)."""
    with services.running(services.start_kafka, tmp_path_factory.mktemp("kafka")) as broker:
        yield broker  # type: ignore[misc]


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.S3Server]:
    """A real S3 server (SeaweedFS) for the whole session."""
    with services.running(services.start_s3, tmp_path_factory.mktemp("s3")) as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def s3_private(tmp_path: Path) -> Iterator[services.S3Server]:
    """An S3 server of the test's own, for tests that stop and restart it."""
    with services.running(services.start_s3, tmp_path) as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def unique() -> str:
    """A random suffix for topic, group and bucket names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The machine's PostgreSQL (127.0.0.1:5432, trust auth, database ``test``), or $AVMINER_TEST_POSTGRES."""
    url = os.environ.get("AVMINER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {url}: {exc}; start it (see .ci/run)")
    return url


@pytest.fixture(scope="session")
def sample_drive() -> Path:
    """The small CamVid drive shipped in the repo (day and dusk frames, with labels)."""
    if not SAMPLE_DRIVE.exists():
        pytest.fail(f"{SAMPLE_DRIVE} is missing; regenerate it with tools/make_sample_drive.py")
    return SAMPLE_DRIVE
