"""The provenance catalog: the system's database of samples, labels, datasets and releases, and its HTTP API.

- :mod:`avminer.catalog.catalog` — the schema (``catalog.sql``) and the DAO over SQLite or PostgreSQL;
- :mod:`avminer.catalog.api` — frozen datasets over HTTP (``avminer catalog serve``).

The miner's sinks write into it, the label tools and the trainer read from it; it imports none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from avminer.config import Settings


def default_catalog_url(settings: Settings) -> str:
    """``sinks.catalog_url``, or a SQLite file in the output directory when unset.

    The one default for every process (miner, label consumer, oracle, catalog CLI, trainer): the
    labels of an embedded run must land in the catalog its miner wrote.
    """
    from pathlib import Path

    if settings.sinks.catalog_url:
        return settings.sinks.catalog_url
    return f"sqlite:///{Path(settings.sinks.output_dir).expanduser().resolve() / 'catalog.db'}"
