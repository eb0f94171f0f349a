"""The engine contract: what every backend returns for a batch, computed inside the model graph.

An engine no longer hands the host ``[K, N, C, H, W]`` probabilities (30 MB a frame at 480x360, K=4).
The graph ends in a *scoring head* (:mod:`avminer.models.head`) and returns, per frame:

============  ================  ============================================================================
output        dtype, shape      meaning
============  ================  ============================================================================
``scores``    f32 ``[N, S]``    :meth:`HeadSpec.score_names`: PE/EE/MI/variation ratio/margin, each pooled
                                by mean, top-k and grid-max over the strided maps, and ``msp``
``features``  f32 ``[N, D]``    pooled features (shift detection, near-duplicates)
``umap``      u8 ``[N, h, w]``  mutual information on the strided grid, ``MI ≈ umap * map_scale`` (reports)
``argmax``    u8 ``[N, H, W]``  class ids of the ensemble mean at input resolution (radar, pre-annotations)
``probs``     f32 [K,N,C,H,W]   only on explicit request (``infer(..., probs=True)``)
============  ================  ============================================================================

``argmax`` is computed for every frame but read per frame on demand (:meth:`EngineOutput.prediction`):
a device backend copies only the rows that are asked for (radar-joined and mined frames), so the bytes
that cross to the host per frame are ``scores + features + umap`` (:meth:`HeadSpec.host_bytes`).

This module is pure numpy: :mod:`avminer.scoring` reads an :class:`EngineOutput` without importing
any backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from avminer.errors import BundleError, EngineError
from avminer.taxonomy import RARE_CLASSES  # their pixels count up to rare_class_weight times in pooled mi

MEASURES = ("mi", "entropy", "expected_entropy", "variation_ratio", "margin")
"""Pixel measures the head computes (see :mod:`avminer.scoring.uncertainty` for their definitions)."""
POOLINGS = ("mean", "topk", "grid")
"""Pixel-to-frame poolings the head applies to every measure."""
MAP_DTYPES = ("uint8", "float16")

INPUT_NAME = "images"
OUTPUT_SCORES = "scores"
OUTPUT_FEATURES = "features"
OUTPUT_UMAP = "umap"
OUTPUT_ARGMAX = "argmax"
OUTPUT_PROBS = "probs"
COMPACT_OUTPUTS = (OUTPUT_SCORES, OUTPUT_FEATURES, OUTPUT_UMAP, OUTPUT_ARGMAX)
"""Graph outputs every bundle of format 2 has; ``probs`` is the optional fifth."""


@dataclass(frozen=True)
class HeadSpec:
    """How the in-graph scoring head pools and shrinks the ensemble's probabilities.

    Fixed when a bundle is exported (recorded in ``manifest["head"]``): the ONNX graph bakes it in,
    and every backend of that bundle computes the same scores.

    Attributes:
        map_stride: the measures are computed on every ``map_stride``-th row and column.
        topk_fraction: fraction of (strided) pixels averaged by ``topk`` pooling.
        grid: cells per side of ``grid`` pooling (max over cell means; capped at the map's size).
        rare_classes: class ids whose pixels are weighted in the ``mi_*`` scores.
        rare_class_weight: their weight w (1: no weighting). A pixel's MI is multiplied by
            ``1 + (w - 1) * p̄(rare)``, the ensemble's mean probability of the rare classes: the hard
            rule (w where the argmax is rare) softened so that it is continuous in the probabilities
            and backends agree on it to rounding.
        map_dtype: ``uint8`` (MI scaled by ``log C / 255``) or ``float16`` (MI in nats).
    """

    map_stride: int = 2
    topk_fraction: float = 0.05
    grid: int = 4
    rare_classes: tuple[int, ...] = ()
    rare_class_weight: float = 3.0
    map_dtype: str = "uint8"

    def __post_init__(self) -> None:
        if self.map_stride < 1:
            raise EngineError(f"head.map_stride must be >= 1, got {self.map_stride}")
        if not 0.0 < self.topk_fraction <= 1.0:
            raise EngineError(f"head.topk_fraction must be in (0, 1], got {self.topk_fraction}")
        if self.grid < 1:
            raise EngineError(f"head.grid must be >= 1, got {self.grid}")
        if self.rare_class_weight <= 0:
            raise EngineError(f"head.rare_class_weight must be > 0, got {self.rare_class_weight}")
        if self.map_dtype not in MAP_DTYPES:
            raise EngineError(f"head.map_dtype must be one of {MAP_DTYPES}, got {self.map_dtype!r}")

    @staticmethod
    def score_names() -> tuple[str, ...]:
        """Column names of the ``scores`` output, in order: ``<measure>_<pooling>`` then ``msp``."""
        return (*(f"{m}_{p}" for m in MEASURES for p in POOLINGS), "msp")

    def map_hw(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """Size of the strided maps for an input size (rows/columns 0, s, 2s, ...)."""
        h, w = input_hw
        return -(-h // self.map_stride), -(-w // self.map_stride)

    def topk_count(self, input_hw: tuple[int, int]) -> int:
        """Pixels averaged by top-k pooling (at least one)."""
        h, w = self.map_hw(input_hw)
        return max(1, math.ceil(self.topk_fraction * h * w))

    def map_scale(self, num_classes: int) -> float:
        """Nats per ``umap`` unit."""
        return math.log(num_classes) / 255.0 if self.map_dtype == "uint8" else 1.0

    def host_bytes(self, input_hw: tuple[int, int], feature_dim: int) -> int:
        """Bytes per frame that always reach the host: scores, features and the strided map."""
        h, w = self.map_hw(input_hw)
        return 4 * len(self.score_names()) + 4 * feature_dim + h * w * (1 if self.map_dtype == "uint8" else 2)

    @classmethod
    def for_classes(cls, classes: Sequence[str], **kwargs: Any) -> HeadSpec:
        """A spec whose rare classes are :data:`RARE_CLASSES` found among ``classes``."""
        rare = tuple(i for i, name in enumerate(classes) if name in RARE_CLASSES)
        return cls(rare_classes=rare, **kwargs)

    @classmethod
    def from_settings(cls, scoring: Any, classes: Sequence[str]) -> HeadSpec:
        """The head a ``ScoringSettings`` asks for (map stride, top-k fraction, grid, rare-class weight)."""
        return cls.for_classes(
            classes, map_stride=int(scoring.map_stride), topk_fraction=float(scoring.topk_fraction),
            grid=int(scoring.grid), rare_class_weight=float(scoring.rare_class_weight),
        )

    def to_manifest(self) -> dict[str, Any]:
        return {
            "map_stride": self.map_stride, "topk_fraction": self.topk_fraction, "grid": self.grid,
            "rare_classes": list(self.rare_classes), "rare_class_weight": self.rare_class_weight,
            "map_dtype": self.map_dtype, "scores": list(self.score_names()),
        }

    @classmethod
    def from_manifest(cls, data: Any, where: object = "manifest") -> HeadSpec:
        """Parse ``manifest["head"]``.

        Raises:
            BundleError: missing or malformed fields, or score columns this avminer does not know.
        """
        if not isinstance(data, Mapping):
            raise BundleError(f"{where}: manifest 'head' must be an object")
        try:
            spec = cls(
                map_stride=int(data["map_stride"]), topk_fraction=float(data["topk_fraction"]),
                grid=int(data["grid"]), rare_classes=tuple(int(c) for c in data["rare_classes"]),
                rare_class_weight=float(data["rare_class_weight"]), map_dtype=str(data["map_dtype"]),
            )
        except KeyError as exc:
            raise BundleError(f"{where}: manifest head lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError, EngineError) as exc:
            raise BundleError(f"{where}: manifest head is malformed: {exc}") from exc
        if list(data.get("scores", [])) != list(cls.score_names()):
            raise BundleError(
                f"{where}: the graph's score columns {data.get('scores')} are not this avminer's "
                f"{list(cls.score_names())}; re-export the bundle (tools/reexport_bundle.py)"
            )
        return spec


PredictionFetch = Callable[[int], np.ndarray]
"""Returns the ``[H, W]`` uint8 argmax of one batch row (a device backend copies that row only)."""


@dataclass(frozen=True)
class EngineOutput:
    """What one batch produced, stamped with the model version that produced it.

    Attributes:
        scores: float32 ``[N, S]``, columns named by ``score_names``.
        features: float32 ``[N, D]`` pooled features.
        umap: ``[N, h, w]`` uint8 (or float16) strided mutual-information map.
        version: the bundle version that ran this batch (every decision names it).
        score_names: the column names of ``scores``.
        map_scale: nats per ``umap`` unit.
        fetch_prediction: row -> ``[H, W]`` uint8 argmax (see :meth:`prediction`).
        probs: ``[K, N, C, H, W]`` float32, only when asked for.
    """

    scores: np.ndarray
    features: np.ndarray
    umap: np.ndarray
    version: str
    score_names: tuple[str, ...]
    map_scale: float
    fetch_prediction: PredictionFetch = field(repr=False)
    probs: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def score(self, name: str) -> np.ndarray:
        """One score column ``[N]``.

        Raises:
            EngineError: a column the head does not compute.
        """
        try:
            return self.scores[:, self.score_names.index(name)]
        except ValueError:
            raise EngineError(f"the engine computes no score {name!r}; it has {', '.join(self.score_names)}") from None

    def uncertainty_map(self, row: int) -> np.ndarray:
        """Row ``row``'s strided MI map in nats, float32 ``[h, w]``."""
        scaled: np.ndarray = self.umap[row].astype(np.float32) * np.float32(self.map_scale)
        return scaled

    def prediction(self, row: int) -> np.ndarray:
        """Row ``row``'s argmax class ids at input resolution, uint8 ``[H, W]`` (copied on demand)."""
        return self.fetch_prediction(row)

    def take(self, rows: Sequence[int]) -> EngineOutput:
        """The output restricted to batch rows ``rows`` (same version; predictions still fetched lazily)."""
        idx = list(rows)
        fetch = self.fetch_prediction
        return replace(
            self, scores=self.scores[idx], features=self.features[idx], umap=self.umap[idx],
            fetch_prediction=lambda i: fetch(idx[i]),
            probs=self.probs[:, idx] if self.probs is not None else None,
        )

    def host_bytes(self) -> int:
        """Bytes of this batch's always-copied outputs (scores, features, map) in host memory."""
        return int(self.scores.nbytes + self.features.nbytes + self.umap.nbytes)


def host_prediction(argmax: np.ndarray) -> PredictionFetch:
    """A :data:`PredictionFetch` over an ``[N, H, W]`` uint8 array already in host memory."""
    def fetch(row: int) -> np.ndarray:
        return np.asarray(argmax[row])

    return fetch


def check_output(out: EngineOutput, *, members: int, classes: int, feature_dim: int, input_hw: tuple[int, int],
                 head: HeadSpec, batch: int, version: str) -> None:
    """Check one batch's outputs against the manifest (the hot-swap probe).

    Raises:
        EngineError: a shape that disagrees with the manifest, non-finite scores or features, scores out
            of their ranges, or an argmax naming a class the model does not have.
    """
    del members  # the compact outputs no longer have a member axis
    mh, mw = head.map_hw(input_hw)
    expected = {
        "scores": (out.scores.shape, (batch, len(head.score_names()))),
        "features": (out.features.shape, (batch, feature_dim)),
        "umap": (out.umap.shape, (batch, mh, mw)),
    }
    for name, (got, want) in expected.items():
        if tuple(got) != want:
            raise EngineError(f"model {version}: {name} shape {list(got)}, manifest says {list(want)}")
    if not (np.isfinite(out.scores).all() and np.isfinite(out.features).all()):
        raise EngineError(f"model {version}: non-finite scores or features on the probe batch")
    bound = math.log(classes) * max(1.0, head.rare_class_weight) + 1e-3
    if out.scores.min() < -1e-4 or out.scores.max() > bound:
        raise EngineError(
            f"model {version}: scores outside [0, {bound:.3g}] ({out.scores.min():.3g}..{out.scores.max():.3g}); "
            "the graph's head must see softmax probabilities"
        )
    pred = out.prediction(0)
    if pred.shape != input_hw or pred.dtype != np.uint8 or int(pred.max()) >= classes:
        raise EngineError(f"model {version}: argmax {pred.dtype} {list(pred.shape)} max {int(pred.max())}, "
                          f"expected uint8 {list(input_hw)} below {classes}")
