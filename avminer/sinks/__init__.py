"""Sinks: frame store (S3 or local directory), label-request and decision queues, provenance catalog.

The interfaces live in :mod:`avminer.sinks.base`; :func:`open_writer` builds the writer the pipeline
uses from the settings:

- ``sinks.s3.endpoint_url`` set → frames in S3, else in ``sinks.output_dir/frames``;
- ``kafka.bootstrap_servers`` set → requests and decisions on their topics, else
  ``requests.jsonl``/``decisions.jsonl`` in ``sinks.output_dir``;
- the catalog from ``sinks.catalog_url`` (default: ``sqlite:///<output_dir>/catalog.db``).

Client libraries (boto3, kafka-python, psycopg) are imported only by the module that needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from avminer.sinks.base import (
    DecisionSink,
    FrameStore,
    MinedSample,
    MinedSampleWriter,
    RequestSink,
    SampleCatalog,
    WriteReport,
    content_key,
    retry_until_available,
)

if TYPE_CHECKING:
    from avminer.config import Settings
    from avminer.sinks.catalog import Catalog

__all__ = [
    "DecisionSink",
    "FrameStore",
    "MinedSample",
    "MinedSampleWriter",
    "RequestSink",
    "SampleCatalog",
    "WriteReport",
    "content_key",
    "default_catalog_url",
    "open_frame_store",
    "open_reader",
    "open_writer",
    "retry_until_available",
]


def default_catalog_url(settings: Settings) -> str:
    """``sinks.catalog_url``, or a SQLite file in the output directory when unset.

    The one default for every process (miner, label consumer, oracle, catalog CLI, trainer): the
    labels of an embedded run must land in the catalog its miner wrote.
    """
    from pathlib import Path

    if settings.sinks.catalog_url:
        return settings.sinks.catalog_url
    return f"sqlite:///{Path(settings.sinks.output_dir).expanduser().resolve() / 'catalog.db'}"


def open_frame_store(settings: Settings) -> FrameStore:
    """S3 when ``sinks.s3.endpoint_url`` is set, else the local output directory."""
    if settings.sinks.s3.endpoint_url:
        from avminer.sinks.s3 import S3FrameStore

        return S3FrameStore.from_settings(settings.sinks.s3)
    from avminer.sinks.local import LocalFrameStore

    return LocalFrameStore(settings.sinks.output_dir)


def open_reader(settings: Settings) -> Callable[[str], bytes]:
    """A function reading any stored blob by URI: ``file://`` locally, ``s3://`` via ``sinks.s3``."""
    from avminer.sinks.local import LocalFrameStore

    local = LocalFrameStore(settings.sinks.output_dir)
    s3: list[FrameStore] = []

    def read(uri: str) -> bytes:
        if uri.startswith("s3://"):
            if not s3:
                from avminer.sinks.s3 import S3FrameStore

                s3.append(S3FrameStore.from_settings(settings.sinks.s3, create_bucket=False))
            return s3[0].get(uri)
        return local.get(uri)

    return read


def open_writer(settings: Settings, catalog: Catalog | None = None) -> MinedSampleWriter:
    """Build the pipeline's :class:`MinedSampleWriter` from the settings.

    Args:
        settings: the process settings.
        catalog: an open catalog to record samples in; None opens :func:`default_catalog_url`
            (the caller closes it via ``writer.catalog.close()``).
    """
    from avminer.sinks.catalog import open_catalog

    store = open_frame_store(settings)
    requests: RequestSink
    decisions: DecisionSink
    if settings.kafka.bootstrap_servers:
        from avminer.sinks.kafka_topic import KafkaDecisionSink, KafkaRequestSink

        requests = KafkaRequestSink(settings.kafka, settings.topics.label_requests)
        decisions = KafkaDecisionSink(settings.kafka, settings.topics.decisions)
    else:
        from avminer.sinks.local import LocalDecisionSink, LocalRequestSink

        requests = LocalRequestSink(settings.sinks.output_dir)
        decisions = LocalDecisionSink(settings.sinks.output_dir)
    if catalog is None:
        catalog = open_catalog(default_catalog_url(settings))
    return MinedSampleWriter(store, requests, decisions, catalog)
