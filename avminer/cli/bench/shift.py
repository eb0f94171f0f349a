"""``avminer bench shift``: AUROC of the shift score against the max-softmax baseline on dusk, fog and night.

The benchmark is :mod:`avminer.evaluation.shift` (what is compared, and how); this module parses the
options and prints the figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "shift", help="AUROC of the shift score (dusk, fog, night vs day) next to the max-softmax baseline"
    )
    parser.add_argument("--model", help="bundle directory (default: the starter bundle)")
    parser.add_argument("--data", required=True, help="CamVid-layout folder (the pool)")
    parser.add_argument("--eval-data", help="CamVid-layout folder to evaluate on (default: --data)")
    parser.add_argument("--fog", default="0.01,0.02,0.05", help="fog densities beta in 1/m, comma-separated")
    parser.add_argument("--night", action="store_true", help="also evaluate night variants of the day frames")
    parser.add_argument("--batch", type=int, default=8, help="frames per engine batch")
    parser.add_argument("--backend", default="auto", help="engine backend (auto, onnxruntime, torch, tensorrt)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: library default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from avminer.config import load_settings
    from avminer.errors import AvminerError
    from avminer.evaluation.shift import ShiftBenchConfig, format_report, run_shift_bench

    try:
        fogs = tuple(float(x) for x in args.fog.split(",") if x.strip())
    except ValueError:
        raise AvminerError(f"--fog must be comma-separated numbers, got {args.fog!r}") from None
    cfg = ShiftBenchConfig(
        data=Path(args.data), eval_data=Path(args.eval_data) if args.eval_data else None,
        model=Path(args.model) if args.model else None, fogs=fogs, night=args.night, batch=args.batch,
        backend=args.backend, threads=args.threads, drift_alarm=load_settings(args.config).scoring.drift_alarm,
    )
    result = run_shift_bench(cfg)
    print(json.dumps(result) if args.json else format_report(result))
    return 0
