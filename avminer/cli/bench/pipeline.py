"""``avminer bench pipeline``: end-to-end mining throughput against the bare engine (:mod:`avminer.evaluation.pipeline`)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("pipeline", help="end-to-end frames/s vs the bare engine; per-stage CPU")
    parser.add_argument("--frames", type=int, default=400, help="camera frames to mine (default 400)")
    parser.add_argument("--drive-log", help="drive log to replay (default: the bundled sample drive)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="pipeline + bare-engine rounds; the median-ratio round is reported (default 1)")
    parser.add_argument("--backend", help="engine backend (default: engine.backend); null: the plumbing's ceiling")
    parser.add_argument("--null-size", default="360x480", help="HxW the null engine asks frames at")
    parser.add_argument("--decode-workers", type=int, help="decode threads (default: decode.workers)")
    parser.add_argument("--batch", type=int, help="frames per batch (default: batcher.max_batch)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from avminer.errors import AvminerError
    from avminer.evaluation.pipeline import format_report, run_pipeline_bench

    try:
        h, w = (int(v) for v in args.null_size.lower().split("x"))
    except ValueError:
        raise AvminerError(f"--null-size must be HxW, e.g. 360x480, got {args.null_size!r}") from None
    result = run_pipeline_bench(args.config, frames=args.frames, drive_log=args.drive_log, rounds=args.rounds,
                                backend=args.backend, null_size=(h, w), decode_workers=args.decode_workers,
                                batch=args.batch)
    print(json.dumps(result) if args.json else format_report(result))
    return 0
