"""``avminer bench pipeline``: end-to-end mining throughput against the bare engine, same batches, same run.

The pipeline runs embedded (the sample drive replayed to ``--frames`` distinct frames), with the real
engine, scoring, selection and local sinks in a temporary directory. Every batch the engine saw is
recorded; afterwards the bare engine runs exactly those batches again. ``ratio`` = pipeline frames/s
divided by bare-engine frames/s (goal: >= 0.90, i.e. the plumbing costs under 10%).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("pipeline", help="end-to-end frames/s vs the bare engine")
    parser.add_argument("--frames", type=int, default=400, help="camera frames to mine (default 400)")
    parser.add_argument("--drive-log", help="drive log to replay (default: the bundled sample drive)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_bench)


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


def _bench(args: argparse.Namespace) -> int:
    from avminer.config import load_settings
    from avminer.mining.daemon import open_engines, run_miner

    with tempfile.TemporaryDirectory(prefix="avminer-bench-") as tmp:
        overrides: dict[str, Any] = {
            "kafka": {"bootstrap_servers": None},
            "sinks": {"output_dir": tmp, "catalog_url": f"sqlite:///{tmp}/catalog.db"},
            "metrics": {"port": 0},
        }
        settings = load_settings(args.config, overrides=overrides)
        holder = open_engines(settings)
        try:
            rec = _RecordingHolder(holder)
            stats = run_miner(settings, engines=rec, drive_log=args.drive_log, frames=args.frames, repeat=True,
                              handle_signals=False, serve_metrics=False)
            engine = holder.current
            start = time.perf_counter()
            for images in rec.batches:
                engine.infer(images)
            bare_s = time.perf_counter() - start
            backend, version = engine.backend, engine.version
        finally:
            holder.close()
    bare_frames = sum(int(b.shape[0]) for b in rec.batches)
    pipeline_fps = stats.decisions / stats.wall_s if stats.wall_s else 0.0
    engine_fps = bare_frames / bare_s if bare_s else 0.0
    result = {
        "frames": stats.decisions,
        "pipeline_fps": round(pipeline_fps, 2),
        "engine_fps": round(engine_fps, 2),
        "ratio": round(pipeline_fps / engine_fps, 3) if engine_fps else None,
        "batches": len(rec.batches),
        "mean_batch": round(bare_frames / max(1, len(rec.batches)), 2),
        "engine_busy": round(stats.engine_s / stats.wall_s, 3) if stats.wall_s else None,
        "mined": stats.mined,
        "backend": backend,
        "model_version": version,
        "pipeline_wall_s": round(stats.wall_s, 3),
        "bare_engine_s": round(bare_s, 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"pipeline: {result['pipeline_fps']} frames/s end to end ({stats.decisions} frames, "
              f"{result['batches']} batches of {result['mean_batch']} on average)")
        print(f"engine:   {result['engine_fps']} frames/s bare, same batches ({backend}, model {version})")
        print(f"ratio:    {result['ratio']} (goal >= 0.90)")
    return 0
