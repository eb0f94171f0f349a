"""``avminer eval``: per-condition mIoU (and IoU per class) of a model bundle on CamVid-layout folders.

    avminer eval --model BUNDLE --data DIR [--data DIR2] [--fog 0.01,0.02] [--night] [--sequences S ...] [--json]

Each folder is scored in its own taxonomy (its ``classes.json``, matched against the declared taxonomies;
IDD-lite's 7 groups through the declared CamVid -> IDD level-1 mapping) and every condition also in the
common taxonomy; :mod:`avminer.evaluation.segmentation` does the work.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from avminer.errors import ConfigError


def _betas(text: str) -> list[float]:
    try:
        betas = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fog densities like 0.01,0.02, got {text!r}") from None
    if not betas or any(not (b > 0 and math.isfinite(b)) for b in betas):
        raise argparse.ArgumentTypeError(f"fog densities must be > 0 (1/m), got {text!r}")
    return betas


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "eval", help="per-condition mIoU of a bundle on CamVid-layout folders (each in its own taxonomy)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, type=Path, metavar="BUNDLE", help="model bundle (needs model.pt)")
    parser.add_argument("--data", required=True, type=Path, action="append", metavar="DIR",
                        help="CamVid-layout folder (manifest.csv, classes.json); repeatable")
    parser.add_argument("--fog", type=_betas, default=[], metavar="BETAS",
                        help="also score fogged copies of the clear day frames at these densities (1/m)")
    parser.add_argument("--night", action="store_true", help="also score night copies of the clear day frames")
    parser.add_argument("--sequences", nargs="+", metavar="SEQ", help="only these sequences (the held-out ones)")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N frames per folder (smoke runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from avminer.evaluation.segmentation import bundle_predictor, evaluate, load_eval_slices

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"must be >= 1, got {args.limit}", "--limit")
    torch.set_num_threads(max(1, args.threads))
    predict, size = bundle_predictor(args.model)
    slices = load_eval_slices(args.data, size, fog_betas=args.fog, night=args.night, sequences=args.sequences,
                              limit=args.limit)
    report = evaluate(predict, slices)
    out = report.to_dict()
    if args.json:
        print(json.dumps({"model": str(args.model), "data": [str(d) for d in args.data], **out}))
        return 0
    print(_table(out))
    return 0


def _table(out: dict[str, Any]) -> str:
    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [f"| condition | frames | taxonomy | mIoU | mIoU ({out['common_taxonomy']}) | pixel acc |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key, s in out["conditions"].items():
        lines.append(f"| {key} | {s['frames']} | {s['taxonomy']} | {num(s['miou'])} | {num(s['miou_common'])} "
                     f"| {num(s['pixel_accuracy'])} |")
    lines.append(f"worst: {out['worst_condition']} ({num(out['worst_miou_common'])})")
    for key, s in out["conditions"].items():
        lines.append(f"{key}: " + ", ".join(f"{c} {num(v)}" for c, v in s["per_class"].items()))
    return "\n".join(lines)
