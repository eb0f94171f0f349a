"""The null engine: precomputed compact outputs, returned at once.

It measures the plumbing around the engine (decode, batching, scoring, selection, sinks):
``avminer bench pipeline --engine null`` runs the real pipeline with an engine that costs nothing, so
its frames/s is the ceiling any real engine can be fed at on this machine.

Outputs are drawn once from a seeded generator (a pool of rows reused round-robin), shaped exactly as
the bundle's graph would return them: scores spread like real ones so selection ranks and mines,
distinct features so near-duplicate checks do not reject every frame, an empty map and argmax.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from avminer.engines.base import Engine
from avminer.engines.bundle import Bundle
from avminer.engines.contract import EngineOutput

POOL = 256
"""Precomputed rows; batches cycle through them."""


class NullEngine(Engine):
    """An engine that returns precomputed outputs without looking at the frames.

    Args:
        bundle: supplies classes, feature size, head and (unless overridden) the input size.
        input_hw: the input size to ask the pipeline for (e.g. ``(360, 480)``: decode at full size).
        seed: seed of the precomputed outputs.
    """

    backend = "null"

    def __init__(self, bundle: Bundle, input_hw: tuple[int, int] | None = None, seed: int = 0) -> None:
        super().__init__(bundle)
        self._hw = input_hw or (bundle.input_height, bundle.input_width)
        rng = np.random.default_rng(seed)
        c = len(bundle.classes)
        s = len(self.head.score_names())
        mh, mw = self.head.map_hw(self._hw)
        self._scores = (rng.gamma(2.0, 0.1, size=(POOL, s)) * math.log(c) / 2).astype(np.float32)  # [P, S]
        self._features = rng.normal(0.0, 1.0, size=(POOL, bundle.feature_dim)).astype(np.float32)  # [P, D]
        self._umap = np.zeros((POOL, mh, mw), np.uint8 if self.head.map_dtype == "uint8" else np.float16)
        self._argmax = np.zeros((POOL, *self._hw), np.uint8)  # [P, H, W]
        self._next = 0
        self._lock = threading.Lock()

    @property
    def input_hw(self) -> tuple[int, int]:
        return self._hw

    def _run(self, images: np.ndarray, probs: bool) -> EngineOutput:
        n = images.shape[0]
        with self._lock:
            rows = (self._next + np.arange(n)) % POOL
            self._next = int(rows[-1] + 1) % POOL
        argmax = self._argmax
        out = self._output(self._scores[rows], self._features[rows], self._umap[rows],
                           lambda i: argmax[rows[i]])
        if probs:
            k, c = self.bundle.members, len(self.bundle.classes)
            uniform = np.full((k, n, c, *self._hw), 1.0 / c, np.float32)
            out = EngineOutput(**{**out.__dict__, "probs": uniform})
        return out


def open_backend(bundle: Bundle, threads: int = 0, device: str = "cpu", **options: Any) -> NullEngine:
    """The :data:`avminer.engines.BACKENDS` factory; option ``input_hw`` sets the input size."""
    hw = options.get("input_hw")
    return NullEngine(bundle, input_hw=(int(hw[0]), int(hw[1])) if hw else None)
