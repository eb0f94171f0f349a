"""Pipeline benchmark: end-to-end mining throughput against the bare engine, same batches, same run.

The pipeline runs embedded (the sample drive, 480x360 JPEGs, replayed to ``--frames`` frames), with the
engine, scoring, selection and local sinks in a temporary directory. Every batch the engine saw is
recorded; afterwards the bare engine runs exactly those batches again. ``ratio`` = pipeline frames/s
divided by bare-engine frames/s (goal: >= 0.95, i.e. the plumbing costs under 5%). ``engine_busy`` is
the fraction of the pipeline's wall time the engine was inferring: near 1 means the plumbing keeps the
engine fed and any shortfall of the ratio is CPU the plumbing took from the engine's threads.
``avminer bench pipeline`` is the command.

With ``backend="null"`` it measures the plumbing's ceiling: the null engine returns precomputed outputs
at once and asks for frames at ``null_size`` (default 360x480: the drive's JPEGs are decoded at full
size, no resize); there is no bare engine to compare with. ``cpu_us_per_frame`` gives each stage's
thread CPU time per frame (decode, engine, score, select, sample, sink) and ``other`` (the poll thread:
reading and Avro-decoding the drive log, batching, commits).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from avminer.errors import MiningError


class _RecordingEngine:
    """Delegates to an engine and keeps a copy of every batch it ran."""

    def __init__(self, engine: Any, batches: list[Any]) -> None:
        self._engine = engine
        self._batches = batches

    def infer(self, images: Any, probs: bool = False) -> Any:
        if self._engine.backend != "null":  # the null engine has no bare speed worth re-measuring
            self._batches.append(images.copy())
        return self._engine.infer(images, probs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class _RecordingHolder:
    def __init__(self, holder: Any) -> None:
        self.holder = holder
        self.batches: list[Any] = []
        self._wrapped: _RecordingEngine | None = None

    @property
    def current(self) -> Any:
        # Asked once a frame (the decode size): one wrapper per engine, not one per call.
        engine = self.holder.current
        if self._wrapped is None or self._wrapped._engine is not engine:
            self._wrapped = _RecordingEngine(engine, self.batches)
        return self._wrapped

    @contextlib.contextmanager
    def acquire(self) -> Iterator[Any]:
        with self.holder.acquire() as engine:
            yield _RecordingEngine(engine, self.batches)


def _round(settings: Any, holder: Any, drive_log: str | None, frames: int) -> dict[str, Any]:
    """One pipeline run, then the bare engine on exactly the batches that run produced."""
    from avminer.mining.daemon import run_miner
    from avminer.mining.deadletter import LocalDeadLetters

    rec = _RecordingHolder(holder)
    cpu = time.process_time()
    stats = run_miner(settings, engines=rec, drive_log=drive_log, frames=frames, repeat=True,
                      handle_signals=False, serve_metrics=False)
    cpu = time.process_time() - cpu
    if stats.dead_letters:
        # Frames that never reached the engine make every figure below a measure of something else.
        first = next(iter(LocalDeadLetters.entries(settings.sinks.output_dir)), {})
        raise MiningError(f"bench pipeline: {stats.dead_letters} of {stats.decisions + stats.dead_letters} frames "
                          f"went to the dead letters (first: {first.get('reason', '?')}: "
                          f"{str(first.get('error', '?'))[:200]}); nothing measured")
    engine = holder.current
    start = time.perf_counter()
    for images in rec.batches:
        engine.infer(images)
    bare_s = time.perf_counter() - start
    bare_frames = sum(int(b.shape[0]) for b in rec.batches)
    null = engine.backend == "null"
    pipeline_fps = stats.decisions / stats.wall_s if stats.wall_s else 0.0
    engine_fps = bare_frames / bare_s if bare_s else 0.0
    n = max(1, stats.decisions)
    per_frame = {stage: round(s / n * 1e6, 1) for stage, s in sorted(stats.stage_cpu_s.items())}
    per_frame["other"] = round((cpu - sum(stats.stage_cpu_s.values())) / n * 1e6, 1)
    return {
        "frames": stats.decisions,
        "cpu_us_per_frame": per_frame,
        "process_cpu_us_per_frame": round(cpu / n * 1e6, 1),
        "pipeline_fps": pipeline_fps,
        "engine_fps": None if null else engine_fps,
        "ratio": None if null else (pipeline_fps / engine_fps if engine_fps else 0.0),
        "host_bytes_per_frame": engine.host_bytes_per_frame(),
        "batches": stats.batches,
        "mean_batch": stats.decisions / max(1, stats.batches),
        "engine_busy": stats.engine_s / stats.wall_s if stats.wall_s else 0.0,
        "mined": stats.mined,
        "pipeline_wall_s": stats.wall_s,
        "bare_engine_s": bare_s,
    }


def run_pipeline_bench(
    config: str | None = None, frames: int = 400, drive_log: str | None = None, rounds: int = 1, *,
    backend: str | None = None, null_size: tuple[int, int] = (360, 480), decode_workers: int | None = None,
    batch: int | None = None,
) -> dict[str, Any]:
    """Mine ``frames`` frames embedded, then run the bare engine on the same batches; ``rounds`` times.

    The round with the median ratio is reported, with every round's ratio beside it.

    Args:
        config: settings file (the engine section picks backend and threads).
        frames: camera frames to mine per round.
        drive_log: drive log to replay (default: the bundled sample drive).
        rounds: pipeline + bare-engine rounds.
        backend: engine backend (default: the settings'); ``null`` measures the plumbing's ceiling.
        null_size: (height, width) the null engine asks frames at.
        decode_workers: decode threads (default: ``decode.workers``).
        batch: frames per batch (default: ``batcher.max_batch``).
    """
    from avminer.config import load_settings

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
                if backend:
                    overrides["engine"] = {"backend": backend}
                if decode_workers:
                    overrides["decode"] = {"workers": decode_workers}
                if batch:
                    overrides["batcher"] = {"max_batch": batch}
                settings = load_settings(config, overrides=overrides)
                holder = holder or _open_holder(settings, null_size)
                results.append(_round(settings, holder, drive_log, frames))
        backend, version = holder.current.backend, holder.current.version
    finally:
        if holder is not None:
            holder.close()
    # The round with the median ratio stands for the run (robust to a neighbour's burst of CPU).
    key = "pipeline_fps" if results[0]["ratio"] is None else "ratio"
    mid = sorted(results, key=lambda r: r[key])[len(results) // 2]
    result: dict[str, Any] = {k: round(v, 3) if isinstance(v, float) else v for k, v in mid.items()}
    result.update({
        "rounds": len(results),
        "ratios": [round(r["ratio"], 3) for r in results if r["ratio"] is not None],
        "pipeline_fps_rounds": [round(r["pipeline_fps"], 1) for r in results],
        "backend": backend,
        "model_version": version,
        # Context for reading the ratio: on a shared box other processes slow the engine unevenly.
        "cpus": os.cpu_count(),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    })
    return result


def _open_holder(settings: Any, null_size: tuple[int, int]) -> Any:
    """The engine holder: the configured engine, or the null engine asking for ``null_size`` frames."""
    from avminer.engines import default_bundle_path, open_engine
    from avminer.engines.hotswap import EngineHolder
    from avminer.mining.daemon import open_engines

    if settings.engine.backend != "null":
        return open_engines(settings)
    return EngineHolder(open_engine(settings.engine.bundle or default_bundle_path(), backend="null",
                                    input_hw=null_size))


def format_report(result: dict[str, Any]) -> str:
    """The figures of :func:`run_pipeline_bench` as ``avminer bench pipeline`` prints them."""
    lines = [f"pipeline: {result['pipeline_fps']} frames/s end to end ({result['frames']} frames, "
             f"{result['batches']} batches of {result['mean_batch']} on average)"]
    if result["ratio"] is None:
        cpu = result["process_cpu_us_per_frame"]
        cores = result["cpus"] or 1
        lines.append(f"engine:   null (precomputed outputs): the plumbing's ceiling; {cpu} µs of CPU a frame is "
                     f"{cores / cpu * 1e6:.0f} frames/s on {cores} idle cores")
    else:
        lines += [
            f"engine:   {result['engine_fps']} frames/s bare, same batches ({result['backend']}, "
            f"model {result['model_version']})",
            f"ratio:    {result['ratio']} (goal >= 0.95; rounds: {result['ratios']}; "
            f"engine busy {result['engine_busy']:.0%} of the pipeline's time)",
        ]
    lines += [
        f"cpu:      {result['process_cpu_us_per_frame']} µs/frame in all, by stage "
        + ", ".join(f"{k} {v}" for k, v in result["cpu_us_per_frame"].items()),
        f"host:     {result['host_bytes_per_frame']} bytes/frame from the engine",
    ]
    return "\n".join(lines)
