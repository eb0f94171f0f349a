"""The one inference interface every backend implements, and the image plumbing around it.

An :class:`Engine` runs one bundle's ensemble on a batch of ``uint8`` RGB frames already resized to the
bundle's input size and returns an :class:`EngineOutput`: per-member class probabilities and a pooled
feature vector per frame. Backends (onnxruntime, torch, TensorRT) differ only in :meth:`Engine._run`;
validation, metrics and the version stamp live here so that every backend behaves the same.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import numpy as np

from avminer.engines.bundle import Bundle
from avminer.errors import EngineError
from avminer.metrics import ENGINE_BATCH, ENGINE_LATENCY


@dataclass(frozen=True)
class EngineOutput:
    """What one batch produced, stamped with the model version that produced it.

    Attributes:
        probs: float32 ``[K, N, C, H, W]`` per-member softmax probabilities.
        features: float32 ``[N, D]`` pooled features (shift detection, near-duplicates).
        version: the bundle version that ran this batch (every decision names it).
    """

    probs: np.ndarray
    features: np.ndarray
    version: str


def resize_batch(images: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Resize decoded frames to the engine's input size and stack them.

    Frames already at the size are copied as they are; others go through Pillow's bilinear filter
    (with antialiasing when shrinking, which is what the models were trained with).

    Args:
        images: uint8 ``[h, w, 3]`` RGB frames, any sizes.
        height: output height.
        width: output width.

    Returns:
        uint8 ``[N, height, width, 3]``.

    Raises:
        EngineError: a frame that is not uint8 ``[h, w, 3]``.
    """
    from PIL import Image

    out = np.empty((len(images), height, width, 3), dtype=np.uint8)  # [N, H, W, 3]
    for i, img in enumerate(images):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise EngineError(f"frame {i}: expected uint8 [h, w, 3] RGB, got {img.dtype} {list(img.shape)}")
        if img.shape[0] == height and img.shape[1] == width:
            out[i] = img
        else:
            pil = Image.fromarray(np.ascontiguousarray(img))
            out[i] = np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR))
    return out


def to_nchw_float(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> float32 ``[N, 3, H, W]`` in 0..255 (the ONNX input contract)."""
    out = np.empty((images.shape[0], 3, images.shape[1], images.shape[2]), dtype=np.float32)
    np.copyto(out, images.transpose(0, 3, 1, 2), casting="unsafe")  # one pass: cast and transpose
    return out


class Engine(ABC):
    """An ensemble ready to run, loaded from one bundle.

    Attributes:
        bundle: the (verified) bundle this engine was loaded from.
        backend: ``onnxruntime``, ``torch`` or ``tensorrt``.
    """

    backend: str = "abstract"

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self._closed = False

    @property
    def version(self) -> str:
        """The bundle's model version."""
        return self.bundle.version

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) that :meth:`infer` expects; use :func:`resize_batch` to get there."""
        return self.bundle.input_height, self.bundle.input_width

    def infer(self, images: np.ndarray) -> EngineOutput:
        """Run the ensemble on one batch.

        Args:
            images: uint8 ``[N, H, W, 3]`` RGB at :attr:`input_hw`.

        Returns:
            probs float32 ``[K, N, C, H, W]`` and features float32 ``[N, D]``, stamped with :attr:`version`.

        Raises:
            EngineError: wrong input dtype/shape, a closed engine, or a backend failure.
        """
        if self._closed:
            raise EngineError(f"{self.backend} engine for model {self.version} is closed")
        h, w = self.input_hw
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, 3):
            raise EngineError(
                f"expected uint8 [N, {h}, {w}, 3] frames, got {images.dtype} {list(images.shape)}; "
                "resize with avminer.engines.resize_batch"
            )
        if images.shape[0] == 0:
            raise EngineError("empty batch: call infer with at least one frame")
        start = time.perf_counter()
        probs, features = self._run(np.ascontiguousarray(images))
        ENGINE_LATENCY.labels(backend=self.backend).observe(time.perf_counter() - start)
        ENGINE_BATCH.observe(images.shape[0])
        return EngineOutput(probs=probs, features=features, version=self.version)

    @abstractmethod
    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Backend hook: uint8 ``[N, H, W, 3]`` contiguous -> (probs ``[K, N, C, H, W]``, features ``[N, D]``)."""

    def warmup(self, batch: int = 1, rounds: int = 2) -> None:
        """Run a few throw-away batches so the first real batch does not pay for lazy initialisation."""
        h, w = self.input_hw
        images = np.zeros((batch, h, w, 3), dtype=np.uint8)
        for _ in range(rounds):
            self.infer(images)

    def close(self) -> None:
        """Release the backend's resources; further :meth:`infer` calls raise."""
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        h, w = self.input_hw
        return f"<{type(self).__name__} model={self.version} K={self.bundle.members} input={h}x{w}>"


def check_outputs(bundle: Bundle, probs: np.ndarray, features: np.ndarray, batch: int) -> None:
    """Check one batch's outputs against the bundle's manifest (used by the hot-swap probe).

    Raises:
        EngineError: a shape that disagrees with the manifest, non-finite values, or probabilities that
            do not sum to one over the classes.
    """
    expected = (bundle.members, batch, len(bundle.classes), bundle.input_height, bundle.input_width)
    if probs.shape != expected:
        raise EngineError(f"model {bundle.version}: probs shape {list(probs.shape)}, manifest says {list(expected)}")
    if features.shape != (batch, bundle.feature_dim):
        raise EngineError(
            f"model {bundle.version}: features shape {list(features.shape)}, "
            f"manifest says {[batch, bundle.feature_dim]}"
        )
    if not (np.isfinite(probs).all() and np.isfinite(features).all()):
        raise EngineError(f"model {bundle.version}: non-finite outputs on the probe batch")
    sums = probs.sum(axis=2, dtype=np.float64)  # [K, N, H, W]
    if np.abs(sums - 1.0).max() > 1e-2:  # loose enough for FP16 TensorRT plans
        raise EngineError(
            f"model {bundle.version}: probs do not sum to 1 over classes (off by {np.abs(sums - 1).max():.3g}); "
            "the ONNX graph must end in a softmax"
        )
