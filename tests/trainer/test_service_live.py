"""Service mode against the real services: label results on the broker, frames and releases in SeaweedFS,
the catalog in PostgreSQL.

The label consumer (the product's :class:`LabelResultConsumer`) applies label results from the
label-results topic to the catalog; the trainer service (:meth:`TrainerService.serve`, a thread with a stop
event) wakes on the same topic, retrains once N labels are pending, gates, uploads the bundle and publishes
a ModelRelease. Stopped and started again from its state file, it fine-tunes the released model on the next
N labels and gates against it.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from avminer.catalog.catalog import open_catalog
from avminer.config import Settings, load_settings
from avminer.events import codec
from avminer.events.records import Decision, LabelResult, ModelRelease
from avminer.labels.consumer import LabelApplier, LabelResultConsumer
from avminer.models import build_ensemble, erfnet_arch
from avminer.storage.bundles import MANIFEST
from avminer.storage.s3 import S3FrameStore, parse_s3_uri
from avminer.trainer.release import export_release_bundle
from avminer.trainer.service import STATE_FILE, ServiceState, TrainerService, is_holdout
from tests.integration.support import FAST_GROUP, TopicReader, with_schema
from tests.mining.support import produce
from tests.services import KafkaBroker, S3Server
from tests.trainer.conftest import H, W, make_frames

N = 8  # trainer.retrain_every_labels


def png(array: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@contextmanager
def running(target: Callable[[threading.Event], object], name: str) -> Iterator[threading.Event]:
    """Run ``target(stop)`` in a thread; on exit set ``stop`` and require a clean return within 60 s."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target(stop)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive(), f"{name} did not stop within 60 s of its stop event"
    if errors:
        raise errors[0]


def label_consumer(settings: Settings, group: str) -> Callable[[threading.Event], object]:
    def run(stop: threading.Event) -> None:
        catalog = open_catalog(settings.sinks.catalog_url)
        consumer = LabelResultConsumer(settings, LabelApplier(catalog, S3FrameStore.from_settings(settings.sinks.s3)),
                                       group_id=group, consumer_overrides=FAST_GROUP)
        try:
            consumer.run(stop)
        finally:
            consumer.close()
            catalog.close()

    return run


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(0.2)


def run_problem(service: TrainerService) -> str | None:
    """Why no release will come (a run that failed or was refused), or None."""
    bad = [r for r in service.state.runs if r["result"] != "released"]
    return f"a run ended {bad[0]}" if bad else None


