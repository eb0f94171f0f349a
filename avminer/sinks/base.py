"""The sink interfaces, and the one writer the pipeline calls for every decided frame.

Three small protocols, each with several real implementations:

- :class:`~avminer.storage.base.FrameStore` — content-addressed blob store for frames and uncertainty
  maps (:mod:`avminer.storage`). ``put`` returns a URI and is idempotent: the key is the sha256 of the
  bytes, so storing the same bytes twice stores nothing new.
- :class:`RequestSink` — label requests out (:mod:`avminer.sinks.kafka_topic`, :mod:`avminer.sinks.local`).
- :class:`DecisionSink` — one decision per frame out (same modules).

:class:`SampleCatalog` is the part of the provenance catalog (:mod:`avminer.catalog.catalog`) the writer
needs. :class:`MinedSampleWriter` composes them in the order that makes replays safe:

    store frame (+ uncertainty and prediction PNGs) → catalog upsert (state ``mined``) → send LabelRequest unless the
    catalog says it was already sent → flush → catalog ``requested`` → send Decision → flush

Every step is idempotent by sample id, so the pipeline may replay a batch (at-least-once upstream)
without duplicating anything. A sink that cannot be reached raises
:class:`~avminer.errors.SinkUnavailableError`: the caller pauses (stops committing offsets, pauses its
partitions) and retries the same batch later — it never drops it. :func:`retry_until_available` is
that loop for callers that simply want to block.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from avminer.errors import SinkError, SinkUnavailableError
from avminer.events.records import Decision, LabelRequest
from avminer.storage.base import FRAME, PREDICTION, UNCERTAINTY, FrameStore, backoff_delays

log = logging.getLogger(__name__)

@runtime_checkable
class RequestSink(Protocol):
    """Where label requests go (Kafka topic keyed by sample id, or ``requests.jsonl``)."""

    def send(self, req: LabelRequest) -> None:
        """Queue one request; durable only after :meth:`flush` returns.

        Raises:
            SinkUnavailableError: the sink is unreachable; pause and retry.
        """
        ...

    def flush(self) -> None:
        """Block until every queued request is durable (Kafka: acknowledged with acks=all)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class DecisionSink(Protocol):
    """Where the one-per-frame decisions go (Kafka topic keyed by sample id, or ``decisions.jsonl``)."""

    def send(self, d: Decision) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class SampleCatalog(Protocol):
    """The part of :class:`avminer.catalog.catalog.Catalog` that :class:`MinedSampleWriter` uses."""

    def upsert_decision(
        self,
        decision: Decision,
        *,
        frame_uri: str | None = None,
        uncertainty_uri: str | None = None,
        prediction_uri: str | None = None,
        width: int | None = None,
        height: int | None = None,
        priority: float = 0.0,
    ) -> None:
        """Insert or update the sample row of a decision (never moves its state backwards)."""
        ...

    def requested_ids(self, sample_ids: Sequence[str]) -> set[str]:
        """The subset of ``sample_ids`` whose label request was already sent."""
        ...

    def upsert_requests(self, reqs: Sequence[LabelRequest]) -> None:
        """Record that these requests were sent (state ``requested`` unless already further), in one commit."""
        ...


@dataclass(slots=True)
class MinedSample:
    """Everything the writer needs about one decided frame.

    Attributes:
        decision: the verdict for the frame (mined or not), with scores and reasons.
        image: the encoded frame (JPEG/PNG) — needed only when mined and ``image_uri`` is None.
        content_type: MIME type of ``image``.
        image_uri: the frame is already stored upstream (``CameraFrame.image_uri``): reuse, don't copy.
        uncertainty_png: the per-pixel uncertainty map as PNG (mined frames only; optional).
        prediction_png: the ensemble's mean prediction as a PNG of class ids (mined frames only;
            optional) — the pre-annotation of labeling-tool exports.
        width: frame width in pixels (the catalog keeps it to validate returned masks).
        height: frame height in pixels.
        priority: labeling priority for the request queue (higher first).
    """

    decision: Decision
    image: bytes | None = None
    content_type: str = "image/jpeg"
    image_uri: str | None = None
    uncertainty_png: bytes | None = None
    prediction_png: bytes | None = None
    width: int | None = None
    height: int | None = None
    priority: float = 0.0

    @property
    def sample_id(self) -> str:
        return self.decision.sample_id


def label_request_for(sample: MinedSample, frame_uri: str, uncertainty_uri: str | None) -> LabelRequest:
    """Build the label request of a mined sample from its decision and stored URIs."""
    d = sample.decision
    return LabelRequest(
        sample_id=d.sample_id,
        frame_id=d.frame_id,
        frame_uri=frame_uri,
        vehicle_id=d.vehicle_id,
        camera_id=d.camera_id,
        timestamp_us=d.timestamp_us,
        slice=d.slice,
        model_version=d.model_version,
        reasons=list(d.reasons),
        scores=dict(d.scores),
        priority=sample.priority,
        requested_at_us=int(time.time() * 1_000_000),
        uncertainty_uri=uncertainty_uri,
    )


@dataclass(slots=True)
class WriteReport:
    """What one :meth:`MinedSampleWriter.write_batch` call did (for logs and tests)."""

    decisions: int = 0
    mined: int = 0
    requests_sent: int = 0
    requests_skipped: int = 0  # already sent on an earlier (replayed) attempt


