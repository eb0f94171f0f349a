"""``selection.policy`` -> a policy object: the product's policies and the baselines, one switch.

Every policy offers what the miner uses: ``select(candidates) -> verdicts`` (in arrival order),
``stats()``, and the fleet-sketch hooks ``export_sketches`` / ``merge_remote`` / ``forget_remote``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from avminer.config import SELECTION_POLICIES, SelectionSettings
from avminer.errors import SelectionError


def make_policy(settings: SelectionSettings, clock: Callable[[], float] = time.time) -> Any:
    """The policy ``settings.policy`` names.

    Raises:
        SelectionError: an unknown policy name.
    """
    name = settings.policy
    if name == "full":
        from avminer.selection.policy import SelectionPolicy

        return SelectionPolicy(settings, clock)
    if name == "adaptive":
        from avminer.selection.adaptive import AdaptivePolicy

        return AdaptivePolicy(settings, clock)
    if name == "adaptive_mi":
        from avminer.selection.adaptive import AdaptivePolicy

        return AdaptivePolicy(settings, clock, pooled=("shift", "mi"))
    from avminer.selection.baselines import RandomPolicy, ScorePolicy

    if name == "random":
        return RandomPolicy(settings)
    if name == "entropy":
        return ScorePolicy(settings, "entropy", "entropy")
    if name in ("mi", "bald"):
        # bald ranks by the same in-graph mutual information, computed over Monte-Carlo dropout passes:
        # the miner must run the torch engine with engine.mc_dropout_samples > 0 (the backtest sets it).
        return ScorePolicy(settings, "mi", name)
    raise SelectionError(f"selection.policy: unknown policy {name!r}; use one of {', '.join(SELECTION_POLICIES)}")
