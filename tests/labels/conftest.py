"""Fixtures shared with the sink tests (the catalog fixtures live in tests/sinks/conftest.py)."""

from tests.sinks.conftest import catalog, sqlite_catalog  # noqa: F401 - re-exported fixtures