class MinedSampleWriter:
    """The pipeline's one call per batch of decided frames: store, request, decide, record.

    Idempotent by sample id: replaying a batch (after a crash or a :class:`SinkUnavailableError`) stores
    no blob twice (content keys), sends no request twice when a catalog is attached (the catalog
    remembers what was sent; without one the request sink's own dedupe applies), and upserts the same
    catalog rows. Decisions are at-least-once (keyed by sample id, so a compacted topic keeps one).

    Only mined frames get a catalog row; every frame gets a decision.

    Args:
        store: where frames and uncertainty maps go.
        requests: where label requests go.
        decisions: where decisions go (None: not written).
        catalog: provenance catalog (None: no catalog rows, no cross-restart request dedupe).
    """

    def __init__(
        self,
        store: FrameStore,
        requests: RequestSink,
        decisions: DecisionSink | None = None,
        catalog: SampleCatalog | None = None,
    ) -> None:
        self.store = store
        self.requests = requests
        self.decisions = decisions
        self.catalog = catalog

    def write(self, sample: MinedSample) -> WriteReport:
        """Write one frame (a batch of one; prefer :meth:`write_batch`: it flushes once)."""
        return self.write_batch([sample])

    def write_batch(self, samples: Sequence[MinedSample]) -> WriteReport:
        """Store, request, decide and record a batch; durable when this returns.

        Raises:
            SinkUnavailableError: a sink is unreachable. Nothing is lost: retry the same batch later.
            SinkError: a sink refused the data for good (misconfiguration).
        """
        report = WriteReport(decisions=len(samples))
        mined = [s for s in samples if s.decision.mined]
        report.mined = len(mined)
        pending: list[LabelRequest] = []
        already = self.catalog.requested_ids([s.sample_id for s in mined]) if (self.catalog and mined) else set()
        for s in mined:
            frame_uri = s.image_uri
            if frame_uri is None:
                if s.image is None:
                    raise SinkError(f"mined sample {s.sample_id} has neither image bytes nor image_uri")
                frame_uri = self.store.put(s.sample_id, s.image, s.content_type, kind=FRAME)
            unc_uri = (
                self.store.put(s.sample_id, s.uncertainty_png, "image/png", kind=UNCERTAINTY)
                if s.uncertainty_png is not None
                else None
            )
            pred_uri = (
                self.store.put(s.sample_id, s.prediction_png, "image/png", kind=PREDICTION)
                if s.prediction_png is not None
                else None
            )
            if self.catalog is not None:
                self.catalog.upsert_decision(
                    s.decision, frame_uri=frame_uri, uncertainty_uri=unc_uri, prediction_uri=pred_uri,
                    width=s.width, height=s.height, priority=s.priority,
                )
            if s.sample_id in already:
                report.requests_skipped += 1
                continue
            req = label_request_for(s, frame_uri, unc_uri)
            self.requests.send(req)
            pending.append(req)
        if pending:
            self.requests.flush()
            report.requests_sent = len(pending)
            if self.catalog is not None:
                # One commit right after the flush: a crash between the two is the only way a request is
                # sent twice (replayed and mined again before the catalog knew), never lost.
                self.catalog.upsert_requests(pending)
        if self.decisions is not None and samples:
            for s in samples:
                self.decisions.send(s.decision)
            self.decisions.flush()
        return report

    def flush(self) -> None:
        self.store.flush()
        self.requests.flush()
        if self.decisions is not None:
            self.decisions.flush()

    def close(self) -> None:
        """Flush and close every sink (the catalog is closed by whoever opened it)."""
        errors: list[BaseException] = []
        for part in (self.store, self.requests, self.decisions):
            if part is None:
                continue
            try:
                part.close()
            except Exception as exc:  # close the others anyway, then report the first failure
                errors.append(exc)
        if errors:
            raise SinkError(f"closing sinks failed: {errors[0]}") from errors[0]


T = TypeVar("T")


def retry_until_available(
    fn: Callable[[], T],
    *,
    stop: threading.Event | None = None,
    base_s: float = 0.5,
    cap_s: float = 10.0,
    on_pause: Callable[[SinkUnavailableError, int], None] | None = None,
) -> T:
    """Call ``fn`` until it stops raising :class:`SinkUnavailableError` (pause, never drop).

    Args:
        fn: the idempotent operation, e.g. ``lambda: writer.write_batch(batch)``.
        stop: when set while waiting, the last :class:`SinkUnavailableError` is re-raised (shutdown).
        base_s: first backoff bound; doubles per attempt (full jitter) up to ``cap_s``.
        cap_s: longest wait between attempts.
        on_pause: called with the error and attempt number before each wait (metrics, pausing
            partitions).
    """
    delay = backoff_delays(base_s, cap_s)
    attempt = 0
    while True:
        try:
            return fn()
        except SinkUnavailableError as exc:
            if on_pause is not None:
                on_pause(exc, attempt)
            wait = max(delay(attempt), base_s / 4)
            log.warning("sink unavailable (%s); pausing %.1fs before retry %d", exc, wait, attempt + 1)
            if stop is not None:
                if stop.wait(wait):
                    raise
            else:
                time.sleep(wait)
            attempt += 1
