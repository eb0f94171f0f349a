"""The oracle labeler, for simulation and tests: answers label requests from ground truth.

A drive log made from CamVid carries its labels in the side file ``<stem>.gt.avro``
(:func:`avminer.events.drivelog.read_ground_truth`). The oracle answers each LabelRequest whose frame
id it knows with a LabelResult holding that PNG inline, labeled ``oracle``:

- with a broker: consume ``topics.label_requests``, produce to ``topics.label_results`` (keyed by
  sample id, acks=all), commit after the batch is acknowledged — the label consumer then validates
  and records them like any human label;
- embedded: read ``requests.jsonl`` of the output directory and apply the results directly through a
  :class:`~avminer.labels.consumer.LabelApplier`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from avminer.config import Settings
from avminer.errors import EventDecodeError, SinkUnavailableError
from avminer.events.records import LabelRequest, LabelResult
from avminer.labels.consumer import LabelApplier, make_consumer, poll_loop
from avminer.labels.masks import InvalidLabelError

log = logging.getLogger(__name__)


class OracleLabeler:
    """Ground-truth answers by frame id.

    Args:
        ground_truth: frame id → label PNG (class ids, void 11).
        labeler: the ``labeler`` recorded on every result.
    """

    def __init__(self, ground_truth: dict[str, bytes], labeler: str = "oracle") -> None:
        self.ground_truth = ground_truth
        self.labeler = labeler

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], labeler: str = "oracle") -> OracleLabeler:
        """Load ``<stem>.gt.avro`` (or the drive log next to it)."""
        from avminer.events.drivelog import read_ground_truth

        return cls(read_ground_truth(path), labeler)

    def answer(self, req: LabelRequest) -> LabelResult | None:
        """The result for ``req``, or None when the frame has no ground truth."""
        png = self.ground_truth.get(req.frame_id)
        if png is None:
            return None
        return LabelResult(sample_id=req.sample_id, labeler=self.labeler,
                           labeled_at_us=int(time.time() * 1_000_000), mask_png=png, frame_id=req.frame_id)


@dataclass(slots=True)
class OracleStats:
    answered: int = 0
    unknown_frames: int = 0
    invalid: int = 0  # embedded mode: results the applier refused


def run_oracle_kafka(
    settings: Settings,
    oracle: OracleLabeler,
    *,
    group_id: str = "avminer-oracle",
    stop: threading.Event | None = None,
    max_messages: int | None = None,
    idle_timeout_s: float | None = None,
    consumer_overrides: dict[str, Any] | None = None,
) -> OracleStats:
    """Answer requests from ``topics.label_requests`` on ``topics.label_results``."""
    from avminer.events import codec
    from avminer.sinks.kafka_topic import KafkaRecordSink

    stats = OracleStats()
    consumer = make_consumer(settings, settings.topics.label_requests, group_id, **(consumer_overrides or {}))
    results = KafkaRecordSink(settings.kafka, settings.topics.label_results)

    def handle(msg: Any) -> None:
        try:
            req = codec.decode_as(msg.value, LabelRequest)
        except EventDecodeError as exc:
            log.warning("skipping undecodable request at %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, exc)
            return
        result = oracle.answer(req)
        if result is None:
            stats.unknown_frames += 1
            log.info("no ground truth for frame %s (sample %s)", req.frame_id, req.sample_id)
            return
        results._send(result)
        stats.answered += 1

    try:
        poll_loop(consumer, handle, stop=stop, max_messages=max_messages, idle_timeout_s=idle_timeout_s,
                  after_batch=results.flush)
    finally:
        consumer.close()
        results.close()
    return stats


def run_oracle_local(output_dir: str | os.PathLike[str], oracle: OracleLabeler, applier: LabelApplier) -> OracleStats:
    """Embedded mode: answer every request in ``<output_dir>/requests.jsonl`` straight into the catalog."""
    from avminer.sinks.local import read_requests

    stats = OracleStats()
    for req in read_requests(output_dir):
        result = oracle.answer(req)
        if result is None:
            stats.unknown_frames += 1
            continue
        try:
            applier.apply(result)
        except InvalidLabelError as exc:
            log.warning("oracle label for %s refused (%s): %s", req.sample_id, exc.reason, exc)
            stats.invalid += 1
            continue
        except SinkUnavailableError:
            raise
        stats.answered += 1
    return stats
