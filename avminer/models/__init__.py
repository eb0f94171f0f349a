"""Torch segmentation nets: ERFNet-style members and the K-member ensemble.

Importing this package is light; torch is imported when a torch-backed name is first used, so
``avminer.models.arch`` (the plain-dict architecture description) stays usable without torch.

Public names: :func:`erfnet_arch`, :func:`validate_arch`, :func:`feature_dim` (arch helpers, no torch);
:class:`Ensemble`, :func:`build_ensemble`, :func:`load_ensemble`, :func:`save_ensemble`,
:func:`weight_priors`, :func:`set_mc_dropout` (torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from avminer.models.arch import erfnet_arch, feature_dim, validate_arch

_TORCH_NAMES = {
    "Ensemble": "avminer.models.ensemble",
    "build_ensemble": "avminer.models.ensemble",
    "load_ensemble": "avminer.models.ensemble",
    "save_ensemble": "avminer.models.ensemble",
    "weight_priors": "avminer.models.ensemble",
    "set_mc_dropout": "avminer.models.ensemble",
    "ERFNet": "avminer.models.erfnet",
}

__all__ = ["erfnet_arch", "feature_dim", "validate_arch", *_TORCH_NAMES]


def __getattr__(name: str) -> Any:
    module = _TORCH_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'avminer.models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
