"""From a trained ensemble to a released model: reference statistics, bundle, parity, S3, ModelRelease.

The bundle itself is written by :func:`avminer.engines.export.export_bundle` (ONNX with all members and
the feature head, ``model.pt``, ``reference_stats.npz``; it checks ONNX Runtime against torch). This module
adds what the trainer knows: the shift reference fitted on the training frames per slice, the metrics
per slice, what the model was trained on; and the release steps (upload, announce).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from avminer.errors import TrainerError
from avminer.events.records import ModelRelease
from avminer.models.ensemble import Ensemble
from avminer.trainer.data import VOID, LabeledFrames
from avminer.trainer.train import SliceMetrics, extract_features

log = logging.getLogger(__name__)

CAMVID_CLASSES = [
    "sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
]


def fit_reference(model: Ensemble, frames: LabeledFrames, batch_size: int = 16) -> Any:
    """A :class:`avminer.scoring.shift.ShiftReference` of the model's features on ``frames``, per slice key
    (plus the pooled reference, which ``fit`` adds)."""
    from avminer.scoring.shift import ShiftReference

    feats = extract_features(model, frames, batch_size)  # [N, D]
    by_slice: dict[str, np.ndarray] = {}
    for key in sorted(set(frames.slices)):
        idx = [i for i, s in enumerate(frames.slices) if s == key]
        by_slice[key] = feats[idx]
    return ShiftReference.fit(by_slice)


def metrics_manifest(metrics: dict[str, SliceMetrics]) -> dict[str, Any]:
    """The manifest's ``metrics`` field: mIoU and pixel accuracy per slice, frames evaluated."""
    return {
        "miou": {k: round(m.miou, 4) for k, m in metrics.items()},
        "pixel_accuracy": {k: round(m.pixel_accuracy, 4) for k, m in metrics.items()},
        "frames": {k: m.frames for k, m in metrics.items()},
    }


