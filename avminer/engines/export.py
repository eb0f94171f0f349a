"""Turn a torch ensemble into a model bundle (ONNX graph + torch weights + reference statistics).

The ONNX graph holds all K members behind one input and ends in the scoring head
(:class:`avminer.models.head.CompactEnsemble`), so every backend returns the compact outputs of
:mod:`avminer.engines.contract` (see :mod:`avminer.engines.bundle` for the format). Export uses the TorchScript-based exporter (``dynamo=False``): it needs no extra packages
and handles the ensemble's plain conv/upsample graph exactly; the output is checked with
``onnx.checker`` and, by :func:`check_parity`, against the torch module it came from.
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from avminer.engines.bundle import ONNX_FILE, REFERENCE_FILE, TORCH_FILE, Bundle, write_bundle
from avminer.engines.contract import (
    INPUT_NAME,
    OUTPUT_ARGMAX,
    OUTPUT_FEATURES,
    OUTPUT_PROBS,
    OUTPUT_SCORES,
    OUTPUT_UMAP,
    HeadSpec,
)
from avminer.errors import BundleError, EngineError
from avminer.utils.imports import require_torch

log = logging.getLogger(__name__)

OPSET = 17
PARITY_ATOL = 1e-4
SCORE_ATOL = 1e-3
"""ONNX Runtime vs torch (CPU, float32): largest allowed difference of any frame score. Scores are
means of float32 maps (measured: ~1e-6); the tolerance leaves room for a member's argmax vote or a
top-k pixel that flips on a near-tie, which moves a pooled score by O(1 / pixels)."""
ARGMAX_AGREEMENT = 0.999
"""Fraction of argmax pixels ONNX Runtime and torch must agree on (ties flip a few)."""
_OUTPUT_NAMES = [OUTPUT_SCORES, OUTPUT_FEATURES, OUTPUT_UMAP, OUTPUT_ARGMAX, OUTPUT_PROBS]


class _SavesNpz(Protocol):
    def save(self, path: str | Path) -> Any: ...


def export_onnx(model: Any, input_hw: tuple[int, int], opset: int = OPSET) -> bytes:
    """Export ``model`` to checked ONNX bytes.

    Args:
        model: a :class:`~avminer.models.head.CompactEnsemble` built ``with_probs=True``
            (forward: float32 ``[N, 3, H, W]`` -> scores, features, umap, argmax, probs).
        input_hw: (height, width); the batch axis is dynamic, every other output dim is written into
            the graph so TensorRT and ONNX Runtime see a fully shaped graph.
        opset: ONNX opset.

    Raises:
        EngineError: the exporter or ``onnx.checker`` rejected the model.
    """
    torch = require_torch()
    import onnx

    h, w = input_hw
    model = model.eval()
    dummy = torch.rand(2, 3, h, w) * 255.0  # N=2 so the exporter cannot specialise the batch to 1
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # The legacy exporter warns that it is legacy; it is chosen on purpose (see module docstring).
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                model,
                (dummy,),
                buf,
                input_names=[INPUT_NAME],
                output_names=_OUTPUT_NAMES,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_PROBS: {1: "batch"},
                              **{name: {0: "batch"} for name in _OUTPUT_NAMES if name != OUTPUT_PROBS}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
            outputs = model(dummy)
    except Exception as exc:
        raise EngineError(f"ONNX export failed: {exc}") from exc
    proto = onnx.load_from_string(buf.getvalue())
    _fix_output_shapes(proto, {name: tuple(t.shape) for name, t in zip(_OUTPUT_NAMES, outputs, strict=True)})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise EngineError(f"exported ONNX graph is invalid: {exc}") from exc
    return bytes(proto.SerializeToString())


def _fix_output_shapes(proto: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    """Replace the exporter's symbolic output dims by the known values (the batch axis stays symbolic)."""
    for out in proto.graph.output:
        shape = shapes[out.name]
        batch_axis = 1 if out.name == OUTPUT_PROBS else 0
        for axis, (dim, value) in enumerate(zip(out.type.tensor_type.shape.dim, shape, strict=True)):
            if axis == batch_axis:
                dim.dim_param = "batch"
            else:
                dim.dim_value = int(value)


def compact_model(model: Any, head: HeadSpec, input_hw: tuple[int, int], with_probs: bool = False) -> Any:
    """The ensemble with its scoring head: the module the graph is exported from and torch runs."""
    from avminer.models.head import CompactEnsemble

    return CompactEnsemble(model, head, input_hw, with_probs=with_probs).eval()


