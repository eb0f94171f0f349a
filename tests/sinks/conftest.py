"""The writer records into a catalog: the catalog fixtures (both backends) from tests/catalog."""

from tests.catalog.conftest import catalog, sqlite_catalog

__all__ = ["catalog", "sqlite_catalog"]
