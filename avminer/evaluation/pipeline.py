"""Pipeline benchmark: end-to-end mining throughput against the bare engine, same batches, same run.

The pipeline runs embedded (the sample drive replayed to ``--frames`` distinct frames), with the real
engine, scoring, selection and local sinks in a temporary directory. Every batch the engine saw is
recorded; afterwards the bare engine runs exactly those batches again. ``ratio`` = pipeline frames/s
divided by bare-engine frames/s (goal: >= 0.90, i.e. the plumbing costs under 10%). ``engine_busy`` is
the fraction of the pipeline's wall time the engine was inferring: near 1 means the plumbing keeps the
engine fed and any shortfall of the ratio is CPU the plumbing took from the engine's threads.
``avminer bench pipeline`` is the command.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any


class _RecordingEngine:
    """Delegates to an engine and keeps a copy of every batch it ran."""

    def __init__(self, engine: Any, batches: list[Any]) -> None:
        self._engine = engine
        self._batches = batches

    def infer(self, images: Any) -> Any:
        self._batches.append(images.copy())
        return self._engine.infer(images)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class _RecordingHolder:
    def __init__(self, holder: Any) -> None:
        self.holder = holder
        self.batches: list[Any] = []

    @property
    def current(self) -> Any:
        return _RecordingEngine(self.holder.current, self.batches)

    @contextlib.contextmanager
    def acquire(self) -> Iterator[Any]:
        with self.holder.acquire() as engine:
            yield _RecordingEngine(engine, self.batches)


def _round(settings: Any, holder: Any, drive_log: str | None, frames: int) -> dict[str, Any]:
    """One pipeline run, then the bare engine on exactly the batches that run produced."""
    from avminer.mining.daemon import run_miner

    rec = _RecordingHolder(holder)
    stats = run_miner(settings, engines=rec, drive_log=drive_log, frames=frames, repeat=True,
                      handle_signals=False, serve_metrics=False)
    engine = holder.current
    start = time.perf_counter()
    for images in rec.batches:
        engine.infer(images)
    bare_s = time.perf_counter() - start
    bare_frames = sum(int(b.shape[0]) for b in rec.batches)
    pipeline_fps = stats.decisions / stats.wall_s if stats.wall_s else 0.0
    engine_fps = bare_frames / bare_s if bare_s else 0.0
    return {
        "frames": stats.decisions,
        "pipeline_fps": pipeline_fps,
        "engine_fps": engine_fps,
        "ratio": pipeline_fps / engine_fps if engine_fps else 0.0,
        "batches": len(rec.batches),
        "mean_batch": bare_frames / max(1, len(rec.batches)),
        "engine_busy": stats.engine_s / stats.wall_s if stats.wall_s else 0.0,
        "mined": stats.mined,
        "pipeline_wall_s": stats.wall_s,
        "bare_engine_s": bare_s,
    }


def run_pipeline_bench(
    config: str | None = None, frames: int = 400, drive_log: str | None = None, rounds: int = 1
) -> dict[str, Any]:
    """Mine ``frames`` frames embedded, then run the bare engine on the same batches; ``rounds`` times.

    The round with the median ratio is reported, with every round's ratio beside it.

    Args:
        config: settings file (the engine section picks backend and threads).
        frames: camera frames to mine per round.
        drive_log: drive log to replay (default: the bundled sample drive).
        rounds: pipeline + bare-engine rounds.
    """
    from avminer.config import load_settings
    from avminer.mining.daemon import open_engines

    load_before = os.getloadavg()[0]
    results: list[dict[str, Any]] = []
    holder: Any = None
    try:
        for _ in range(max(1, rounds)):
            # A fresh output directory per round: every round mines the same frames from scratch.
            with tempfile.TemporaryDirectory(prefix="avminer-bench-") as tmp:
                overrides: dict[str, Any] = {
                    "kafka": {"bootstrap_servers": None},
                    "sinks": {"output_dir": tmp, "catalog_url": f"sqlite:///{tmp}/catalog.db"},
                    "metrics": {"port": 0},
                }
                settings = load_settings(config, overrides=overrides)
                holder = holder or open_engines(settings)
                results.append(_round(settings, holder, drive_log, frames))
        backend, version = holder.current.backend, holder.current.version
    finally:
        if holder is not None:
            holder.close()
    # The round with the median ratio stands for the run (robust to a neighbour's burst of CPU).
    mid = sorted(results, key=lambda r: r["ratio"])[len(results) // 2]
    result: dict[str, Any] = {k: round(v, 3) if isinstance(v, float) else v for k, v in mid.items()}
    result.update({
        "rounds": len(results),
        "ratios": [round(r["ratio"], 3) for r in results],
        "backend": backend,
        "model_version": version,
        # Context for reading the ratio: on a shared box other processes slow the engine unevenly.
        "cpus": os.cpu_count(),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    })
    return result


def format_report(result: dict[str, Any]) -> str:
    """The figures of :func:`run_pipeline_bench` as ``avminer bench pipeline`` prints them."""
    return "\n".join([
        f"pipeline: {result['pipeline_fps']} frames/s end to end ({result['frames']} frames, "
        f"{result['batches']} batches of {result['mean_batch']} on average)",
        f"engine:   {result['engine_fps']} frames/s bare, same batches ({result['backend']}, "
        f"model {result['model_version']})",
        f"ratio:    {result['ratio']} (goal >= 0.90; rounds: {result['ratios']}; "
        f"engine busy {result['engine_busy']:.0%} of the pipeline's time)",
    ])
