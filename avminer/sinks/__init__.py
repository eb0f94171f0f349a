"""Sinks: where a decided frame goes: frame store, label-request and decision queues, the catalog's record.

The interfaces live in :mod:`avminer.sinks.base`; blob stores in :mod:`avminer.storage`, the catalog
in :mod:`avminer.catalog`. :func:`open_writer` builds the writer the pipeline uses from the settings:

- ``sinks.s3.endpoint_url`` set → frames in S3, else in ``sinks.output_dir/frames``;
- requests and decisions to the sink ``sinks.queues`` names in :mod:`avminer.sinks.registry` (by
  default their Kafka topics when ``kafka.bootstrap_servers`` is set, else ``requests.jsonl`` /
  ``decisions.jsonl`` in ``sinks.output_dir``);
- the catalog from ``sinks.catalog_url`` (default: ``sqlite:///<output_dir>/catalog.db``).

Client libraries (boto3, kafka-python, psycopg) are imported only by the module that needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avminer.catalog import default_catalog_url
from avminer.sinks.base import (
    DecisionSink,
    MinedSample,
    MinedSampleWriter,
    RequestSink,
    SampleCatalog,
    WriteReport,
    retry_until_available,
)
from avminer.sinks.registry import Shared, open_queues
from avminer.storage import open_frame_store

if TYPE_CHECKING:
    from avminer.catalog.catalog import Catalog
    from avminer.config import Settings

__all__ = [
    "DecisionSink",
    "MinedSample",
    "MinedSampleWriter",
    "RequestSink",
    "SampleCatalog",
    "WriteReport",
    "open_writer",
    "retry_until_available",
]


def open_writer(settings: Settings, catalog: Catalog | None = None, shared: Shared | None = None) -> MinedSampleWriter:
    """Build the pipeline's :class:`MinedSampleWriter` from the settings.

    Args:
        settings: the process settings.
        catalog: an open catalog to record samples in; None opens :func:`default_catalog_url`
            (the caller closes it via ``writer.catalog.close()``).
        shared: clients to lend the sinks (the miner's one Kafka producer).
    """
    from avminer.catalog.catalog import open_catalog

    store = open_frame_store(settings)
    requests, decisions = open_queues(settings, shared)
    if catalog is None:
        catalog = open_catalog(default_catalog_url(settings))
    return MinedSampleWriter(store, requests, decisions, catalog)
