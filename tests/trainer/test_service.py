"""Service mode: labeled samples in the catalog trigger a run that freezes them, trains, gates, promotes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from avminer.config import load_settings
from avminer.engines.bundle import load_bundle
from avminer.events.records import Decision
from avminer.models import build_ensemble, erfnet_arch
from avminer.sinks.catalog import open_catalog
from avminer.trainer.release import export_release_bundle
from avminer.trainer.service import ServiceState, TrainerService
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
    blobs = tmp_path / "blobs"
    blobs.mkdir()
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
    svc = TrainerService(settings, catalog=catalog)
    assert svc.pending_labels() == 10 and svc.due()
    summary = svc.run_once()
    assert summary["result"] == "released", summary
    assert summary["train_frames"] + summary["held_out_frames"] == 10
    assert summary["held_out_frames"] >= 1
    bundle = load_bundle(svc.state.production)  # type: ignore[arg-type]
    assert bundle.version == summary["run_id"]
    runs = catalog.training_runs(model_version=summary["run_id"])
    assert [r["dataset_id"] for r in runs] == ["fleet"]
    assert catalog.stats()["by_state"]["used"] == 10
    # a restarted service knows there is nothing new to train on, and which model is in production
    again = TrainerService(settings, catalog=catalog)
    assert not again.due()
    assert again.state.production == svc.state.production
    assert ServiceState.load(again.state_path).runs[0]["result"] == "released"
