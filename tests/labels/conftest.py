"""Fixtures shared with the sink tests (the catalog fixtures live in tests/sinks/conftest.py), and a real
Label Studio server for the live tests."""

from collections.abc import Iterator

import pytest

from tests.label_studio_server import LocalLabelStudio, running_label_studio
from tests.sinks.conftest import catalog, sqlite_catalog  # noqa: F401 - re-exported fixtures


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLabelStudio]:
    """Label Studio 1.23 (its own cached venv) on a free loopback port, SQLite, serving local files under
    ``files_root``: tests put their output directories below it."""
    work = tmp_path_factory.mktemp("label-studio")
    files = work / "files"
    files.mkdir()
    with running_label_studio(work, files_root=files) as server:
        yield server
