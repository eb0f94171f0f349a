"""Inference engines: model bundles and the backends that run them.

- :mod:`~avminer.engines.contract`: what every backend returns (compact in-graph scores, :class:`EngineOutput`).
- :mod:`~avminer.engines.bundle`: the bundle format (manifest, checksums, ONNX graph).
- :mod:`~avminer.engines.base`: the :class:`Engine` interface, :func:`resize_batch`.
- backends, named in :data:`BACKENDS`: :mod:`~avminer.engines.ort` (ONNX Runtime, the CPU default),
  :mod:`~avminer.engines.torch_backend` (CPU, CUDA), :mod:`~avminer.engines.tensorrt_backend` (GPU),
  :mod:`~avminer.engines.null` (precomputed outputs: measures the plumbing around the engine).
- :mod:`~avminer.engines.export`: torch ensemble -> bundle; :mod:`~avminer.engines.hotswap`: model releases.

A new backend is one module with ``open_backend(bundle, threads=, device=, **options) -> Engine`` and
one line in :data:`BACKENDS`. Importing this package does not import torch or tensorrt;
:func:`open_engine` imports the backend it picks.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from avminer.engines.base import Engine, EngineOutput, resize_batch
from avminer.engines.bundle import Bundle, load_bundle
from avminer.errors import EngineError
from avminer.utils.imports import is_cuda_available, is_tensorrt_available

__all__ = ["Bundle", "Engine", "EngineOutput", "default_bundle_path", "load_bundle", "open_engine", "resize_batch"]

log = logging.getLogger(__name__)

BACKENDS: dict[str, str] = {
    "onnxruntime": "avminer.engines.ort",
    "torch": "avminer.engines.torch_backend",
    "tensorrt": "avminer.engines.tensorrt_backend",
    "null": "avminer.engines.null",
}
"""Backend name -> module with an ``open_backend`` factory (imported only when the backend is picked)."""


def default_bundle_path() -> Path:
    """The starter bundle shipped inside the package (``avminer/data/starter_bundle``)."""
    return Path(__file__).resolve().parent.parent / "data" / "starter_bundle"


def open_engine(
    bundle_or_path: Bundle | str | Path | None = None,
    backend: str = "auto",
    threads: int = 0,
    device: str = "cpu",
    **options: Any,
) -> Engine:
    """Load a bundle (verifying checksums) and open it on a backend.

    ``auto`` picks TensorRT when tensorrt imports and CUDA is available (building a plan for this machine
    if the bundle lacks one), else ONNX Runtime on the CPU (or its CUDA provider when ``device`` is cuda).

    Args:
        bundle_or_path: a loaded bundle or its directory (default: the starter bundle).
        backend: ``auto`` or a name in :data:`BACKENDS`.
        threads: CPU intra-op threads for onnxruntime/torch (0: library default).
        device: ``cpu`` or ``cuda[:N]``.
        options: backend-specific (torch: ``precision``, ``compile``, ``max_batch``); backends that
            do not know an option ignore it.

    Raises:
        BundleError: the bundle is missing, corrupt or incompatible.
        BackendUnavailableError: the backend (or its device) is not installed here.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise EngineError(f"unknown engine backend {backend!r}; use auto or one of {', '.join(BACKENDS)}")
    if isinstance(bundle_or_path, Bundle):
        bundle = bundle_or_path
    else:
        bundle = load_bundle(bundle_or_path if bundle_or_path is not None else default_bundle_path())
    if backend == "auto":
        if is_tensorrt_available() and is_cuda_available():
            try:
                return _open(bundle, "tensorrt", threads, device, options)
            except EngineError as exc:  # includes a plan that cannot be built here: ORT still works
                log.warning("TensorRT unusable for model %s (%s); falling back to onnxruntime", bundle.version, exc)
        backend, device = "onnxruntime", _ort_device(device)
    return _open(bundle, backend, threads, device, options)


def _open(bundle: Bundle, backend: str, threads: int, device: str, options: dict[str, Any]) -> Engine:
    module = importlib.import_module(BACKENDS[backend])
    engine: Engine = module.open_backend(bundle, threads=threads, device=device, **options)
    return engine


def _ort_device(device: str) -> str:
    """ONNX Runtime on CUDA only where its CUDA provider exists; else say so and use the CPU."""
    if not device.startswith("cuda"):
        return device
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return device
    log.warning("device %s asked for but onnxruntime has no CUDA provider; running on the CPU", device)
    return "cpu"

