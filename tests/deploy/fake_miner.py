"""A stand-in miner for the Prometheus test: serves avminer.metrics and updates them like the daemon.

    python -m tests.deploy.fake_miner --port 9464 --done /tmp/done.json

It "replays" a deterministic drive of frames over three condition slices, mines every n-th frame of a
slice (n per slice), keeps the windowed mining rate per slice in ``MINING_RATE`` and the counters the
alert rules use, then writes the ground truth (decisions and mined frames per slice, windowed rates) to
``--done`` and keeps serving until it is terminated, like a daemon after its backlog.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections import deque
from pathlib import Path

from avminer import metrics

# slice -> mine every n-th frame of the slice
PERIODS = {"day/clear/cambridge_uk": 10, "dusk/clear/cambridge_uk": 4, "night/fog/cambridge_uk": 2}
TARGETS = {"day/clear/cambridge_uk": 0.001, "dusk/clear/cambridge_uk": 0.001, "night/fog/cambridge_uk": 0.005}
WINDOW = 100  # frames per slice in the windowed rate


def replay(frames: int, frame_delay_s: float) -> dict[str, dict[str, float]]:
    slices = list(PERIODS)
    windows = {s: deque[bool](maxlen=WINDOW) for s in slices}
    decided = dict.fromkeys(slices, 0)
    mined = dict.fromkeys(slices, 0)
    metrics.MODEL_INFO.info({"version": "fake-1", "backend": "onnxruntime"})
    metrics.ASSIGNED_PARTITIONS.set(1)
    for s in slices:
        metrics.MINING_TARGET.labels(slice=s).set(TARGETS[s])
    for i in range(frames):
        s = slices[i % len(slices)]
        metrics.FRAMES_IN.labels(source="drive_log").inc()
        is_mined = decided[s] % PERIODS[s] == 0
        decided[s] += 1
        windows[s].append(is_mined)
        metrics.DECISIONS.labels(slice=s, mined=str(is_mined).lower()).inc()
        metrics.UNCERTAINTY.labels(slice=s).observe(0.3 if is_mined else 0.01)
        metrics.ENTROPY.labels(slice=s).observe(1.2 if is_mined else 0.2)
        metrics.SHIFT_SCORE.labels(slice=s).observe(40.0 if s.startswith("night") else 3.0)
        metrics.DRIFT.labels(slice=s).set(4.0 if s.startswith("night") else 0.5)
        metrics.DRIFT_ALARM.labels(slice=s).set(1 if s.startswith("night") else 0)
        if is_mined:
            mined[s] += 1
            metrics.MINED.labels(slice=s, reason="uncertainty").inc()
        metrics.MINING_RATE.labels(slice=s).set(sum(windows[s]) / len(windows[s]))
        if i % 8 == 7:
            metrics.ENGINE_LATENCY.labels(backend="onnxruntime").observe(0.04)
            metrics.ENGINE_BATCH.observe(8)
            metrics.COMMITS.labels(result="ok").inc()
        metrics.QUEUE_DEPTH.labels(stage="decode").set(i % 5)
        metrics.CONSUMER_LAG.labels(topic="avminer.frames", partition="0").set(frames - i - 1)
        time.sleep(frame_delay_s)
    return {
        "decisions": {s: float(n) for s, n in decided.items()},
        "mined": {s: float(n) for s, n in mined.items()},
        "window_rate": {s: sum(w) / len(w) for s, w in windows.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--done", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=800)
    parser.add_argument("--frame-delay-s", type=float, default=0.005)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    metrics.serve("127.0.0.1", args.port)
    truth = replay(args.frames, args.frame_delay_s)
    tmp = args.done.with_suffix(".tmp")
    tmp.write_text(json.dumps(truth))
    tmp.rename(args.done)
    stop.wait()


if __name__ == "__main__":
    main()
