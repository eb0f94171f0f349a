"""``avminer demo``: mine the bundled sample drive with the starter model and show what was found.

The sample drive is small (tens of frames), so the production target rate (``selection.target_rate``,
1/1000) would mine nothing; the demo applies the ``sample`` profile (:mod:`avminer.mining.profiles`) —
``--target-rate 0.1`` (the per-condition ``selection.slice_rates`` scaled by the same factor), a short
selection warm-up and no camera cooldown — and prints it. Everything else comes from the usual
settings. It writes the HTML report (``OUT/report/index.html``) and a contact sheet.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from avminer.mining.profiles import SAMPLE_TARGET_RATE as DEMO_TARGET_RATE
from avminer.mining.profiles import SAMPLE_WARMUP_FRAMES as DEMO_WARMUP_FRAMES


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="mine the bundled sample drive with the starter model; print a report, write a contact sheet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="avminer-demo", help="output directory (default: avminer-demo)")
    parser.add_argument("--drive-log", help="drive log to mine instead of the bundled sample drive")
    parser.add_argument("--target-rate", type=float, default=DEMO_TARGET_RATE,
                        help=f"fraction of frames to mine (default {DEMO_TARGET_RATE}: the sample drive is small)")
    parser.add_argument("--warmup-frames", type=int, default=DEMO_WARMUP_FRAMES,
                        help=f"frames per slice before quantile thresholds are trusted (default {DEMO_WARMUP_FRAMES})")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from avminer.config import load_settings
    from avminer.datasets import sample_drive_path
    from avminer.mining.daemon import run_miner
    from avminer.mining.profiles import SAMPLE, describe, sample_selection
    from avminer.mining.report import MiningReport
    from avminer.report.build import write_run_report

    out = Path(args.out)
    base = load_settings(args.config).selection
    overrides: dict[str, Any] = {
        "kafka": {"bootstrap_servers": None},  # the demo is always embedded
        "sinks": {"output_dir": str(out), "catalog_url": f"sqlite:///{(out / 'catalog.db').resolve()}"},
        "selection": sample_selection(base, args.target_rate, args.warmup_frames),
        "metrics": {"port": 0},
    }
    settings = load_settings(args.config, overrides=overrides)
    drive = Path(args.drive_log) if args.drive_log else sample_drive_path()
    print(f"avminer demo: mining {drive} with the {'configured' if settings.engine.bundle else 'starter'} model")
    print(f"  {describe(settings, SAMPLE)}")
    report = MiningReport()
    stats = run_miner(settings, drive_log=drive, on_decided=report.add, handle_signals=True, serve_metrics=False)
    print()
    print(report.render())
    sheet = report.contact_sheet(out / "contact_sheet.png")
    page = write_run_report(settings)
    print()
    print(f"{stats.frames} frames in {stats.wall_s:.1f}s; {stats.dead_letters} dead letters")
    print(f"outputs: {out}/ (requests.jsonl, decisions.jsonl, frames/, catalog.db)")
    print(f"contact sheet: {sheet}" if sheet else "contact sheet: nothing mined, none written")
    print(f"report: {page}  (open it in a browser)")
    return 0
