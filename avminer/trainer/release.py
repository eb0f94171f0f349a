"""From a trained ensemble to a released model: reference statistics, bundle, parity, plans, S3, ModelRelease.

The bundle itself is written by :func:`avminer.engines.export.export_bundle` (ONNX with all members and
the feature head, ``model.pt``, ``reference_stats.npz``; it checks ONNX Runtime against torch). This module
adds what the trainer knows: the shift reference fitted on the training frames per slice, the metrics
per slice, what the model was trained on; and the release steps (TensorRT plans, upload, announce).

TensorRT plans (:func:`build_tensorrt_plans`): where the releasing machine has a CUDA device and the
``tensorrt`` package imports, the release builds this GPU's plan with the engine code's own
:func:`avminer.engines.tensorrt_backend.build_plan` (``plans/<sm..-trt..>.plan`` plus its timing cache,
listed with their sha256 under ``files`` and keyed under ``plans`` / ``plan_info`` in the manifest, as
the TensorRT engine reads them) and checks it against ONNX Runtime before anything is uploaded. Elsewhere
it builds nothing and says why; miners with another GPU build their own (``avminer engine build``).
Either way the manifest's ``plan_build`` records what happened.
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
from avminer.taxonomy import CAMVID
from avminer.trainer.data import VOID, LabeledFrames
from avminer.trainer.train import SliceMetrics, extract_features

log = logging.getLogger(__name__)

MIN_REFERENCE_FRAMES = 2  # the pooled Gaussian's minimum (slices below ShiftReference.fit's min_count use it)


def fit_reference(model: Ensemble, frames: LabeledFrames, batch_size: int = 16) -> Any:
    """A :class:`avminer.scoring.shift.ShiftReference` of the model's features on ``frames``, per slice key
    (plus the pooled reference, which ``fit`` adds)."""
    from avminer.scoring.shift import ShiftReference

    if len(frames) < MIN_REFERENCE_FRAMES:
        raise TrainerError(f"the shift reference needs at least {MIN_REFERENCE_FRAMES} training frames, got "
                           f"{len(frames)}; train on more labels (or base data)")
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
    gate_quality: dict[str, dict[str, float]] | None = None,
) -> Any:
    """Write a verified bundle (ONNX + model.pt + reference stats + manifest) and check ORT parity.

    ``gate_quality`` (:meth:`avminer.trainer.gates.GateReport.quality`: the model's mIoU and frames per gate
    slice) goes into the manifest, where the miners' selection policy reads it on hot-swap
    (:mod:`avminer.selection.quality`).

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
        **({"gate_quality": gate_quality} if gate_quality else {}),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    model = model.eval()
    return export_bundle(
        model, arch, out_dir, version=version, classes=list(classes or CAMVID.classes), void_index=VOID,
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


# -- release: TensorRT plans, upload and announce -------------------------------------------------------


def plan_skip_reason() -> str | None:
    """Why this machine cannot build TensorRT plans, or None when it can (a CUDA device and tensorrt)."""
    from avminer.utils.imports import is_cuda_available, is_tensorrt_available

    if not is_cuda_available():
        return "no CUDA device here (torch.cuda.is_available() is False)"
    if not is_tensorrt_available():
        return "the tensorrt package does not import here (pip install 'avminer[gpu]')"
    return None


def build_tensorrt_plans(bundle_path: str | Path, fp16: bool = True) -> dict[str, Any]:
    """Add this GPU's TensorRT plan to a bundle, or record why there is none; returns the record.

    The record goes to the manifest as ``plan_build``: ``{"status": "built", "key", "precision",
    "parity"}`` (TensorRT vs ONNX Runtime, :func:`avminer.engines.tensorrt_backend.check_tensorrt_parity`),
    ``{"status": "present", "key"}`` when the bundle already has a plan for this GPU, or
    ``{"status": "skipped", "reason"}``.

    Raises:
        EngineError: the build failed, or the plan disagrees with ONNX Runtime beyond its tolerance.
    """
    from avminer.engines.bundle import load_bundle, write_manifest

    bundle = load_bundle(bundle_path)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    reason = plan_skip_reason()
    if reason is not None:
        log.warning("release %s: TensorRT plans skipped: %s; GPU miners build their own (avminer engine build)",
                    bundle.version, reason)
        record: dict[str, Any] = {"status": "skipped", "reason": reason, "at": at}
    else:
        from avminer.engines.tensorrt_backend import build_plan, check_tensorrt_parity, current_key

        key = str(current_key())
        if key in bundle.manifest.get("plans", {}):
            record = {"status": "present", "key": key, "at": at}
        else:
            bundle = build_plan(bundle, fp16=fp16)
            parity = check_tensorrt_parity(bundle)
            record = {"status": "built", "key": key, "precision": parity["precision"], "at": at,
                      "parity": {k: v for k, v in parity.items() if isinstance(v, float)}}
            log.info("release %s: TensorRT plan %s built (%s), parity %s", bundle.version, key,
                     parity["precision"], record["parity"])
    write_manifest(bundle, {**bundle.manifest, "plan_build": record})
    return record


def upload_bundle(bundle_path: str | Path, s3_settings: Any, prefix: str = "releases", client: Any = None) -> str:
    """Upload every file of a bundle to ``s3://<bucket>/<prefix>/<version>/``; the manifest goes last.

    Miners fetch with :func:`avminer.engines.hotswap.fetch_bundle`, which lists the prefix, checks the
    manifest's sha256 against the release and then downloads the files it names.

    Returns:
        The bundle URI (``s3://bucket/prefix/version/``).

    Raises:
        TrainerError: the bundle does not verify, or S3 refused an upload.
    """
    from avminer.engines.bundle import load_bundle
    from avminer.errors import SinkError
    from avminer.storage.bundles import MANIFEST, upload_files
    from avminer.storage.s3 import make_client

    bundle = load_bundle(bundle_path)
    bucket = s3_settings.bucket
    base = f"{prefix.strip('/')}/{bundle.version}/"
    try:
        return upload_files(bundle.path, [*sorted(bundle.manifest["files"]), MANIFEST], bucket, base,
                            client or make_client(s3_settings))
    except SinkError as exc:
        raise TrainerError(f"uploading bundle {bundle.version} to s3://{bucket}/{base} failed: {exc}") from exc


def make_release(
    bundle_path: str | Path,
    bundle_uri: str,
    gate_report: Any | None = None,
    dataset_id: str | None = None,
    notes: str = "",
) -> ModelRelease:
    """The :class:`ModelRelease` record announcing a bundle stored at ``bundle_uri``."""
    from avminer.engines.bundle import load_bundle
    from avminer.storage.bundles import MANIFEST, sha256_file

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
    plans: bool = True,
    plan_fp16: bool = True,
) -> ModelRelease:
    """Check ORT parity, build TensorRT plans where possible, upload the bundle to S3 and announce it.

    The last steps of a gated release. ``plans``: run :func:`build_tensorrt_plans` (a plan on a GPU
    machine, a recorded skip elsewhere) before the upload, so the announced manifest checksum covers it.

    Raises:
        GateRefusedError: ``gate_report`` did not pass (nothing is uploaded).
        EngineError: ONNX Runtime and torch disagree beyond 1e-4, or a TensorRT plan failed to build or
            disagrees with ONNX Runtime.
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
    if plans:
        build_tensorrt_plans(bundle.path, fp16=plan_fp16)
    uri = upload_bundle(bundle.path, settings.sinks.s3, client=client)
    record = make_release(bundle.path, uri, gate_report, dataset_id, notes)
    publish_release(record, settings, producer=producer)
    return record
