"""``avminer train serve``: retrain when enough new labels arrive or on a schedule; gate; release.

The catalog is the source of truth. The label consumer (``avminer label consume``) validates each
LabelResult and marks its sample ``labeled``; this service follows ``topics.label_results`` only as a
wake-up call (embedded: it polls), counts the catalog's ``labeled`` samples (labeled, not yet used by a
run) and, when there are ``trainer.retrain_every_labels`` of them or ``trainer.retrain_interval_s`` has
passed with at least one, runs one retraining:

1. freeze every labeled sample (new and already used) into the next version of dataset ``fleet``;
2. train a candidate on the base CamVid-layout data (if given) plus the fleet samples, starting from the
   production weights when the architecture matches, with checkpoints in ``<work_dir>/runs/<run_id>``;
3. gate it against production on held-out frames (the base data's held-out rows and every fifth fleet
   sample) per gate slice: time of day, fog (fogged copies of the held-out day frames), region
   (:mod:`avminer.trainer.gates`); refused: the report is logged and kept, production stays;
4. passed: export the bundle, upload it and publish a ModelRelease (when S3 and Kafka are configured;
   embedded the bundle just becomes the local production model);
5. record the training run in the catalog, which marks the frozen samples ``used``, released or refused.

A run that fails (an error anywhere in 1-5: unreadable frames, a crash in training, S3 or the broker
down) records nothing: its samples stay ``labeled``, still count as pending, and the next attempt, at
least ``retry_backoff_s`` later, freezes them again. A refused run does use them: the gates compared a
model trained on them, and the next dataset version contains them anyway.

``<work_dir>/service_state.json`` remembers the production bundle and a run in progress, so a service
stopped mid-run (the stop event or SIGTERM ends it after the epoch in progress, checkpoint written) or
killed resumes that run from its last epoch checkpoint on the same frozen dataset version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avminer.config import Settings
from avminer.errors import AvminerError, GateRefusedError, TrainerError

log = logging.getLogger(__name__)

DATASET_ID = "fleet"
STATE_FILE = "service_state.json"
HOLDOUT_EVERY = 5  # one fleet sample in five (by sample id hash) gates instead of training


@dataclass
class ServiceState:
    """What survives a restart."""

    production: str | None = None  # bundle directory of the model in production
    run_id: str | None = None  # run in progress
    dataset_version: int | None = None  # its frozen dataset version
    last_attempt_at: float = 0.0  # end of the last run (or the service's first start)
    last_failed: bool = False  # the last attempt failed: wait retry_backoff_s before the next
    runs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> ServiceState:
        if not path.exists():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise TrainerError(f"{path}: unreadable service state ({exc}); fix or delete it") from exc

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, path)


def is_holdout(sample_id: str) -> bool:
    """Deterministic gate/train split of fleet samples."""
    return int(hashlib.sha256(sample_id.encode()).hexdigest()[:8], 16) % HOLDOUT_EVERY == 0


class TrainerService:
    """The retraining loop (see module docstring).

    Args:
        settings: the avminer settings (trainer, sinks, kafka, topics).
        base_data: CamVid-layout directory always trained on (None: fleet samples only).
        catalog: an open catalog (default: ``sinks.catalog_url``).
        reader: reads blobs by URI (default: :func:`avminer.sinks.open_reader`).
        clock: seconds since the epoch.
        threads: torch CPU threads for training (0: every core).
        retry_backoff_s: after a failed run, wait this long before trying again.
    """

    def __init__(
        self,
        settings: Settings,
        base_data: Path | None = None,
        catalog: Any = None,
        reader: Any = None,
        clock: Any = time.time,
        threads: int = 0,
        retry_backoff_s: float = 60.0,
    ) -> None:
        from avminer.catalog import default_catalog_url
        from avminer.catalog.catalog import open_catalog
        from avminer.storage import open_reader

        self.settings = settings
        self.t = settings.trainer
        self.base_data = base_data
        self.catalog = catalog or open_catalog(default_catalog_url(settings))
        self.reader = reader or open_reader(settings)
        self.clock = clock
        self.threads = threads
        self.retry_backoff_s = retry_backoff_s
        self.work_dir = Path(self.t.work_dir)
        self.state_path = self.work_dir / STATE_FILE
        self.state = ServiceState.load(self.state_path)
        if not self.state.last_attempt_at:
            # The retrain interval counts from the first start, not from 1970: a first label is not a schedule.
            self.state.last_attempt_at = self.clock()
            self.state.save(self.state_path)

    # -- when ------------------------------------------------------------------------------------------
    def pending_labels(self) -> int:
        """Labeled samples no run has used yet."""
        return len(self.catalog.query_samples(states=["labeled"]))

    def due(self) -> bool:
        """True when a run is in progress, or enough new labels, or the schedule says so (not while a
        failed attempt's back-off lasts)."""
        if self.state.run_id is not None:
            return True
        if self.state.last_failed and self.clock() - self.state.last_attempt_at < self.retry_backoff_s:
            return False
        pending = self.pending_labels()
        if pending >= self.t.retrain_every_labels:
            return True
        return pending > 0 and self.clock() - self.state.last_attempt_at >= self.t.retrain_interval_s

    # -- data --------------------------------------------------------------------------------------------
    def _fleet_frames(self, dataset_version: int, size: tuple[int, int]) -> tuple[Any, Any]:
        """(train, held-out) frames of the frozen fleet dataset, resized to ``size``."""
        from avminer.trainer.data import LabeledFrames, decode_pair

        rows = self.catalog.dataset_samples(DATASET_ID, dataset_version)
        parts: dict[bool, list[tuple[np.ndarray, np.ndarray, str, str]]] = {True: [], False: []}
        for row in rows:
            if not row["frame_uri"] or not row["label_uri"]:
                continue
            img, lab = decode_pair(self.reader(row["frame_uri"]), self.reader(row["label_uri"]), size)
            parts[is_holdout(row["sample_id"])].append((img, lab, row["sample_id"], row["slice"] or "unknown"))

        def frames(items: list[tuple[np.ndarray, np.ndarray, str, str]]) -> LabeledFrames | None:
            if not items:
                return None
            return LabeledFrames(np.stack([i[0] for i in items]), np.stack([i[1] for i in items]),
                                 [i[2] for i in items], [i[3] for i in items], ["fleet"] * len(items))

        return frames(parts[False]), frames(parts[True])

    # -- one run -----------------------------------------------------------------------------------------
    def run_once(self, stop: threading.Event | None = None) -> dict[str, Any]:
        """Freeze the labels, train, gate, release, record; returns the run's summary (kept in the state).

        ``stop`` set while training ends the run after the epoch in progress (summary ``result``
        ``interrupted``): the state keeps the run, and the next call resumes it. Errors propagate with the
        run still in the state; :meth:`attempt` is what drops a failed run.
        """
        run_id, version = self._begin_run()
        run_dir = self.work_dir / "runs" / run_id
        production = self._production_bundle()
        size = (production.input_height, production.input_width) if production else (
            self.t.input_height, self.t.input_width)
        train, held = self._run_frames(run_id, version, run_dir, size)
        prod_model, result = self._train(production, train, held, run_dir, stop)
        if not result.completed:
            log.info("run %s stopped after epoch %d of %d; it resumes at the next start", run_id,
                     len(result.history), self.t.epochs)
            return {"run_id": run_id, "dataset_version": version, "result": "interrupted",
                    "epochs_done": len(result.history)}
        report = self._gate(result.model, prod_model, held)
        summary: dict[str, Any] = {"run_id": run_id, "dataset_version": version, "train_frames": len(train),
                                   "held_out_frames": len(held), "gate": report.as_dict()}
        summary.update(self._conclude(run_id, version, report, result, production, train, run_dir / "bundle", size))
        self._finish(summary)
        return summary

    def _begin_run(self) -> tuple[str, int]:
        """(run id, frozen dataset version): the run in progress, else a new one on a fresh dataset version."""
        from avminer.catalog.catalog import DatasetQuery

        st = self.state
        if st.run_id is None:
            st.run_id = self._new_run_id()
            # Frozen now, recorded (and its samples marked used) only once the run has an outcome.
            ds = self.catalog.create_dataset(DATASET_ID, DatasetQuery(labeled_only=True))
            st.dataset_version = ds.version
            st.save(self.state_path)
        return st.run_id, int(st.dataset_version or 0)

    def _production_bundle(self) -> Any:
        """The bundle in production (the last release, else ``engine.bundle``, else the starter), if on disk."""
        from avminer.engines import default_bundle_path
        from avminer.engines.bundle import load_bundle

        prod_path = Path(self.state.production or self.settings.engine.bundle or default_bundle_path())
        return load_bundle(prod_path) if (prod_path / "manifest.json").exists() else None

    def _run_frames(self, run_id: str, version: int, run_dir: Path, size: tuple[int, int]) -> tuple[Any, Any]:
        """(train, held-out) frames: the base CamVid data's splits plus the frozen fleet labels."""
        from avminer.trainer.data import LabeledFrames
        from avminer.trainer.run import RunSpec, load_camvid_splits
        from avminer.trainer.train import TrainConfig

        train_parts: list[LabeledFrames] = []
        held_parts: list[LabeledFrames] = []
        if self.base_data is not None:
            spec = RunSpec(self.base_data, run_dir / "bundle", run_dir, input_hw=size,
                           train=TrainConfig(progress=False))
            base_train, base_held = load_camvid_splits(spec)
            train_parts.append(base_train)
            held_parts.append(base_held)
        fleet_train, fleet_held = self._fleet_frames(version, size)
        train_parts += [fleet_train] if fleet_train is not None else []
        held_parts += [fleet_held] if fleet_held is not None else []
        if not train_parts or not held_parts:
            raise TrainerError(f"run {run_id}: need training and held-out frames (base data or more fleet labels)")
        return LabeledFrames.concat(train_parts), LabeledFrames.concat(held_parts)

    def _train(
        self, production: Any, train: Any, held: Any, run_dir: Path, stop: threading.Event | None
    ) -> tuple[Any, Any]:
        """(production model or None, training result): the candidate fine-tuned from production."""
        from avminer.models.arch import erfnet_arch
        from avminer.models.ensemble import build_ensemble, load_ensemble
        from avminer.trainer.train import TrainConfig, train_ensemble

        prod_model = load_ensemble(production.torch_path) if production and production.torch_path else None
        arch = prod_model.arch if prod_model is not None else erfnet_arch(self.t.width, members=self.t.members)
        model = build_ensemble(arch, seed=0)
        if prod_model is not None:
            model.load_state_dict(prod_model.state_dict())  # fine-tune from production
        cfg = TrainConfig(epochs=self.t.epochs, batch_size=self.t.batch_size, lr=self.t.lr, beta=self.t.dpe_beta,
                          threads=self.threads, progress=False)
        result = train_ensemble(model, train, cfg, run_dir, eval_frames=held,
                                should_stop=stop.is_set if stop is not None else None)
        return prod_model, result

    def _gate(self, candidate: Any, prod_model: Any, held: Any) -> Any:
        """Compare candidate and production per slice (fog copies included); the gauges show both."""
        from avminer import metrics as prom
        from avminer.trainer.gates import compare, gate_groups, gate_metrics

        gated = gate_groups(held)  # the fog copies, made once for both models
        report = compare(gate_metrics(candidate, held, prepared=gated),
                         gate_metrics(prod_model, held, prepared=gated) if prod_model is not None else None,
                         self.t.gate_margin)
        for s in report.slices:
            if s.candidate is not None:
                prom.GATE_MIOU.labels(slice=s.slice, model="candidate").set(s.candidate)
            if s.production is not None:
                prom.GATE_MIOU.labels(slice=s.slice, model="production").set(s.production)
        return report

    def _conclude(
        self, run_id: str, version: int, report: Any, result: Any, production: Any, train: Any,
        bundle_dir: Path, size: tuple[int, int],
    ) -> dict[str, Any]:
        """Refuse (recorded) or export, release and record the candidate; the summary's outcome fields."""
        from avminer import metrics as prom
        from avminer.taxonomy import CAMVID
        from avminer.trainer.gates import enforce
        from avminer.trainer.release import export_release_bundle, fit_reference, release

        try:
            enforce(report)
        except GateRefusedError as exc:
            log.warning("run %s refused by the gates:\n%s", run_id, report.table())
            self.catalog.record_training_run(run_id, DATASET_ID, version, notes="avminer train serve: refused")
            prom.TRAIN_RUNS.labels(result="refused").inc()
            return {"result": "refused", "error": str(exc).splitlines()[0]}
        bundle = export_release_bundle(
            result.model, bundle_dir, version=run_id, input_hw=size,
            reference=fit_reference(result.model, train), metrics=result.metrics, gate_quality=report.quality(),
            trained_on={"dataset": DATASET_ID, "dataset_version": version, "frames": len(train)},
            classes=production.classes if production else list(CAMVID.classes),
        )
        outcome: dict[str, Any] = {}
        if self.settings.kafka.bootstrap_servers and self.settings.sinks.s3.endpoint_url:
            record = release(bundle.path, self.settings, gate_report=report, dataset_id=f"{DATASET_ID}@{version}")
            outcome["bundle_uri"] = record.bundle_uri
        self.state.production = str(bundle.path)
        self.catalog.record_training_run(run_id, DATASET_ID, version, model_version=run_id,
                                         notes="avminer train serve: released")
        prom.TRAIN_RUNS.labels(result="released").inc()
        outcome["result"] = "released"
        return outcome

    def _new_run_id(self) -> str:
        """``run-<UTC time>-<n>``: unique even for two attempts in one second (a failed one keeps its dir)."""
        stamp = time.strftime("run-%Y%m%d-%H%M%S", time.gmtime(self.clock()))
        n = len(self.state.runs) + 1
        while (self.work_dir / "runs" / f"{stamp}-{n}").exists():
            n += 1
        return f"{stamp}-{n}"

    def _finish(self, summary: dict[str, Any]) -> None:
        """Close the run in the state: outcome kept, nothing in progress, the attempt's time noted."""
        st = self.state
        st.runs.append(summary)
        st.run_id, st.dataset_version = None, None
        st.last_attempt_at = self.clock()
        st.last_failed = summary["result"] == "failed"
        st.save(self.state_path)

    def attempt(self, stop: threading.Event | None = None) -> dict[str, Any]:
        """:meth:`run_once`, and if it fails: log, count, forget the run (its labels stay pending).

        Returns:
            The run's summary; ``result`` is ``released``, ``refused``, ``interrupted`` or ``failed``.
        """
        from avminer import metrics as prom

        run_id = self.state.run_id
        try:
            return self.run_once(stop)
        except Exception as exc:  # a failed run must not take the service down with it
            prom.TRAIN_RUNS.labels(result="failed").inc()
            log.exception("training run failed; the production model stays, its labels stay pending and are "
                          "retried in %.0f s", self.retry_backoff_s)
            summary = {"run_id": self.state.run_id or run_id, "dataset_version": self.state.dataset_version,
                       "result": "failed", "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            self._finish(summary)
            return summary

    # -- loop ------------------------------------------------------------------------------------------
    def _due_or_wait(self) -> bool:
        """:meth:`due`, False (try again next cycle) when the catalog cannot be asked right now."""
        try:
            return self.due()
        except AvminerError as exc:
            log.warning("cannot count pending labels (%s); asking again in the next cycle", exc)
            return False

    def serve(self, stop: threading.Event, poll_s: float = 10.0) -> None:
        """Wait for labels (Kafka wake-ups, or polling when embedded) and run whenever :meth:`due`.

        Returns once ``stop`` is set: between runs within ``poll_s``, during a run after its epoch in progress.
        """
        consumer = None
        if self.settings.kafka.bootstrap_servers:
            from kafka import KafkaConsumer

            from avminer.sources.kafka_tls import check_kafka_tls

            check_kafka_tls(self.settings.kafka)  # wrong TLS settings: one line now, not a client's retry loop
            consumer = KafkaConsumer(
                self.settings.topics.label_results, group_id="avminer-trainer",
                **self.settings.kafka.client_kwargs(), enable_auto_commit=True,
                max_poll_interval_ms=max(self.settings.kafka.max_poll_interval_ms, 60000),
                session_timeout_ms=self.settings.kafka.session_timeout_ms,
                heartbeat_interval_ms=self.settings.kafka.heartbeat_interval_ms,
            )
        log.info("trainer service: work dir %s, retrain after %d labels or every %.0f s",
                 self.work_dir, self.t.retrain_every_labels, self.t.retrain_interval_s)
        try:
            while not stop.is_set():
                if self._due_or_wait():
                    summary = self.attempt(stop)
                    log.info("run %s: %s", summary["run_id"], summary["result"])
                    if stop.is_set():
                        break
                if consumer is not None:
                    consumer.poll(timeout_ms=int(poll_s * 1000))  # a label result wakes us early
                else:
                    stop.wait(poll_s)
        finally:
            if consumer is not None:
                consumer.close()


def serve(
    settings: Settings, base_data: Path | None = None, stop: threading.Event | None = None, threads: int = 0
) -> int:
    """Run the trainer service until SIGINT/SIGTERM (or ``stop``)."""
    import signal

    if stop is None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    TrainerService(settings, base_data, threads=threads).serve(stop)
    return 0
