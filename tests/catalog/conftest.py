"""Catalog fixtures over both backends: SQLite (a temp file) and PostgreSQL (a schema of its own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from avminer.catalog.catalog import Catalog, open_catalog


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Catalog]:
    """An empty catalog; PostgreSQL ones live in their own schema, dropped afterwards."""
    if request.param == "sqlite":
        cat = open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
        yield cat
        cat.close()
        return
    url = request.getfixturevalue("postgres_url")
    cat = open_catalog(url, schema=f"t_{unique}")
    yield cat
    cat.drop_schema()


@pytest.fixture
def sqlite_catalog(tmp_path: Path) -> Iterator[Catalog]:
    cat = open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    yield cat
    cat.close()
