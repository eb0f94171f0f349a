"""What a mining run found: a text report and a contact sheet of the mined frames.

:class:`MiningReport` is fed every decided batch (``Pipeline(on_decided=report.add)``) and keeps the
decisions plus, for mined frames only, the frame and its uncertainty map. ``avminer demo`` prints
:meth:`MiningReport.render` and writes :meth:`MiningReport.contact_sheet`.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avminer.events.records import Decision
from avminer.mining.pipeline import DecidedFrame


@dataclass
class _Mined:
    decision: Decision
    image: np.ndarray  # uint8 [H, W, 3]
    uncertainty: np.ndarray  # float32 [H, W]


class MiningReport:
    """Collects decisions of a run (thread-safe: the pipeline calls :meth:`add` from its scoring thread).

    Args:
        keep_mined: mined frames kept with their images for the contact sheet (the highest priority win).
    """

    def __init__(self, keep_mined: int = 24) -> None:
        self.keep_mined = keep_mined
        self.decisions: list[Decision] = []
        self.rejected: Counter[str] = Counter()
        self.mined: list[_Mined] = []
        self._lock = threading.Lock()

    def add(self, batch: list[DecidedFrame]) -> None:
        with self._lock:
            for d in batch:
                self.decisions.append(d.decision)
                if d.rejected:
                    self.rejected[d.rejected] += 1
                if d.decision.mined:
                    self.mined.append(_Mined(d.decision, d.image, np.asarray(d.score.uncertainty_map, np.float32)))
            if len(self.mined) > self.keep_mined:
                self.mined.sort(key=lambda m: -m.decision.scores.get("mi", 0.0))
                del self.mined[self.keep_mined:]

    def render(self, top: int = 5) -> str:
        """The text report: frames, mined per condition slice and per reason, top scores."""
        ds = self.decisions
        mined = [d for d in ds if d.mined]
        lines = [f"frames decided: {len(ds)}    mined: {len(mined)} ({len(mined) / max(1, len(ds)):.1%})"]
        versions = sorted({d.model_version for d in ds})
        lines.append(f"model version(s): {', '.join(versions) or '-'}")
        per_slice = Counter(d.slice for d in ds)
        mined_slice = Counter(d.slice for d in mined)
        lines.append("")
        lines.append(f"{'condition slice':36s} {'frames':>7s} {'mined':>6s}")
        for s, n in sorted(per_slice.items()):
            lines.append(f"{s:36s} {n:7d} {mined_slice.get(s, 0):6d}")
        reasons = Counter(r for d in mined for r in d.reasons)
        lines.append("")
        lines.append("mined by reason: " + (", ".join(f"{r}={n}" for r, n in reasons.most_common()) or "none"))
        if self.rejected:
            lines.append("not mined: " + ", ".join(f"{r}={n}" for r, n in self.rejected.most_common()))
        for key in ("mi", "shift", "radar"):
            ranked = sorted(ds, key=lambda d, k=key: -d.scores.get(k, 0.0))[:top]  # type: ignore[misc]
            if not ranked or ranked[0].scores.get(key, 0.0) <= 0:
                continue
            lines.append("")
            lines.append(f"top {key} scores:")
            for d in ranked:
                flag = "MINED" if d.mined else "     "
                lines.append(f"  {flag} {d.scores.get(key, 0.0):10.4f}  {d.frame_id:28s} {d.slice}")
        return "\n".join(lines)

    def contact_sheet(self, path: str | Path, columns: int = 4) -> Path | None:
        """PNG grid of the mined frames, each beside its uncertainty map (None when nothing was mined)."""
        if not self.mined:
            return None
        from avminer.utils.plots import pyplot, save_png

        plt = pyplot()

        n = len(self.mined)
        cols = min(columns, n)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, 2 * cols, figsize=(4.2 * cols, 1.8 * rows + 0.4), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for i, m in enumerate(self.mined):
            r, c = divmod(i, cols)
            d = m.decision
            axes[r][2 * c].imshow(m.image)
            axes[r][2 * c].set_title(f"{d.frame_id[:22]}\n{d.slice}", fontsize=6)
            axes[r][2 * c + 1].imshow(m.uncertainty, cmap="inferno")
            axes[r][2 * c + 1].set_title(f"MI {d.scores.get('mi', 0):.3f} · {'+'.join(d.reasons)}", fontsize=6)
        fig.suptitle("mined frames and their ensemble uncertainty (mutual information)", fontsize=9)
        fig.tight_layout()
        return save_png(fig, path, dpi=110)
