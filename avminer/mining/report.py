"""What a mining run found: a text report and a contact sheet of the mined frames.

:class:`MiningReport` is fed every decided batch (``Pipeline(on_decided=report.add)``) and keeps the
decisions plus, for mined frames only, the frame and its uncertainty map. ``avminer demo`` prints
:meth:`MiningReport.render` and writes :meth:`MiningReport.contact_sheet`.
"""

from __future__ import annotations

import heapq
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

    It keeps counters and the few highest-scoring decisions per score, not every decision, so a long
    embedded run (``avminer mine --repeat``) can print its summary too.

    Args:
        keep_mined: mined frames kept with their images for the contact sheet (the highest priority win).
        keep_top: decisions kept per score for the "top scores" lists (``render(top=...)`` shows at most these).
    """

    SCORE_KEYS = ("mi", "shift", "radar")

    def __init__(self, keep_mined: int = 24, keep_top: int = 20) -> None:
        self.keep_mined = keep_mined
        self.keep_top = keep_top
        self.frames = 0
        self.per_slice: Counter[str] = Counter()
        self.mined_per_slice: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.versions: set[str] = set()
        self.rejected: Counter[str] = Counter()
        self.top: dict[str, list[tuple[float, int, Decision]]] = {k: [] for k in self.SCORE_KEYS}  # min-heaps
        self.mined: list[_Mined] = []
        self._lock = threading.Lock()

    def add(self, batch: list[DecidedFrame]) -> None:
        with self._lock:
            for d in batch:
                dec = d.decision
                self.frames += 1
                self.per_slice[dec.slice] += 1
                self.versions.add(dec.model_version)
                for key, heap in self.top.items():
                    item = (dec.scores.get(key, 0.0), -self.frames, dec)  # ties: the earlier frame ranks first
                    if len(heap) < self.keep_top:
                        heapq.heappush(heap, item)
                    elif item[:2] > heap[0][:2]:
                        heapq.heapreplace(heap, item)
                if d.rejected:
                    self.rejected[d.rejected] += 1
                if dec.mined:
                    self.mined_per_slice[dec.slice] += 1
                    self.reasons.update(dec.reasons)
                    self.mined.append(_Mined(dec, d.image, np.asarray(d.score.uncertainty_map, np.float32)))
            if len(self.mined) > self.keep_mined:
                self.mined.sort(key=lambda m: -m.decision.scores.get("mi", 0.0))
                del self.mined[self.keep_mined:]

    def render(self, top: int = 5) -> str:
        """The text report: frames, mined per condition slice and per reason, top scores."""
        n_mined = sum(self.mined_per_slice.values())
        lines = [f"frames decided: {self.frames}    mined: {n_mined} ({n_mined / max(1, self.frames):.1%})"]
        lines.append(f"model version(s): {', '.join(sorted(self.versions)) or '-'}")
        lines.append("")
        lines.append(f"{'condition slice':36s} {'frames':>7s} {'mined':>6s}")
        for s, n in sorted(self.per_slice.items()):
            lines.append(f"{s:36s} {n:7d} {self.mined_per_slice.get(s, 0):6d}")
        lines.append("")
        lines.append("mined by reason: "
                     + (", ".join(f"{r}={n}" for r, n in self.reasons.most_common()) or "none"))
        if self.rejected:
            lines.append("not mined: " + ", ".join(f"{r}={n}" for r, n in self.rejected.most_common()))
        for key, heap in self.top.items():
            ranked = [d for _, _, d in sorted(heap, key=lambda item: item[:2], reverse=True)][:top]
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
