"""``avminer train report --data DIR``: baseline vs pruned vs low-rank vs ExpandNets, in one table.

Registered by :mod:`avminer.cli.train` (this module has no ``register``: it is not a top-level command)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PARSER_TEXT = {
    "help": "train a baseline member and each compression method's variant; print params, MACs, latency, mIoU",
    "description": (
        "Trains one ERFNet member per method from the same seed on the CamVid day training frames, "
        "compresses it (sparse-group-lasso pruning, nuclear-norm low-rank split, ExpandNets contraction) "
        "and prints one table: params, GMAC per frame, CPU latency (torch and ONNX Runtime, batch 1), "
        "mIoU on held-out day (val) and dusk frames. Defaults are the full setting (trainer width and "
        "input size from the settings, 30 epochs: hours on two cores); --quick finishes in minutes."
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``avminer train report``."""
    parser.add_argument("--data", required=True, metavar="DIR", help="CamVid-layout folder holding manifest.csv")
    parser.add_argument("--quick", action="store_true",
                        help="width 0.25, 88x120, every 2nd training frame, 12 epochs at lr 5e-3 (minutes)")
    parser.add_argument("--epochs", type=int, help="epochs per method (default: 12 with --quick, else trainer.epochs)")
    parser.add_argument("--methods", nargs="+", metavar="M", help="subset of baseline prune lowrank expandnet")
    parser.add_argument("--width", type=float, help="member width multiplier")
    parser.add_argument("--size", metavar="HxW", help="input size, multiples of 8 (e.g. 176x240)")
    parser.add_argument("--prune-lambda", type=float, help="group-lasso weight λ_g (default 0.5; 0.6 with --quick)")
    parser.add_argument("--nuclear", type=float, help="nuclear-norm weight τ (default 0.3)")
    parser.add_argument("--energy", type=float, help="singular-value energy kept by the split (default 0.99)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training and latency (default 2)")
    parser.add_argument("--out", metavar="DIR", default="train-report",
                        help="where the per-layer plots go (default ./train-report)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--progress", action="store_true", help="progress bars while training")
    from avminer.cli.train_adapt import add_report_arguments

    add_report_arguments(parser)
    parser.set_defaults(func=_run, train_func=_run)


def _run(args: argparse.Namespace) -> int:
    from avminer.config import load_settings
    from avminer.errors import ConfigError
    from avminer.trainer.report import ReportConfig, run_report

    if args.adapt:
        from avminer.cli.train_adapt import run_report as run_adapt_report

        return run_adapt_report(args)
    overrides: dict[str, Any] = {"threads": args.threads, "out_dir": Path(args.out), "progress": args.progress}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.methods:
        overrides["methods"] = tuple(args.methods)
    if args.width is not None:
        overrides["width"] = args.width
    if args.size:
        try:
            h, w = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise ConfigError(f"expected HxW like 176x240, got {args.size!r}", "--size") from None
        overrides["input_hw"] = (h, w)
    for flag, key in (("prune_lambda", "prune_group"), ("nuclear", "nuclear"), ("energy", "rank_energy")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.quick:
        cfg = ReportConfig.quick(Path(args.data), **overrides)
    else:
        trainer = load_settings(args.config).trainer
        base: dict[str, Any] = dict(width=trainer.width, input_hw=(trainer.input_height, trainer.input_width),
                                    epochs=trainer.epochs, batch_size=trainer.batch_size, lr=trainer.lr)
        base.update(overrides)
        cfg = ReportConfig(Path(args.data), **base)
    report = run_report(cfg)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(report.table())
        for method, path in report.plots.items():
            print(f"{method}: initial vs learned per layer -> {path}")
        for row in report.rows:
            if row.extra:
                print(f"{row.method}: " + ", ".join(f"{k}={v}" for k, v in row.extra.items() if k != "arch_blocks"))
    return 0
