"""Cached probes for heavy and optional dependencies.

``import avminer`` must not import torch or tensorrt; modules that need them call these probes (or
:func:`require_torch`/:func:`require_tensorrt`) at the point of use. CUDA driver mismatches surface as
``OSError``/``RuntimeError`` on import, so those count as "not available" too.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from types import ModuleType

from avminer.errors import BackendUnavailableError


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@cache
def is_torch_available() -> bool:
    """True if torch can be imported."""
    if not _importable("torch"):
        return False
    try:
        import torch  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


@cache
def is_cuda_available() -> bool:
    """True if torch sees at least one CUDA device."""
    if not is_torch_available():
        return False
    import torch

    try:
        return bool(torch.cuda.is_available())
    except (OSError, RuntimeError):
        return False


@cache
def is_tensorrt_available() -> bool:
    """True if the TensorRT Python bindings import (a CUDA device is checked separately)."""
    if not _importable("tensorrt"):
        return False
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def require_torch() -> ModuleType:
    """Import torch or raise a :class:`BackendUnavailableError` that says how to install it."""
    if not is_torch_available():
        raise BackendUnavailableError("torch is not installed: pip install 'torch==2.13.0' (or avminer)")
    import torch

    return torch


def require_tensorrt() -> ModuleType:
    """Import tensorrt or raise a :class:`BackendUnavailableError` that says how to install it."""
    if not is_tensorrt_available():
        raise BackendUnavailableError("TensorRT is not installed: pip install 'avminer[gpu]' on a CUDA machine")
    import tensorrt

    module: ModuleType = tensorrt
    return module