def export_bundle(
    model: Any,
    arch: dict[str, Any],
    out_dir: str | Path,
    *,
    version: str,
    classes: list[str],
    void_index: int,
    input_hw: tuple[int, int],
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    reference: _SavesNpz | str | Path | None = None,
    extra: dict[str, Any] | None = None,
    check: bool = True,
    head: HeadSpec | None = None,
    weights: Path | None = None,
) -> Bundle:
    """Export an ensemble into a verified bundle directory (format 2: scoring head in the graph).

    Args:
        model: the ensemble (:class:`avminer.models.Ensemble`: ``member_outputs(images)`` -> logits
            ``[K, N, C, H, W]``, features ``[K, N, D]``); normalisation is inside the model.
        arch: the architecture dict :func:`avminer.models.build_ensemble` rebuilds it from.
        out_dir: bundle directory (replaced atomically).
        version: model version (names the release; every decision carries it).
        classes: class names, index = class id.
        void_index: the label id that means "unlabelled" (not a model output class when == len(classes)).
        input_hw: (height, width) the model runs at.
        mean: per-channel mean the graph subtracts (documentation only: it is baked in).
        std: per-channel std the graph divides by (documentation only).
        reference: a ``ShiftReference`` (anything with ``save(path)``) or a path to its npz.
        extra: more manifest fields (dataset id, gate report, training run, ...).
        check: compare ONNX Runtime against torch on a random batch before returning.
        head: the scoring head (default: :meth:`HeadSpec.for_classes`, the ``ScoringSettings`` defaults).
        weights: an existing ``model.pt`` of this model to ship byte for byte (a re-export), instead of
            serialising ``model`` again.

    Returns:
        The written, checksum-verified bundle.

    Raises:
        EngineError: export failed, or ONNX Runtime and torch disagree beyond the parity tolerances.
        BundleError: the manifest is malformed.
    """
    torch = require_torch()
    h, w = input_hw
    head = head or HeadSpec.for_classes(classes)
    model = model.eval()
    with torch.no_grad():
        logits, feats = model.member_outputs(torch.zeros(1, 3, h, w))  # [K, 1, C, H, W], [K, 1, D]
    k, _, c, oh, ow = logits.shape
    if (oh, ow) != (h, w):
        raise EngineError(f"model outputs {oh}x{ow} probabilities for a {h}x{w} input; it must upsample to the input")
    if c != len(classes):
        raise BundleError(f"model has {c} output classes but {len(classes)} class names were given")
    if c > 255:
        raise BundleError(f"model has {c} classes; the uint8 argmax output holds at most 255")
    onnx_bytes = export_onnx(compact_model(model, head, input_hw, with_probs=True), input_hw)
    mh, mw = head.map_hw(input_hw)
    manifest: dict[str, Any] = {
        **(extra or {}),
        "version": version,
        "members": int(k),
        "input": {
            "height": h, "width": w, "channels": 3, "layout": "NCHW", "dtype": "float32", "range": [0, 255],
            "mean": list(mean) if mean is not None else None, "std": list(std) if std is not None else None,
        },
        "outputs": {
            OUTPUT_SCORES: {"shape": ["N", len(head.score_names())], "dtype": "float32"},
            OUTPUT_FEATURES: {"shape": ["N", "D"], "dtype": "float32"},
            OUTPUT_UMAP: {"shape": ["N", mh, mw], "dtype": head.map_dtype, "scale": head.map_scale(c)},
            OUTPUT_ARGMAX: {"shape": ["N", h, w], "dtype": "uint8"},
            OUTPUT_PROBS: {"shape": ["K", "N", "C", "H", "W"], "kind": "softmax", "on_request": True},
        },
        "head": head.to_manifest(),
        "classes": list(classes),
        "void_index": int(void_index),
        "feature_dim": int(feats.shape[2]),
        "arch": dict(arch),
        "opset": OPSET,
        "exporter": f"torch {torch.__version__} (torchscript)",
    }
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, bytes | Path] = {ONNX_FILE: onnx_bytes, TORCH_FILE: weights or _torch_bytes(model, arch)}
        if reference is not None:
            if isinstance(reference, (str, Path)):
                files[REFERENCE_FILE] = Path(reference)
            else:
                ref_path = Path(tmp) / REFERENCE_FILE
                reference.save(ref_path)
                files[REFERENCE_FILE] = ref_path
        bundle = write_bundle(out_dir, manifest, files)
    if check:
        report = check_parity(bundle, model=model)
        log.info("exported model %s to %s (ORT vs torch %s)", version, bundle.path, report)
    return bundle


