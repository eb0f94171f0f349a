"""Where imported or pulled labels go: the label-results topic, or straight into the catalog.

Every way a label comes back from a person (a file export, a Label Studio pull, a Label Studio webhook)
ends here, so they all take the same validation and dead-letter path:

- with a broker (``kafka.bootstrap_servers``): each LabelResult is published to ``topics.label_results``;
  ``avminer label consume`` validates it, stores the mask, marks the sample labeled or dead-letters it,
  and the trainer wakes up on the same topic;
- embedded: :class:`~avminer.labels.consumer.LabelApplier` applies it at once; a refused result is
  counted by reason and reported, never half-applied.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from avminer.config import Settings
from avminer.events.records import LabelResult
from avminer.labels.consumer import LabelApplier
from avminer.labels.masks import InvalidLabelError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DeliveryStats:
    """Results published (broker), applied or refused (embedded), refusals by reason."""

    published: int = 0
    applied: int = 0
    refused: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"published": self.published, "applied": self.applied, "refused": self.refused,
                "reasons": dict(self.reasons)}


def deliver(settings: Settings, results: Sequence[LabelResult], applier: LabelApplier | None = None) -> DeliveryStats:
    """Publish ``results`` to the label-results topic (broker configured) or apply them with ``applier``.

    Raises:
        LabelError: embedded mode without an applier.
        SinkUnavailableError: the broker, store or catalog is unreachable (nothing is lost: retry).
    """
    stats = DeliveryStats()
    if settings.kafka.bootstrap_servers:
        from avminer.sinks.kafka_topic import KafkaRecordSink

        sink = KafkaRecordSink(settings.kafka, settings.topics.label_results)
        try:
            for r in results:
                sink._send(r)
            sink.flush()
        finally:
            sink.close()
        stats.published = len(results)
        return stats
    if applier is None:
        from avminer.errors import LabelError

        raise LabelError("no broker configured and no catalog to apply labels to")
    for r in results:
        try:
            applier.apply(r)
        except InvalidLabelError as exc:
            log.warning("label for %s refused (%s): %s", r.sample_id, exc.reason, exc)
            stats.refused += 1
            stats.reasons[exc.reason] = stats.reasons.get(exc.reason, 0) + 1
            stats.refusals.append(f"{r.sample_id}: {exc.reason}: {exc}")
        else:
            stats.applied += 1
    return stats
