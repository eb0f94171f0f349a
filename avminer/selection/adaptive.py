"""The adaptive policy: the full policy, with unfamiliarity ranked fleet-wide so that budgets follow it.

What the full policy (:class:`~avminer.selection.policy.SelectionPolicy`) does not do: every component's
surprise is a rank *within the frame's slice*, and each slice mines at its configured rate. A whole
condition the model has never seen (dusk for a day-trained model, a new country) is therefore mined at
the same rate as ordinary day driving, its frames ranked only against each other; and until it has
:data:`~avminer.selection.policy.WARMUP_MIN_FRAMES` frames of its own nothing of it is mined at all,
which for a condition that is 1 % of the stream can be most of a round. The ensemble does not help:
its members *agree* on dusk they never saw, so mutual information ranks dusk low.

The adaptive policy changes two things and keeps everything else (components, weights, sketches, the
duplicate rules, cooldowns, budgets, the fleet merge):

- the ``shift`` surprise (Mahalanobis distance to the release's training features) is measured against
  the **pooled** shift sketch of every slice — this miner's and the fleet's — not the slice's own: a
  frame of an unfamiliar condition lands in the pooled tail however common its condition is locally;
- every slice's threshold is the ``1 - rate`` quantile of the **pooled** priority sketch, from the first
  frame of the slice on (once the pool holds ``warmup_frames`` frames).

Together: the fleet still mines ``target_rate`` of its frames, but the share each condition gets
follows how much of the fleet-wide unfamiliarity tail it holds, measured, not named in advance in
``slice_rates``; a new release trained on a condition's labels moves that condition back to the bulk
of the pool (its frames become familiar), and the budget goes elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from avminer.config import SelectionSettings
from avminer.selection.policy import REFRESH_EVERY, SKETCH_ACCURACY, SelectionPolicy, _Slice
from avminer.selection.sketch import QuantileSketch

POOLED_COMPONENTS = ("shift",)
"""Components whose surprise is ranked against every slice's frames, not the slice's own."""


class AdaptivePolicy(SelectionPolicy):
    """:class:`SelectionPolicy` with fleet-wide unfamiliarity ranks and pooled thresholds (module docstring).

    Args:
        settings: ``settings.selection``.
        clock: as for :class:`SelectionPolicy`.
        pooled: components ranked fleet-wide (default :data:`POOLED_COMPONENTS`; ``adaptive_mi`` adds
            ``mi``, so that a condition the ensemble is unsure about as a whole also wins budget).
    """

    _pooled_parts: dict[str, tuple[int, QuantileSketch]]

    def __init__(self, settings: SelectionSettings, clock: Callable[[], float] = time.time,
                 pooled: tuple[str, ...] = POOLED_COMPONENTS) -> None:
        super().__init__(settings, clock)
        self.pooled = pooled

    def _pooled_component(self, name: str) -> QuantileSketch:
        """Sketch of one component over every slice, local and remote (cached for REFRESH_EVERY frames)."""
        if not hasattr(self, "_pooled_parts"):
            self._pooled_parts = {}
        total = sum(st.distinct for st in self._slices.values())
        cached = self._pooled_parts.get(name)
        if cached is None or total - cached[0] >= REFRESH_EVERY or self._pooled_stale:
            pooled = QuantileSketch(SKETCH_ACCURACY)
            for st in self._slices.values():
                pooled.merge(st.local[name])
            for remote in self._remote.values():
                for slice_sk in remote.values():
                    if name in slice_sk:
                        pooled.merge(slice_sk[name])
            cached = (total, pooled)
            self._pooled_parts[name] = cached
        return cached[1]

    def _refresh(self, slice_key: str, st: _Slice) -> None:
        snapshot = self._merged(slice_key)
        for name in self.pooled:
            snapshot[name] = self._pooled_component(name)
        st.snapshot = snapshot
        st.since_refresh = 0
        pooled = self._pooled_priority()
        st.threshold = pooled.quantile(1.0 - st.rate) if pooled.count >= max(self.settings.warmup_frames, 1) else None

    def reset_statistics(self) -> None:
        """As the full policy, plus the pooled component cache."""
        with self._lock:
            self._pooled_parts = {}
        super().reset_statistics()
