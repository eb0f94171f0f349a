"""``avminer train serve``: retrain when enough new labels arrive or on a schedule; gate; release.

The catalog is the source of truth. The label consumer (``avminer label consume``) validates each
LabelResult and marks its sample ``labeled``; this service follows ``topics.label_results`` only as a
wake-up call (embedded: it polls), counts the catalog's ``labeled`` samples (labeled, not yet used by a
run) and, when there are ``trainer.retrain_every_labels`` of them or ``trainer.retrain_interval_s`` has
passed with at least one, runs one retraining:

1. freeze the labeled samples into the next version of dataset ``fleet`` and record the training run
   (the catalog marks those samples ``used``);
2. train a candidate on the base CamVid-layout data (if given) plus the fleet samples, starting from the
   production weights when the architecture matches, with checkpoints in ``<work_dir>/runs/<run_id>``;
3. gate it per slice against production on held-out frames (the base data's held-out rows and every
   fifth fleet sample); refused: the report is logged and kept, production stays;
4. passed: export the bundle, upload it and publish a ModelRelease (when S3 and Kafka are configured;
   embedded the bundle just becomes the local production model).

``<work_dir>/service_state.json`` remembers the production bundle and a run in progress, so a restarted
service resumes that run from its last epoch checkpoint on the same frozen dataset version.
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
from avminer.errors import GateRefusedError, TrainerError

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
    last_attempt_at: float = 0.0
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
    """

    def __init__(
        self,
        settings: Settings,
        base_data: Path | None = None,
        catalog: Any = None,
        reader: Any = None,
        clock: Any = time.time,
    ) -> None:
        from avminer.sinks import default_catalog_url, open_reader
        from avminer.sinks.catalog import open_catalog

        self.settings = settings
        self.t = settings.trainer
        self.base_data = base_data
        self.catalog = catalog or open_catalog(default_catalog_url(settings))
        self.reader = reader or open_reader(settings)
        self.clock = clock
        self.work_dir = Path(self.t.work_dir)
        self.state_path = self.work_dir / STATE_FILE
        self.state = ServiceState.load(self.state_path)

    # -- when ------------------------------------------------------------------------------------------
    def pending_labels(self) -> int:
        """Labeled samples no run has used yet."""
        return len(self.catalog.query_samples(states=["labeled"]))

    def due(self) -> bool:
        """True when a run is in progress, or enough new labels, or the schedule says so."""
        if self.state.run_id is not None:
            return True
        pending = self.pending_labels()
        if pending >= self.t.retrain_every_labels:
            return True
        return pending > 0 and self.clock() - self.state.last_attempt_at >= self.t.retrain_interval_s

    # -- data --------------------------------------------------------------------------------------------
    def _fleet_frames(self, dataset_version: int, size: tuple[int, int]) -> tuple[Any, Any]:
        """(train, held-out) frames of the frozen fleet dataset, resized to ``size``."""
        from PIL import Image

        from avminer.trainer.data import LabeledFrames, _decode_image, _resize_pair

        rows = self.catalog.dataset_samples(DATASET_ID, dataset_version)
        parts: dict[bool, list[tuple[np.ndarray, np.ndarray, str, str]]] = {True: [], False: []}
        for row in rows:
            if not row["frame_uri"] or not row["label_uri"]:
                continue
            import io

            image = _decode_image(self.reader(row["frame_uri"]))
            label = Image.open(io.BytesIO(self.reader(row["label_uri"])))
            img, lab = _resize_pair(image, label, size)
            parts[is_holdout(row["sample_id"])].append((img, lab, row["sample_id"], row["slice"] or "unknown"))

        def frames(items: list[tuple[np.ndarray, np.ndarray, str, str]]) -> LabeledFrames | None:
            if not items:
                return None
            return LabeledFrames(np.stack([i[0] for i in items]), np.stack([i[1] for i in items]),
                                 [i[2] for i in items], [i[3] for i in items], ["fleet"] * len(items))

        return frames(parts[False]), frames(parts[True])

    # -- one run -----------------------------------------------------------------------------------------
    def run_once(self) -> dict[str, Any]:
        """Freeze the new labels, train, gate, release; returns the run's summary (also kept in the state)."""
        from avminer import metrics as prom
        from avminer.engines import default_bundle_path
        from avminer.engines.bundle import load_bundle
        from avminer.models.arch import erfnet_arch
        from avminer.models.ensemble import build_ensemble, load_ensemble
        from avminer.sinks.catalog import DatasetQuery
        from avminer.trainer.data import LabeledFrames
        from avminer.trainer.gates import compare, enforce
        from avminer.trainer.release import CAMVID_CLASSES, export_release_bundle, fit_reference, release
        from avminer.trainer.run import RunSpec, load_camvid_splits
        from avminer.trainer.train import TrainConfig, evaluate, train_ensemble

        st = self.state
        if st.run_id is None:
            st.run_id = time.strftime("run-%Y%m%d-%H%M%S", time.gmtime(self.clock()))
            ds = self.catalog.create_dataset(DATASET_ID, DatasetQuery(labeled_only=True))
            st.dataset_version = ds.version
            self.catalog.record_training_run(st.run_id, DATASET_ID, ds.version, notes="avminer train serve")
            st.save(self.state_path)
        run_id, version = st.run_id, int(st.dataset_version or 0)
        run_dir = self.work_dir / "runs" / run_id
        prod_path = Path(st.production or self.settings.engine.bundle or default_bundle_path())
        production = load_bundle(prod_path) if (prod_path / "manifest.json").exists() else None
        size = (production.input_height, production.input_width) if production else (
            self.t.input_height, self.t.input_width)
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
        train, held = LabeledFrames.concat(train_parts), LabeledFrames.concat(held_parts)

        prod_model = load_ensemble(production.torch_path) if production and production.torch_path else None
        arch = prod_model.arch if prod_model is not None else erfnet_arch(self.t.width, members=self.t.members)
        model = build_ensemble(arch, seed=0)
        if prod_model is not None:
            model.load_state_dict(prod_model.state_dict())  # fine-tune from production
        cfg = TrainConfig(epochs=self.t.epochs, batch_size=self.t.batch_size, lr=self.t.lr, beta=self.t.dpe_beta,
                          progress=False)
        result = train_ensemble(model, train, cfg, run_dir, eval_frames=held)
        report = compare(result.metrics, evaluate(prod_model, held) if prod_model is not None else None,
                         self.t.gate_margin)
        for s in report.slices:
            if s.candidate is not None:
                prom.GATE_MIOU.labels(slice=s.slice, model="candidate").set(s.candidate)
            if s.production is not None:
                prom.GATE_MIOU.labels(slice=s.slice, model="production").set(s.production)
        summary: dict[str, Any] = {"run_id": run_id, "dataset_version": version, "train_frames": len(train),
                                   "held_out_frames": len(held), "gate": report.as_dict()}
        try:
            enforce(report)
            bundle = export_release_bundle(
                result.model, run_dir / "bundle", version=run_id, input_hw=size,
                reference=fit_reference(result.model, train), metrics=result.metrics,
                trained_on={"dataset": DATASET_ID, "dataset_version": version, "frames": len(train)},
                classes=production.classes if production else CAMVID_CLASSES,
            )
            if self.settings.kafka.bootstrap_servers and self.settings.sinks.s3.endpoint_url:
                record = release(bundle.path, self.settings, gate_report=report,
                                 dataset_id=f"{DATASET_ID}@{version}")
                summary["bundle_uri"] = record.bundle_uri
            self.catalog.record_training_run(run_id, DATASET_ID, version, model_version=run_id)
            st.production = str(bundle.path)
            summary["result"] = "released"
            prom.TRAIN_RUNS.labels(result="released").inc()
        except GateRefusedError as exc:
            log.warning("run %s refused by the gates:\n%s", run_id, report.table())
            summary["result"] = "refused"
            summary["error"] = str(exc).splitlines()[0]
            prom.TRAIN_RUNS.labels(result="refused").inc()
        st.runs.append(summary)
        st.run_id, st.dataset_version = None, None
        st.last_attempt_at = self.clock()
        st.save(self.state_path)
        return summary

    # -- loop ------------------------------------------------------------------------------------------
    def serve(self, stop: threading.Event, poll_s: float = 10.0) -> None:
        """Wait for labels (Kafka wake-ups, or polling when embedded) and run whenever :meth:`due`."""
        from avminer import metrics as prom

        consumer = None
        if self.settings.kafka.bootstrap_servers:
            from kafka import KafkaConsumer

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
                if self.due():
                    try:
                        summary = self.run_once()
                        log.info("run %s: %s", summary["run_id"], summary["result"])
                    except TrainerError:
                        prom.TRAIN_RUNS.labels(result="failed").inc()
                        log.exception("training run failed; the service keeps the production model")
                        self.state.last_attempt_at = self.clock()
                        self.state.run_id = None
                        self.state.save(self.state_path)
                if consumer is not None:
                    consumer.poll(timeout_ms=int(poll_s * 1000))  # a label result wakes us early
                else:
                    stop.wait(poll_s)
        finally:
            if consumer is not None:
                consumer.close()


def serve(settings: Settings, base_data: Path | None = None, stop: threading.Event | None = None) -> int:
    """Run the trainer service until SIGINT/SIGTERM (or ``stop``)."""
    import signal

    if stop is None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    TrainerService(settings, base_data).serve(stop)
    return 0
