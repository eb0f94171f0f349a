"""The one inference interface every backend implements, and the image plumbing around it.

An :class:`Engine` runs one bundle's ensemble on a batch of ``uint8`` RGB frames already resized to the
bundle's input size and returns an :class:`~avminer.engines.contract.EngineOutput`: the compact scores,
features, strided uncertainty map and argmax the graph's scoring head computed (full probabilities
only on request). Backends (onnxruntime, torch, TensorRT, null) differ only in :meth:`Engine._run`;
validation, metrics and the version stamp live here so that every backend behaves the same.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

import numpy as np

from avminer.engines.bundle import Bundle
from avminer.engines.contract import EngineOutput, HeadSpec, PredictionFetch, check_output, host_prediction
from avminer.errors import EngineError
from avminer.metrics import ENGINE_BATCH, ENGINE_LATENCY

__all__ = ["Engine", "EngineOutput", "check_outputs", "compact_from_probs", "resize_batch", "to_nchw_float"]


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
        backend: the registry name (``onnxruntime``, ``torch``, ``tensorrt``, ``null``).
        head: the bundle's scoring head.
    """

    backend: str = "abstract"

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.head: HeadSpec = bundle.head
        self._closed = False

    @property
    def version(self) -> str:
        """The bundle's model version."""
        return self.bundle.version

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) that :meth:`infer` expects; use :func:`resize_batch` to get there."""
        return self.bundle.input_height, self.bundle.input_width

    def infer(self, images: np.ndarray, probs: bool = False) -> EngineOutput:
        """Run the ensemble and its scoring head on one batch.

        Args:
            images: uint8 ``[N, H, W, 3]`` RGB at :attr:`input_hw`.
            probs: also return the ``[K, N, C, H, W]`` probabilities (analysis; ~30 MB a frame at 480x360).

        Returns:
            The compact outputs, stamped with :attr:`version`.

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
        out = self._run(np.ascontiguousarray(images), probs)
        ENGINE_LATENCY.labels(backend=self.backend).observe(time.perf_counter() - start)
        ENGINE_BATCH.observe(images.shape[0])
        return out

    @abstractmethod
    def _run(self, images: np.ndarray, probs: bool) -> EngineOutput:
        """Backend hook: uint8 ``[N, H, W, 3]`` contiguous -> the batch's outputs (see :meth:`_output`)."""

    def _output(self, scores: np.ndarray, features: np.ndarray, umap: np.ndarray, fetch: PredictionFetch,
                probs: np.ndarray | None = None) -> EngineOutput:
        """An :class:`EngineOutput` stamped with this engine's version and head."""
        return EngineOutput(
            scores=scores, features=features, umap=umap, version=self.version,
            score_names=self.head.score_names(), map_scale=self.head.map_scale(len(self.bundle.classes)),
            fetch_prediction=fetch, probs=probs,
        )

    def host_bytes_per_frame(self) -> int:
        """Bytes that reach host memory per frame on every batch (scores, features, strided map)."""
        return self.head.host_bytes(self.input_hw, self.bundle.feature_dim)

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


def check_outputs(bundle: Bundle, out: EngineOutput, batch: int) -> None:
    """Check one batch's outputs against the bundle's manifest (used by the hot-swap probe).

    Raises:
        EngineError: see :func:`avminer.engines.contract.check_output`.
    """
    check_output(out, members=bundle.members, classes=len(bundle.classes), feature_dim=bundle.feature_dim,
                 input_hw=(bundle.input_height, bundle.input_width), head=bundle.head, batch=batch,
                 version=bundle.version)


def compact_from_probs(
    probs: np.ndarray, features: np.ndarray, head: HeadSpec, classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, PredictionFetch]:
    """The scoring head in numpy, for engines that hold probabilities on the host (test doubles, the
    null engine's precomputation): the same maths as :class:`avminer.models.head.ScoringHead`.

    Args:
        probs: float32 ``[K, N, C, H, W]``.
        features: float32 ``[N, D]``.
        head: pooling and map settings.
        classes: C.

    Returns:
        (scores ``[N, S]``, features, umap ``[N, h, w]``, prediction fetch).
    """
    from avminer.scoring.shift import max_softmax_score
    from avminer.scoring.uncertainty import MEASURES, aggregate, mean_prediction, uncertainty_maps

    s = head.map_stride
    sub = np.ascontiguousarray(probs[..., ::s, ::s]) if s > 1 else probs  # [K, N, C, h, w]
    maps = uncertainty_maps(sub, MEASURES)  # name -> [N, h, w]
    class_weight = np.ones(classes, np.float32)
    class_weight[[c for c in head.rare_classes if 0 <= c < classes]] = head.rare_class_weight
    weights = np.einsum("c,kncij->nij", class_weight, sub) / np.float32(sub.shape[0])  # [N, h, w] soft weights
    cols = []
    for name in MEASURES:
        for pooling in ("mean", "topk", "grid"):
            cols.append(aggregate(maps[name], pooling, head.topk_fraction, head.grid,
                                  weights if name == "mi" else None))
    cols.append(max_softmax_score(sub))
    scores = np.stack(cols, axis=1).astype(np.float32)  # [N, S]
    if head.map_dtype == "uint8":
        umap = np.clip(np.round(maps["mi"] / head.map_scale(classes)), 0, 255).astype(np.uint8)
    else:
        umap = maps["mi"].astype(np.float16)
    argmax = mean_prediction(probs)  # [N, H, W]
    return scores, np.asarray(features, np.float32), umap, host_prediction(argmax)
