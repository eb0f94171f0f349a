"""Service mode: labeled samples in the catalog trigger a run that freezes them, trains, gates, promotes."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from avminer.catalog.catalog import open_catalog
from avminer.config import load_settings
from avminer.engines.bundle import load_bundle
from avminer.errors import SinkUnavailableError
from avminer.events.records import Decision
from avminer.models import build_ensemble, erfnet_arch
from avminer.storage import open_reader
from avminer.trainer.release import export_release_bundle
from avminer.trainer.service import ServiceState, TrainerService
from avminer.trainer.train import CHECKPOINT, load_checkpoint
from tests.trainer.conftest import make_frames


def png(array) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def fleet(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A sqlite catalog with 10 labeled samples (frames and masks as files) and a tiny production bundle."""
    catalog = open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    frames = make_frames(10, slices=("day/clear/a", "dusk/clear/a"))
    # Under sinks.output_dir, where the miner's local store puts them: the trainer reads nowhere else.
    blobs = tmp_path / "out" / "blobs"
    blobs.mkdir(parents=True)
    for i, sid in enumerate(f"s{i:02d}" for i in range(10)):
        (blobs / f"{sid}.png").write_bytes(png(frames.images[i]))
        (blobs / f"{sid}_mask.png").write_bytes(png(frames.labels[i]))
        d = Decision(sample_id=sid, frame_id=sid, vehicle_id="v", camera_id="c", timestamp_us=1000 + i,
                     model_version="prod", slice=frames.slices[i], mined=True)
        catalog.upsert_decision(d, frame_uri=(blobs / f"{sid}.png").as_uri(), width=48, height=32)
        catalog.mark_labeled(sid, (blobs / f"{sid}_mask.png").as_uri(), "oracle")
    model = build_ensemble(erfnet_arch(width=0.25, members=2), seed=0).eval()
    prod = export_release_bundle(model, tmp_path / "prod", version="prod", input_hw=(32, 48), reference=None)
    settings = load_settings(environ={}, overrides={
        "engine": {"bundle": str(prod.path)},
        "sinks": {"output_dir": str(tmp_path / "out")},
        "trainer": {"work_dir": str(tmp_path / "work"), "epochs": 1, "batch_size": 4, "members": 2,
                    "retrain_every_labels": 5, "gate_margin": 1.0},
    })
    yield settings, catalog
    catalog.close()


def test_labels_trigger_a_run_that_promotes_the_candidate(fleet) -> None:  # type: ignore[no-untyped-def]
    settings, catalog = fleet
    svc = TrainerService(settings, catalog=catalog, threads=1)
    assert svc.pending_labels() == 10 and svc.due()
    summary = svc.run_once()
    assert summary["result"] == "released", summary
    assert summary["train_frames"] + summary["held_out_frames"] == 10
    assert summary["held_out_frames"] >= 1
    assert {g["slice"] for g in summary["gate"]["slices"]} >= {"all", "day", "region:a"}
    bundle = load_bundle(svc.state.production)  # type: ignore[arg-type]
    assert bundle.version == summary["run_id"]
    # The release ships its gates' figures for the miners' policy (avminer.selection.quality).
    assert {k: v["miou"] for k, v in bundle.manifest["gate_quality"].items()} == {
        g["slice"]: round(g["candidate"], 4) for g in summary["gate"]["slices"] if g["candidate"] is not None}
    runs = catalog.training_runs(model_version=summary["run_id"])
    assert [r["dataset_id"] for r in runs] == ["fleet"]
    assert catalog.stats()["by_state"]["used"] == 10
    # a restarted service knows there is nothing new to train on, and which model is in production
    again = TrainerService(settings, catalog=catalog, threads=1)
    assert not again.due()
    assert again.state.production == svc.state.production
    assert ServiceState.load(again.state_path).runs[0]["result"] == "released"