def _torch_bytes(model: Any, arch: dict[str, Any]) -> bytes:
    """model.pt bytes: ``{"arch": arch, "state_dict": sd}``, the form :func:`avminer.models.load_ensemble` reads."""
    torch = require_torch()
    from avminer.models import Ensemble, save_ensemble

    if isinstance(model, Ensemble):  # the models package validates the arch it will be rebuilt from
        with tempfile.TemporaryDirectory() as tmp:
            return bytes(save_ensemble(model, arch, Path(tmp) / TORCH_FILE).read_bytes())
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"arch": dict(arch), "state_dict": state}, buf)
    return buf.getvalue()


def check_parity(
    bundle: Bundle,
    model: Any | None = None,
    batch: int = 2,
    atol: float = PARITY_ATOL,
    seed: int = 0,
    score_atol: float = SCORE_ATOL,
) -> dict[str, float]:
    """Run ONNX Runtime and torch (CPU) on the same random frames and compare every output.

    Scores must agree within ``score_atol`` (variation ratios also within what flipped member votes
    explain, see the code), the argmax on :data:`ARGMAX_AGREEMENT` of the pixels, the
    uint8 map within one unit, features and (requested) probabilities within ``atol``. A probability or
    feature difference above ``atol`` is only excused when the net itself is that sensitive to float32
    rounding: then both runs are compared with a float64 torch run, and ONNX Runtime passes if it is no
    farther from it than torch's own float32 run (x2). Deep nets with untrained weights can amplify
    rounding beyond 1e-4 (measured: ERFNet-0.25, K=4, 176x240, BN-calibrated random weights: torch
    float32 vs float64 off by 2.2e-4 on probs); a faithful export cannot do better than float32 itself.

    Args:
        bundle: the bundle to check.
        model: the torch ensemble to compare against (default: rebuilt from the bundle's ``model.pt``).
        batch: frames in the probe batch.
        atol: largest allowed absolute difference on probs and on features.
        seed: seed of the random frames.
        score_atol: largest allowed absolute difference of a frame score.

    Returns:
        ``{"probs", "features", "scores", "umap", "argmax_agreement"}`` (max abs differences; agreement as a
        fraction), plus ``float32_probs``/``float32_features`` when the float64 comparison was needed.

    Raises:
        EngineError: a difference beyond the tolerances that float32 rounding does not explain.
    """
    from avminer.engines.ort import OrtEngine
    from avminer.engines.torch_backend import TorchEngine

    if model is None:
        model = _load_model(bundle)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch, bundle.input_height, bundle.input_width, 3), dtype=np.uint8)
    with OrtEngine(bundle) as ort_engine, TorchEngine(bundle, model=model) as torch_engine:
        a = ort_engine.infer(images, probs=True)
        b = torch_engine.infer(images, probs=True)
    assert a.probs is not None and b.probs is not None
    pred_a = np.stack([a.prediction(i) for i in range(batch)])
    pred_b = np.stack([b.prediction(i) for i in range(batch)])
    report = {
        "probs": float(np.abs(a.probs - b.probs).max()),
        "features": float(np.abs(a.features - b.features).max()),
        "scores": float(np.abs(a.scores - b.scores).max()),
        "umap": float(np.abs(a.umap.astype(np.float32) - b.umap.astype(np.float32)).max()),
        "argmax_agreement": float((pred_a == pred_b).mean()),
    }
    # Variation ratios count the members' argmax votes: a vote that flips on a near-tie moves a pixel by
    # 1/K, and a pooled score by up to that over the fewest pixels a pooling averages (top-k or a grid
    # cell). Allow exactly that per frame on top of the rounding tolerance; every other score is
    # continuous in the probabilities.
    head = bundle.head
    s = head.map_stride
    flips = (a.probs[..., ::s, ::s].argmax(axis=2) != b.probs[..., ::s, ::s].argmax(axis=2)).sum(axis=(0, 2, 3))  # [N]
    mh, mw = head.map_hw((bundle.input_height, bundle.input_width))
    fewest = min(head.topk_count((bundle.input_height, bundle.input_width)), (mh // min(head.grid, mh)) * (mw // min(head.grid, mw)))
    names = list(head.score_names())
    diff = np.abs(a.scores - b.scores)  # [N, S]
    allowed = np.full(diff.shape, score_atol, dtype=np.float64)
    vr = [j for j, name in enumerate(names) if name.startswith("variation_ratio_")]
    allowed[:, vr] += flips[:, None] / (bundle.members * fewest)
    report["vote_flips"] = float(flips.sum())
    head_bad = {"scores": float(diff.max())} if (diff > allowed).any() else {}
    head_bad.update({k: v for k, v in report.items() if k == "argmax_agreement" and not v >= ARGMAX_AGREEMENT})
    if a.umap.dtype == np.uint8 and report["umap"] > 1:
        head_bad["umap"] = report["umap"]
    if head_bad:
        raise EngineError(
            f"model {bundle.version}: ONNX Runtime and torch disagree on the scoring head ({head_bad}; tolerances: "
            f"scores {score_atol}, argmax agreement {ARGMAX_AGREEMENT}, umap 1 unit); the export is not faithful"
        )
    bad = {k: v for k, v in report.items() if k in ("probs", "features") and not v <= atol}
    if not bad:
        return report
    ref_probs, ref_features = _float64_outputs(model, images)
    ort_err = {"probs": np.abs(a.probs - ref_probs).max(), "features": np.abs(a.features - ref_features).max()}
    fp32_err = {"probs": np.abs(b.probs - ref_probs).max(), "features": np.abs(b.features - ref_features).max()}
    report.update({f"float32_{k}": float(v) for k, v in fp32_err.items()})
    if all(ort_err[k] <= max(atol, 2 * fp32_err[k]) for k in bad):
        log.warning(
            "model %s: ONNX Runtime vs torch %s exceeds %g, but torch float32 itself is off by %s from float64: "
            "the net amplifies rounding; the export is faithful", bundle.version, bad, atol,
            {k: f"{v:.2e}" for k, v in fp32_err.items()},
        )
        return report
    raise EngineError(
        f"model {bundle.version}: ONNX Runtime and torch disagree ({bad}, tolerance {atol}) and float32 rounding "
        f"does not explain it (torch float32 vs float64: {report['float32_probs']:.2e} on probs); the export is "
        "not faithful: check for ops the exporter approximates"
    )


def _load_model(bundle: Bundle) -> Any:
    from avminer.models import load_ensemble

    if bundle.torch_path is None:
        raise BundleError(f"{bundle.path}: no model.pt in the bundle; nothing to compare ONNX Runtime with")
    return load_ensemble(bundle.torch_path)


def _float64_outputs(model: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble's probabilities and features computed in float64 (a copy of it): the reference
    both float32 runs approximate."""
    import copy

    torch = require_torch()
    model64 = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float64)  # [N, 3, H, W]
    with torch.inference_mode():
        logits, feats = model64.member_outputs(x)
    return torch.softmax(logits, dim=2).numpy(), feats.mean(dim=0).numpy()


def reexport_bundle(path: str | Path, out_dir: str | Path | None = None, head: HeadSpec | None = None,
                    check: bool = True) -> Bundle:
    """Upgrade a bundle to the current format from its own ``model.pt`` (no retraining).

    Every manifest field but the format-dependent ones (outputs, head, exporter, files) is kept, and so
    are the reference statistics; TensorRT plans are dropped (they were built from the old graph).

    Args:
        path: the bundle directory (any format; checksums are verified against its own manifest).
        out_dir: where to write (default: replace ``path``).
        head: the scoring head (default: the ``ScoringSettings`` defaults for the bundle's classes).
        check: run :func:`check_parity` on the result.

    Raises:
        BundleError: no ``model.pt``, or a corrupt bundle.
    """
    import json

    from avminer.models import load_ensemble
    from avminer.storage.bundles import MANIFEST, sha256_file

    root = Path(path)
    manifest = json.loads((root / MANIFEST).read_text())
    for rel, expected in manifest.get("files", {}).items():
        if not (root / rel).is_file() or sha256_file(root / rel) != expected:
            raise BundleError(f"{root}: {rel} is missing or does not match its checksum; cannot re-export")
    if TORCH_FILE not in manifest.get("files", {}):
        raise BundleError(f"{root}: no {TORCH_FILE}; a bundle without torch weights cannot be re-exported")
    model = load_ensemble(root / TORCH_FILE)
    keep = {k: v for k, v in manifest.items() if k not in (
        "format", "files", "outputs", "head", "exporter", "opset", "plans", "version", "members", "input",
        "classes", "void_index", "feature_dim", "arch")}
    inp = manifest["input"]
    with tempfile.TemporaryDirectory() as tmp:
        # Copies: writing the new bundle over ``root`` removes the originals.
        ref: Path | None = None
        if REFERENCE_FILE in manifest["files"]:
            ref = Path(tmp) / REFERENCE_FILE
            ref.write_bytes((root / REFERENCE_FILE).read_bytes())
        weights = Path(tmp) / TORCH_FILE
        weights.write_bytes((root / TORCH_FILE).read_bytes())
        return export_bundle(
            model, manifest["arch"], out_dir if out_dir is not None else root, version=str(manifest["version"]),
            classes=list(manifest["classes"]), void_index=int(manifest["void_index"]),
            input_hw=(int(inp["height"]), int(inp["width"])),
            mean=tuple(inp["mean"]) if inp.get("mean") else None, std=tuple(inp["std"]) if inp.get("std") else None,
            reference=ref, extra=keep, check=check, head=head, weights=weights,
        )