@pytest.mark.slow
def test_labels_on_the_broker_retrain_gate_release_and_resume(
    kafka: KafkaBroker, s3: S3Server, postgres_url: str, tmp_path: Path, unique: str
) -> None:
    topics = {name: kafka.topic(name.replace("_", "-")) for name in ("label_results", "releases", "dead_letter")}
    bucket = s3.bucket("fleet")
    catalog_url = with_schema(postgres_url, f"trainer_{unique}")
    model = build_ensemble(erfnet_arch(width=0.25, members=2), seed=0).eval()
    prod = export_release_bundle(model, tmp_path / "prod", version="prod-0", input_hw=(H, W), reference=None)
    settings = load_settings(environ={}, overrides={
        "kafka": {"bootstrap_servers": kafka.bootstrap, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
                  "max_poll_interval_ms": 5000},
        "topics": topics,
        "engine": {"bundle": str(prod.path)},
        "sinks": {"output_dir": str(tmp_path / "out"), "catalog_url": catalog_url,
                  "s3": {"endpoint_url": s3.endpoint_url, "bucket": bucket, "access_key_id": "any",
                         "secret_access_key": "any"}},
        "trainer": {"work_dir": str(tmp_path / "work"), "epochs": 1, "batch_size": 4, "members": 2, "width": 0.25,
                    "input_height": H, "input_width": W, "retrain_every_labels": N, "gate_margin": 1.0},
    })
    # 16 mined samples, frames in S3: 8 labeled in the first round (s002 day and s005 dusk gate, by their
    # id hash), 8 in the second.
    frames = make_frames(16, slices=("day/clear/cam", "dusk/clear/cam"))
    ids = [f"s{i:03d}" for i in range(16)]
    assert [i for i, sid in enumerate(ids[:8]) if is_holdout(sid)] == [2, 5]
    store = S3FrameStore.from_settings(settings.sinks.s3)
    catalog = open_catalog(catalog_url)
    try:
        for i, sid in enumerate(ids):
            uri = store.put(sid, png(frames.images[i]), "image/png")
            catalog.upsert_decision(Decision(sample_id=sid, frame_id=sid, vehicle_id="v1", camera_id="front",
                                             timestamp_us=1_000 + i, model_version="prod-0", slice=frames.slices[i],
                                             mined=True), frame_uri=uri, width=W, height=H)

        def send_labels(index: range) -> None:
            produce(kafka.bootstrap, topics["label_results"], [
                (ids[i].encode(), codec.encode(LabelResult(sample_id=ids[i], labeler="oracle", labeled_at_us=2_000 + i,
                                                           mask_png=png(frames.labels[i])))) for i in index])

        def labeled() -> int:
            return len(catalog.query_samples(states=["labeled", "used"]))

        service = TrainerService(settings, threads=1)
        with (TopicReader(kafka.bootstrap, topics["releases"]) as releases,
              running(label_consumer(settings, f"labels-{unique}"), "label-consumer"),
              running(lambda stop: service.serve(stop, poll_s=0.3), "trainer-service") as stop_service):
            # Fewer than N labels: applied to the catalog, but no run.
            send_labels(range(4))
            wait_until(lambda: labeled() == 4, 60, "4 labels applied by the label consumer")
            time.sleep(1.5)  # several service cycles
            assert service.state.runs == [] and service.state.run_id is None and catalog.list_datasets() == []
            # N reached: one run, gated and released.
            send_labels(range(4, 8))
            releases.wait_for(lambda rs: len(rs) >= 1, 120, "a ModelRelease", alive=lambda: run_problem(service))
            first = codec.decode_as(releases.records[0].value, ModelRelease)
            stop_service.set()  # clean stop between runs: the serve loop returns within a poll
        summary = service.state.runs[-1]

        # The release message and what it points to in S3.
        assert (summary["result"], first.version, first.dataset_id) == ("released", summary["run_id"], "fleet@1")
        assert first.bundle_uri == f"s3://{bucket}/releases/{first.version}/" and first.members == 2
        assert releases.records[0].key == first.version.encode()
        gate = json.loads(first.gate_report or "{}")
        assert gate["passed"] and {s["slice"] for s in gate["slices"]} == {"all", "day", "dusk", "fog", "region:cam"}
        client = s3.client()
        _, prefix = parse_s3_uri(first.bundle_uri)
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        objects = {o["Key"][len(prefix):]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}
        manifest = json.loads(objects[MANIFEST])
        assert hashlib.sha256(objects[MANIFEST]).hexdigest() == first.manifest_sha256
        assert set(objects) == {*manifest["files"], MANIFEST}
        assert all(hashlib.sha256(objects[rel]).hexdigest() == sha for rel, sha in manifest["files"].items())
        assert manifest["version"] == first.version and manifest["trained_on"]["dataset_version"] == 1
        assert manifest["plan_build"]["status"] in {"skipped", "built"}
        # The catalog: the 8 labels are used by that run, which produced that model.
        assert {r.sample_id for r in catalog.query_samples(states=["used"])} == set(ids[:8])
        assert [(r["run_id"], r["dataset_version"]) for r in catalog.training_runs(first.version)] == [(first.version, 1)]

        # The state file, then a fresh service resuming from it: the released model is production now.
        state = ServiceState.load(Path(settings.trainer.work_dir) / STATE_FILE)
        assert state.run_id is None and state.runs[-1]["bundle_uri"] == first.bundle_uri
        assert Path(state.production or "").name == "bundle" and first.version in (state.production or "")
        resumed = TrainerService(settings, threads=1)
        assert resumed.state.production == state.production and not resumed.due()
        with (TopicReader(kafka.bootstrap, topics["releases"]) as releases,
              running(label_consumer(settings, f"labels-{unique}"), "label-consumer"),
              running(lambda stop: resumed.serve(stop, poll_s=0.3), "trainer-service-2")):
            send_labels(range(8, 16))
            releases.wait_for(lambda rs: len(rs) >= 2, 120, "a second ModelRelease", alive=lambda: run_problem(resumed))
        second = codec.decode_as(releases.records[1].value, ModelRelease)
        assert second.version != first.version and second.dataset_id == "fleet@2"
        gate = json.loads(second.gate_report or "{}")
        assert all(s["production"] is not None for s in gate["slices"])  # gated against the first release
        assert catalog.stats()["by_state"]["used"] == 16
    finally:
        catalog.drop_schema()
        catalog.close()