class FlakyReader:
    """The real blob reader, but the store is down until ``up`` is set."""

    def __init__(self, read: Callable[[str], bytes]) -> None:
        self.read = read
        self.up = False

    def __call__(self, uri: str) -> bytes:
        if not self.up:
            raise SinkUnavailableError(f"store down, cannot read {uri}")
        return self.read(uri)


def test_a_failed_run_leaves_its_labels_pending_and_is_retried(fleet) -> None:  # type: ignore[no-untyped-def]
    settings, catalog = fleet
    now = [1_000_000.0]
    reader = FlakyReader(open_reader(settings))
    svc = TrainerService(settings, catalog=catalog, reader=reader, clock=lambda: now[0], threads=1,
                         retry_backoff_s=60)
    failed = svc.attempt()
    assert failed["result"] == "failed" and "store down" in failed["error"]
    assert failed["dataset_version"] == 1  # it had frozen the labels before it failed ...
    by_state = catalog.stats()["by_state"]
    assert (by_state["labeled"], by_state["used"]) == (10, 0)  # ... and marked none of them used
    assert catalog.training_runs() == [] and svc.pending_labels() == 10
    assert svc.state.run_id is None and svc.state.last_failed
    assert not svc.due()  # backing off
    now[0] += 61
    # The next cycle, in a restarted service: the labels are still pending and get trained on.
    reader.up = True
    again = TrainerService(settings, catalog=catalog, reader=reader, clock=lambda: now[0], threads=1)
    assert again.state.runs == [failed] and again.due()
    released = again.attempt()
    assert released["result"] == "released" and released["run_id"] != failed["run_id"]
    assert released["dataset_version"] == 2 and catalog.stats()["by_state"]["used"] == 10
    assert [r["run_id"] for r in catalog.training_runs()] == [released["run_id"]]
    assert not again.state.last_failed and not again.due()


def test_a_stopped_run_resumes_from_its_checkpoint_on_the_same_dataset(fleet) -> None:  # type: ignore[no-untyped-def]
    settings, catalog = fleet
    settings.trainer.epochs = 2
    stop = threading.Event()
    stop.set()  # asked to stop as soon as the first epoch is done
    svc = TrainerService(settings, catalog=catalog, threads=1)
    stopped = svc.run_once(stop)
    assert stopped["result"] == "interrupted" and stopped["epochs_done"] == 1
    run_dir = Path(settings.trainer.work_dir) / "runs" / stopped["run_id"]
    first = load_checkpoint(run_dir / CHECKPOINT)
    assert first["epoch"] == 1
    state = ServiceState.load(svc.state_path)
    assert (state.run_id, state.dataset_version, state.runs) == (stopped["run_id"], 1, [])
    assert catalog.stats()["by_state"]["used"] == 0  # no outcome yet, nothing recorded
    resumed = TrainerService(settings, catalog=catalog, threads=1)
    assert resumed.due()
    done = resumed.attempt()
    assert (done["run_id"], done["dataset_version"], done["result"]) == (stopped["run_id"], 1, "released")
    final = load_checkpoint(run_dir / CHECKPOINT)
    assert final["epoch"] == 2 and final["history"][0] == first["history"][0]  # epoch 1 was not run again
    assert len(catalog.list_datasets()) == 1 and catalog.stats()["by_state"]["used"] == 10


def test_the_retrain_interval_counts_from_the_first_start(fleet) -> None:  # type: ignore[no-untyped-def]
    settings, catalog = fleet
    settings.trainer.retrain_every_labels = 50  # 10 pending: only the schedule can make a run due
    settings.trainer.retrain_interval_s = 100.0
    now = [5_000.0]
    svc = TrainerService(settings, catalog=catalog, clock=lambda: now[0], threads=1)
    assert not svc.due()
    now[0] += 99
    assert not TrainerService(settings, catalog=catalog, clock=lambda: now[0]).due()  # a restart keeps the start
    now[0] += 1
    assert svc.due()
