"""Release: bundle export with the trainer's fields, S3 upload that miners can fetch, ModelRelease on Kafka."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from avminer.config import load_settings
from avminer.engines.bundle import load_bundle
from avminer.errors import GateRefusedError
from avminer.events.codec import decode_as
from avminer.events.records import ModelRelease
from avminer.models import build_ensemble, erfnet_arch, load_ensemble
from avminer.storage.bundles import MANIFEST, sha256_file
from avminer.trainer.gates import compare
from avminer.trainer.release import (
    build_tensorrt_plans,
    export_release_bundle,
    fit_reference,
    plan_skip_reason,
    release,
)
from avminer.trainer.train import evaluate
from avminer.utils.imports import is_cuda_available, is_tensorrt_available
from tests.trainer.conftest import make_frames

gpu = pytest.mark.skipif(not (is_cuda_available() and is_tensorrt_available()), reason="needs CUDA and TensorRT")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames = make_frames(12, slices=("day/clear/a", "dusk/clear/a"))
    model = build_ensemble(erfnet_arch(width=0.25, members=2), seed=0).eval()
    reference = fit_reference(model, frames)
    out = tmp_path_factory.mktemp("bundle") / "b"
    export_release_bundle(
        model, out, version="t-1", input_hw=(32, 48), reference=reference, metrics=evaluate(model, frames),
        trained_on={"frames": 12},
    )
    return out


def test_bundle_has_what_miners_and_scorers_need(tiny_bundle: Path) -> None:
    from avminer.scoring.shift import ShiftReference

    bundle = load_bundle(tiny_bundle)
    m = bundle.manifest
    assert bundle.version == "t-1" and bundle.members == 2 and bundle.void_index == 11
    assert (bundle.input_height, bundle.input_width) == (32, 48)
    assert len(bundle.classes) == 11 and bundle.arch["members"] == 2
    assert m["feature_dim"] == load_ensemble(bundle.torch_path).feature_dim
    assert set(m["metrics"]["miou"]) == {"day/clear/a", "dusk/clear/a", "all"}
    assert m["trained_on"] == {"frames": 12}
    ref = ShiftReference.load(bundle.reference_path)  # type: ignore[arg-type]
    assert ref.dim == m["feature_dim"]
    assert {"all", "day/clear/a"} <= set(ref.slices)


def test_refused_gate_uploads_nothing(tiny_bundle: Path) -> None:
    report = compare({"all": 0.1}, {"all": 0.5}, 0.02)
    with pytest.raises(GateRefusedError):
        release(tiny_bundle, load_settings(environ={}), gate_report=report, client=object(), producer=object())


def test_release_uploads_and_announces(  # type: ignore[no-untyped-def]
    tiny_bundle: Path, s3, kafka, unique: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kafka import KafkaConsumer

    from avminer.engines.hotswap import fetch_bundle

    tiny_bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))

    topic = kafka.topic("releases")
    bucket = s3.bucket("rel")
    settings = load_settings(environ={}, overrides={
        "kafka": {"bootstrap_servers": kafka.bootstrap},
        "topics": {"releases": topic},
        "sinks": {"s3": {"endpoint_url": s3.endpoint_url, "bucket": bucket, "access_key_id": "any",
                         "secret_access_key": "any"}},
    })
    report = compare({"all": 0.5}, {"all": 0.5}, 0.02)
    with caplog.at_level(logging.WARNING, logger="avminer.trainer.release"):
        record = release(tiny_bundle, settings, gate_report=report, dataset_id="ds-1")
    skipped = plan_skip_reason()
    if skipped is not None:  # this machine: no GPU, so the release says it built no plan, and why
        assert f"TensorRT plans skipped: {skipped}" in caplog.text
    assert record.bundle_uri == f"s3://{bucket}/releases/t-1/"
    assert record.manifest_sha256 == sha256_file(tiny_bundle / MANIFEST)

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=15000, group_id=f"g-{unique}", session_timeout_ms=6000,
                             heartbeat_interval_ms=1000, max_poll_interval_ms=5000)
    try:
        msg = next(iter(consumer))
    finally:
        consumer.close()
    got = decode_as(msg.value, ModelRelease)
    assert got == record and msg.key == b"t-1"

    fetched = fetch_bundle(record.bundle_uri, tmp_path / "cache", s3=settings.sinks.s3,
                           manifest_sha256=record.manifest_sha256, name=record.version)
    assert fetched.version == "t-1"
    plan_build = fetched.manifest["plan_build"]  # recorded in the manifest the release announced
    if skipped is not None:
        assert plan_build["status"] == "skipped" and plan_build["reason"] == skipped and not fetched.manifest.get("plans")
    else:
        assert plan_build["status"] == "built" and fetched.plan_path(plan_build["key"]) is not None
    np.testing.assert_array_equal(np.load(fetched.reference_path)["scale"], np.load(tiny_bundle / "reference_stats.npz")["scale"])  # type: ignore[arg-type]


def test_plan_build_is_skipped_and_recorded_without_a_gpu(tiny_bundle: Path, tmp_path: Path) -> None:
    if plan_skip_reason() is None:
        pytest.skip("this machine can build plans: see the GPU test")
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    files_before = load_bundle(bundle).manifest["files"]
    record = build_tensorrt_plans(bundle)
    assert record["status"] == "skipped" and ("CUDA" in record["reason"] or "tensorrt" in record["reason"])
    reloaded = load_bundle(bundle)  # still verifies: checksums untouched, the record is in the manifest
    assert reloaded.manifest["plan_build"] == record and reloaded.manifest["files"] == files_before
    assert json.loads((bundle / MANIFEST).read_text())["plan_build"]["status"] == "skipped"


@pytest.mark.gpu
@gpu
def test_release_builds_a_checked_plan_on_a_gpu(tiny_bundle: Path, tmp_path: Path) -> None:
    from avminer.engines.tensorrt_backend import current_key, select_plan

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    record = build_tensorrt_plans(bundle, fp16=False)  # FP32: an untrained net magnifies FP16 rounding
    assert record["status"] == "built" and record["key"] == str(current_key())
    reloaded = load_bundle(bundle)  # every file, the plan and its timing cache included, verifies
    plan = select_plan(reloaded, current_key())
    assert plan.relative_to(bundle).as_posix() in reloaded.manifest["files"]
    assert reloaded.manifest["plan_info"][record["key"]]["precision"] == "fp32"
    assert build_tensorrt_plans(bundle)["status"] == "present"
