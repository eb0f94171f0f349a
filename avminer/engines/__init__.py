"""Inference engines: model bundles and the backends that run them.

- :mod:`~avminer.engines.bundle`: the bundle format (manifest, checksums, ONNX contract).
- :mod:`~avminer.engines.base`: the :class:`Engine` interface, :class:`EngineOutput`, :func:`resize_batch`.
- backends: :mod:`~avminer.engines.ort` (ONNX Runtime, the CPU default), :mod:`~avminer.engines.torch_backend`,
  :mod:`~avminer.engines.tensorrt_backend` (GPU).
- :mod:`~avminer.engines.export`: torch ensemble -> bundle; :mod:`~avminer.engines.hotswap`: model releases.

Importing this package does not import torch or tensorrt; :func:`open_engine` imports the backend it picks.
"""

from __future__ import annotations

import logging
from pathlib import Path

from avminer.engines.base import Engine, EngineOutput, resize_batch
from avminer.engines.bundle import Bundle, load_bundle
from avminer.errors import EngineError
from avminer.utils.imports import is_cuda_available, is_tensorrt_available

__all__ = ["Bundle", "Engine", "EngineOutput", "default_bundle_path", "load_bundle", "open_engine", "resize_batch"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")


def default_bundle_path() -> Path:
    """The starter bundle shipped inside the package (``avminer/data/starter_bundle``)."""
    return Path(__file__).resolve().parent.parent / "data" / "starter_bundle"


def open_engine(
    bundle_or_path: Bundle | str | Path | None = None,
    backend: str = "auto",
    threads: int = 0,
    device: str = "cpu",
) -> Engine:
    """Load a bundle (verifying checksums) and open it on a backend.

    ``auto`` picks TensorRT when tensorrt imports and CUDA is available (building a plan for this machine
    if the bundle lacks one), else ONNX Runtime on the CPU (or its CUDA provider when ``device`` is cuda).

    Args:
        bundle_or_path: a loaded bundle or its directory (default: the starter bundle).
        backend: ``auto``, ``onnxruntime``, ``torch`` or ``tensorrt``.
        threads: CPU intra-op threads for onnxruntime/torch (0: library default).
        device: ``cpu`` or ``cuda[:N]``.

    Raises:
        BundleError: the bundle is missing, corrupt or incompatible.
        BackendUnavailableError: the backend (or its device) is not installed here.
    """
    if backend not in BACKENDS:
        raise EngineError(f"unknown engine backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if isinstance(bundle_or_path, Bundle):
        bundle = bundle_or_path
    else:
        bundle = load_bundle(bundle_or_path if bundle_or_path is not None else default_bundle_path())
    if backend == "auto":
        if is_tensorrt_available() and is_cuda_available():
            from avminer.engines.tensorrt_backend import TensorRTEngine

            try:
                return TensorRTEngine(bundle, device=device)
            except EngineError as exc:  # includes a plan that cannot be built here: ORT still works
                log.warning("TensorRT unusable for model %s (%s); falling back to onnxruntime", bundle.version, exc)
        backend, device = "onnxruntime", _ort_device(device)
    if backend == "tensorrt":
        from avminer.engines.tensorrt_backend import TensorRTEngine

        return TensorRTEngine(bundle, device=device)
    if backend == "torch":
        from avminer.engines.torch_backend import TorchEngine

        return TorchEngine(bundle, device=device, threads=threads)
    from avminer.engines.ort import OrtEngine

    return OrtEngine(bundle, threads=threads, device=device)


def _ort_device(device: str) -> str:
    """ONNX Runtime on CUDA only where its CUDA provider exists; else say so and use the CPU."""
    if not device.startswith("cuda"):
        return device
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return device
    log.warning("device %s asked for but onnxruntime has no CUDA provider; running on the CPU", device)
    return "cpu"

