"""The adaptive policy: the full policy, with unfamiliarity ranked fleet-wide so that budgets follow it.

Kept as a baseline of the backtest: the full policy (:class:`~avminer.selection.policy.SelectionPolicy`)
took over its fleet-wide ranks and pooled thresholds, and adds a budget per frame seen with catch-up
and the sum of the MI and shift surprises. Before that, the full policy ranked every component *within
the frame's slice* and mined each slice at its configured rate, so a whole condition the model has
never seen (dusk for a day-trained model, a new country) was mined like ordinary day driving.

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
from collections.abc import Callable, Mapping

from avminer.config import SelectionSettings
from avminer.selection.policy import COMPONENTS, PRIORITY, REASONS, SelectionPolicy, _Slice
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

    def __init__(self, settings: SelectionSettings, clock: Callable[[], float] = time.time,
                 pooled: tuple[str, ...] = POOLED_COMPONENTS) -> None:
        super().__init__(settings, clock)
        self.pooled = pooled

    def _refresh(self, slice_key: str, st: _Slice) -> None:
        snapshot = self._merged(slice_key)
        for name in self.pooled:
            snapshot[name] = self._pooled_sketch(name)
        st.snapshot = snapshot
        st.since_refresh = 0
        st.pool_version = self._pool_version
        st.threshold = self._budget_threshold(st)

    def _budget_threshold(self, st: _Slice) -> float | None:
        """The pooled priority's ``1 - rate`` quantile: a rate per distinct frame, no catch-up."""
        pooled = self._pooled_sketch(PRIORITY)
        return pooled.quantile(1.0 - st.rate) if pooled.count >= max(self.settings.warmup_frames, 1) else None

    def _priority(self, sketches: Mapping[str, QuantileSketch], values: Mapping[str, float]
                  ) -> tuple[float, dict[str, float]]:
        """The weighted max of the surprises: any one reason carries a frame."""
        surprise = self._surprises(sketches, values)
        return max((self.weights[n] * v for n, v in surprise.items()), default=0.0), surprise

    def _reasons(self, surprise: Mapping[str, float], threshold: float) -> list[str]:
        return [REASONS[n] for n in COMPONENTS if n in surprise and self.weights[n] * surprise[n] > threshold]
