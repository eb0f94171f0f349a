"""``avminer bench engine``: frames/s and host bytes per frame per backend and precision (:func:`avminer.evaluation.throughput.engine_bench`)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "engine", help="frames/s and host bytes per frame per backend and precision on a bundle")
    parser.add_argument("--bundle", help="bundle directory (default: the starter bundle)")
    parser.add_argument("--batch", type=int, default=8, help="frames per batch")
    parser.add_argument("--frames", type=int, default=32, help="frames timed per backend")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds the frames are split into")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for both (0: library default)")
    parser.add_argument("--configs", default="onnxruntime,torch:fp32",
                        help="comma-separated BACKEND[:PRECISION][:compiled], e.g. "
                             "onnxruntime,torch:fp32,torch:bf16,torch:fp16:compiled (precision: torch only)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (torch and TensorRT configurations)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from avminer.evaluation.throughput import engine_bench, format_engine_report

    configs = tuple(c.strip() for c in args.configs.split(",") if c.strip())
    result = engine_bench(args.bundle, batch=args.batch, frames=args.frames, rounds=args.rounds, threads=args.threads,
                          configs=configs, device=args.device)
    print(json.dumps(result) if args.json else format_engine_report(result))
    return 0