def export_release_bundle(
    model: Ensemble,
    out_dir: str | Path,
    *,
    version: str,
    input_hw: tuple[int, int],
    reference: Any | None,
    metrics: dict[str, SliceMetrics] | None = None,
    trained_on: dict[str, Any] | None = None,
    classes: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Write a verified bundle (ONNX + model.pt + reference stats + manifest) and check ORT parity.

    Returns:
        The :class:`avminer.engines.bundle.Bundle`.

    Raises:
        EngineError: export failed or ONNX Runtime disagrees with torch by more than 1e-4.
    """
    from avminer.engines.export import export_bundle

    arch = model.arch
    fields: dict[str, Any] = {
        **(extra or {}),
        "trained_on": trained_on or {},
        "metrics": metrics_manifest(metrics or {}),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    model = model.eval()
    return export_bundle(
        model, arch, out_dir, version=version, classes=list(classes or CAMVID_CLASSES), void_index=VOID,
        input_hw=input_hw, mean=tuple(arch["mean"]), std=tuple(arch["std"]), reference=reference, extra=fields,
    )


def gate_report_json(report: Any) -> str:
    """A gate report (dataclass with ``as_dict``) as compact JSON for ``ModelRelease.gate_report``."""
    return json.dumps(report.as_dict() if hasattr(report, "as_dict") else report, sort_keys=True)


def bundle_dir_size(path: str | Path) -> int:
    """Bytes of every file under a bundle directory."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def require_input_multiple(input_hw: tuple[int, int], multiple: int = 8) -> None:
    """ERFNet halves the resolution three times: refuse input sizes it cannot restore exactly."""
    h, w = input_hw
    if h % multiple or w % multiple:
        raise TrainerError(f"input size {h}x{w} must be a multiple of {multiple} in both dimensions")


# -- release: upload and announce ---------------------------------------------------------------------


def upload_bundle(bundle_path: str | Path, s3_settings: Any, prefix: str = "releases", client: Any = None) -> str:
    """Upload every file of a bundle to ``s3://<bucket>/<prefix>/<version>/``; the manifest goes last.

    Miners fetch with :func:`avminer.engines.hotswap.fetch_bundle`, which lists the prefix, checks the
    manifest's sha256 against the release and then downloads the files it names.

    Returns:
        The bundle URI (``s3://bucket/prefix/version/``).

    Raises:
        TrainerError: the bundle does not verify, or S3 refused an upload.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from avminer.engines.bundle import MANIFEST, load_bundle
    from avminer.sinks.s3 import make_client

    bundle = load_bundle(bundle_path)
    s3 = client or make_client(s3_settings)
    bucket = s3_settings.bucket
    base = f"{prefix.strip('/')}/{bundle.version}/"
    try:
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError:
            s3.create_bucket(Bucket=bucket)
        for rel in [*sorted(bundle.manifest["files"]), MANIFEST]:
            s3.upload_file(str(bundle.path / rel), bucket, base + rel)
    except (BotoCoreError, ClientError) as exc:
        raise TrainerError(f"uploading bundle {bundle.version} to s3://{bucket}/{base} failed: {exc}") from exc
    return f"s3://{bucket}/{base}"


def make_release(
    bundle_path: str | Path,
    bundle_uri: str,
    gate_report: Any | None = None,
    dataset_id: str | None = None,
    notes: str = "",
) -> ModelRelease:
    """The :class:`ModelRelease` record announcing a bundle stored at ``bundle_uri``."""
    from avminer.engines.bundle import MANIFEST, load_bundle, sha256_file

    bundle = load_bundle(bundle_path)
    return ModelRelease(
        version=bundle.version,
        bundle_uri=bundle_uri,
        manifest_sha256=sha256_file(bundle.path / MANIFEST),
        created_at_us=int(time.time() * 1_000_000),
        members=bundle.members,
        dataset_id=dataset_id,
        gate_report=gate_report_json(gate_report) if gate_report is not None else None,
        notes=notes,
    )


def publish_release(release: ModelRelease, settings: Any, producer: Any = None, timeout_s: float = 30.0) -> None:
    """Send ``release`` to ``settings.topics.releases`` (key: the version) and wait for the broker's ack.

    Raises:
        TrainerError: the broker did not acknowledge within ``timeout_s``.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from avminer.events.codec import encode

    own = producer is None
    try:
        prod = producer or KafkaProducer(**settings.kafka.client_kwargs(), acks="all")
        try:
            prod.send(settings.topics.releases, key=release.version.encode(), value=encode(release)).get(timeout_s)
            prod.flush(timeout_s)
        finally:
            if own:
                prod.close(timeout=5)
    except KafkaError as exc:
        raise TrainerError(
            f"publishing release {release.version} to {settings.topics.releases} failed: {exc}"
        ) from exc
    log.info("published release %s (%s) on %s", release.version, release.bundle_uri, settings.topics.releases)


def release(
    bundle_path: str | Path,
    settings: Any,
    gate_report: Any | None = None,
    dataset_id: str | None = None,
    notes: str = "",
    client: Any = None,
    producer: Any = None,
) -> ModelRelease:
    """Check ORT parity, upload the bundle to S3 and announce it: the last steps of a gated release.

    Raises:
        GateRefusedError: ``gate_report`` did not pass (nothing is uploaded).
        EngineError: ONNX Runtime and torch disagree beyond 1e-4.
        TrainerError: upload or publish failed.
    """
    from avminer.engines.bundle import load_bundle
    from avminer.engines.export import check_parity
    from avminer.trainer.gates import enforce

    if gate_report is not None:
        enforce(gate_report)
    bundle = load_bundle(bundle_path)
    parity = check_parity(bundle)
    log.info("release %s: ORT vs torch max abs diff %s", bundle.version, parity)
    uri = upload_bundle(bundle.path, settings.sinks.s3, client=client)
    record = make_release(bundle.path, uri, gate_report, dataset_id, notes)
    publish_release(record, settings, producer=producer)
    return record
