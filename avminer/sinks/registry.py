"""The one table of the ways out: where label requests and decisions go, chosen by ``sinks.queues``.

Every process that writes decided frames (the miner, ``avminer bench pipeline``, tests) builds its
writer through :func:`avminer.sinks.open_writer`, which asks this table. Adding a sink is two files:
its module (a :class:`~avminer.sinks.base.RequestSink` and a :class:`~avminer.sinks.base.DecisionSink`)
and one entry in :data:`QUEUES`; ``sinks.queues: <name>`` then selects it (settings of its own, if it
needs any, go in :mod:`avminer.config` as well).

- ``kafka``: the label-request and decision topics (:mod:`avminer.sinks.kafka_topic`);
- ``local``: ``requests.jsonl`` / ``decisions.jsonl`` in ``sinks.output_dir`` (:mod:`avminer.sinks.local`);
- ``auto`` (the default): ``kafka`` when ``kafka.bootstrap_servers`` is set, else ``local``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from avminer.config import Settings
from avminer.errors import ConfigError
from avminer.sinks.base import DecisionSink, RequestSink


@dataclass
class Shared:
    """Clients a process opens once and lends to every part that needs one.

    Attributes:
        producer: a Kafka producer (the miner shares one between requests, decisions and dead letters);
            None lets each Kafka sink open its own.
    """

    producer: Any = None


Queues = tuple[RequestSink, DecisionSink]
QueueFactory = Callable[[Settings, Shared], Queues]


def _kafka(settings: Settings, shared: Shared) -> Queues:
    from avminer.sinks.kafka_topic import KafkaDecisionSink, KafkaRequestSink

    return (KafkaRequestSink(settings.kafka, settings.topics.label_requests, producer=shared.producer),
            KafkaDecisionSink(settings.kafka, settings.topics.decisions, producer=shared.producer))


def _local(settings: Settings, shared: Shared) -> Queues:
    from avminer.sinks.local import LocalDecisionSink, LocalRequestSink

    return LocalRequestSink(settings.sinks.output_dir), LocalDecisionSink(settings.sinks.output_dir)


QUEUES: dict[str, QueueFactory] = {"kafka": _kafka, "local": _local}
"""Sink name -> factory of its (request sink, decision sink)."""


def queues_name(settings: Settings) -> str:
    """The entry of :data:`QUEUES` that ``sinks.queues`` names (``auto``: Kafka with a broker, else local).

    Raises:
        ConfigError: ``sinks.queues`` names no entry.
    """
    name = settings.sinks.queues
    if name == "auto":
        return "kafka" if settings.kafka.bootstrap_servers else "local"
    if name not in QUEUES:
        raise ConfigError(f"must be auto or one of {', '.join(sorted(QUEUES))}, got {name!r}", "sinks.queues")
    return name


def open_queues(settings: Settings, shared: Shared | None = None) -> Queues:
    """The request and decision sinks ``sinks.queues`` selects."""
    return QUEUES[queues_name(settings)](settings, shared or Shared())
