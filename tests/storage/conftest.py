"""The outage test writes through the full writer, which records into a catalog (fixtures of tests/catalog)."""

from tests.catalog.conftest import catalog, sqlite_catalog

__all__ = ["catalog", "sqlite_catalog"]
