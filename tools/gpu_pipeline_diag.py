"""Why the pipeline reaches ~0.4 of the bare CUDA engine: GIL switch interval, decode threads, compiled engine.

    PYTHONPATH=.:SITE python3 tools/gpu_pipeline_diag.py OUT.json   # on a GPU machine, SITE as gpu_check.sh makes it

Each row is ``avminer bench pipeline`` (3,000 frames, batch 32, starter bundle, torch backend) through
``tools/gpu_check.py``'s pipeline part, with one setting changed; ``FRAMES`` and ``DEV`` (cpu) make a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check  # noqa: E402


def _row(name: str, workers: int, switch: float, compiled: bool) -> dict[str, Any]:
    args = argparse.Namespace(device=os.environ.get("DEV", "cuda"), pipeline_frames=int(os.environ.get("FRAMES", "3000")),
                              pipeline_batch=32, decode_workers=workers, pipeline_compile=compiled)
    old = sys.getswitchinterval()
    sys.setswitchinterval(switch)
    start = time.monotonic()
    try:
        r = gpu_check._pipeline(args, "torch")
        row = {k: r.get(k) for k in ("pipeline_fps", "engine_fps", "ratio", "engine_busy", "mean_batch",
                                      "cpu_us_per_frame", "process_cpu_us_per_frame")}
    except Exception as exc:  # one variant failing must not lose the others
        row = {"error": repr(exc)[:400]}
    finally:
        sys.setswitchinterval(old)
    row.update(name=name, workers=workers, switch=switch, compile=compiled, wall=round(time.monotonic() - start, 1))
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    variants = [("eager-w8", 8, 0.005, False), ("eager-w8-sw0.5ms", 8, 0.0005, False), ("eager-w2", 2, 0.005, False),
                ("eager-w2-sw0.5ms", 2, 0.0005, False), ("eager-w8-again", 8, 0.005, False),
                ("compiled-w8", 8, 0.005, True)]
    rows = [_row(*v) for v in variants]
    Path(sys.argv[1]).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
