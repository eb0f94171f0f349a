"""``avminer mine``: run the mining daemon (Kafka consumer group, or a drive log when no broker is set)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "mine",
        help="run the miner: Kafka when kafka.bootstrap_servers is set, else a drive log (embedded mode)",
        description=(
            "Mine fleet frames for labeling. With kafka.bootstrap_servers set, join the consumer group on "
            "the frames and radar topics and run until SIGTERM/SIGINT (drain, commit, close within "
            "shutdown_deadline_s). Without a broker, mine one drive log (source.drive_log, else the bundled "
            "sample drive) into sinks.output_dir (frames, requests.jsonl, decisions.jsonl, SQLite catalog, "
            "report/index.html) and print a per-condition summary."
        ),
    )
    parser.add_argument("--drive-log", help="embedded mode: drive log to mine (overrides source.drive_log)")
    parser.add_argument("--output", help="output directory (overrides sinks.output_dir)")
    parser.add_argument("--bundle", help="model bundle directory (overrides engine.bundle)")
    parser.add_argument("--frames", type=int, help="embedded mode: stop after this many camera frames")
    parser.add_argument("--repeat", action="store_true", help="embedded mode: replay the log until --frames")
    parser.add_argument("--json", action="store_true", help="print the run's counters as one JSON object")
    parser.add_argument("--profile", choices=["sample"],
                        help="embedded mode only: selection settings scaled to a short drive log (printed; "
                             "refused with a broker): 'sample' is what `make run` uses on the sample drive")
    parser.add_argument("--no-report", action="store_true",
                        help="embedded mode: write no HTML report (default: OUTPUT/report/index.html)")
    parser.set_defaults(func=_mine)


def _mine(args: argparse.Namespace) -> int:
    from avminer.catalog import default_catalog_url
    from avminer.config import load_settings
    from avminer.mining.daemon import run_miner
    from avminer.mining.profiles import check_embedded, describe, profile_overrides
    from avminer.mining.report import MiningReport

    overrides: dict[str, Any] = {}
    if args.output:
        overrides["sinks"] = {"output_dir": args.output}
    if args.bundle:
        overrides["engine"] = {"bundle": args.bundle}
    if args.profile:
        overrides.update(profile_overrides(args.profile, load_settings(args.config).selection))
    settings = load_settings(args.config, overrides=overrides)
    if args.profile:
        check_embedded(settings, args.profile)
        print(describe(settings, args.profile), flush=True)
    # The per-condition summary of an embedded run; a miner on Kafka runs until stopped: its metrics are that.
    summary_report = MiningReport() if settings.embedded else None
    stats = run_miner(settings, drive_log=args.drive_log, frames=args.frames, repeat=args.repeat,
                      on_decided=summary_report.add if summary_report is not None else None)
    summary = {
        "mode": "embedded" if settings.embedded else "kafka",
        "frames": stats.frames, "decisions": stats.decisions, "mined": stats.mined,
        "requests_sent": stats.requests_sent, "dead_letters": stats.dead_letters, "commits": stats.commits,
        "pauses": stats.pauses, "drained": stats.drained, "wall_s": round(stats.wall_s, 3),
        "output_dir": settings.sinks.output_dir,
    }
    if summary_report is not None and not args.no_report:
        from avminer.report.build import write_run_report

        summary["report"] = str(write_run_report(settings))
    if args.json:
        print(json.dumps(summary))
        return 0 if stats.drained else 1
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    if summary_report is not None:
        out = Path(settings.sinks.output_dir)
        print()
        print(summary_report.render())
        print()
        s3 = settings.sinks.s3
        frames = f"s3://{s3.bucket}/{s3.prefix}" if s3.endpoint_url else f"{out / 'frames'}/"
        print(f"frames:    {frames} (mined frames, uncertainty maps, predictions)")
        print(f"requests:  {out / 'requests.jsonl'} (one label request per mined frame)")
        print(f"decisions: {out / 'decisions.jsonl'} (one per frame seen)")
        print(f"catalog:   {default_catalog_url(settings)}")
        if "report" in summary:
            serve = " ".join(["avminer report", *(["--run", str(out)] if args.output else []),
                              *(["--profile", args.profile] if args.profile else []), "--serve"])
            print(f"report:    {summary['report']}  (open it in a browser; `{serve}` serves it)")
    return 0 if stats.drained else 1
