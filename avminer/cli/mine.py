"""``avminer mine``: run the mining daemon (Kafka consumer group, or a drive log when no broker is set)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "mine",
        help="run the miner: Kafka when kafka.bootstrap_servers is set, else a drive log (embedded mode)",
        description=(
            "Mine fleet frames for labeling. With kafka.bootstrap_servers set, join the consumer group on "
            "the frames and radar topics and run until SIGTERM/SIGINT (drain, commit, close within "
            "shutdown_deadline_s). Without a broker, mine one drive log (source.drive_log, else the bundled "
            "sample drive) into sinks.output_dir (frames, requests.jsonl, decisions.jsonl, SQLite catalog)."
        ),
    )
    parser.add_argument("--drive-log", help="embedded mode: drive log to mine (overrides source.drive_log)")
    parser.add_argument("--output", help="output directory (overrides sinks.output_dir)")
    parser.add_argument("--bundle", help="model bundle directory (overrides engine.bundle)")
    parser.add_argument("--frames", type=int, help="embedded mode: stop after this many camera frames")
    parser.add_argument("--repeat", action="store_true", help="embedded mode: replay the log until --frames")
    parser.add_argument("--json", action="store_true", help="print the run's counters as one JSON object")
    parser.set_defaults(func=_mine)


def _mine(args: argparse.Namespace) -> int:
    from avminer.config import load_settings
    from avminer.mining.daemon import run_miner

    overrides: dict[str, Any] = {}
    if args.output:
        overrides["sinks"] = {"output_dir": args.output}
    if args.bundle:
        overrides["engine"] = {"bundle": args.bundle}
    settings = load_settings(args.config, overrides=overrides)
    stats = run_miner(settings, drive_log=args.drive_log, frames=args.frames, repeat=args.repeat)
    summary = {
        "mode": "embedded" if settings.embedded else "kafka",
        "frames": stats.frames, "decisions": stats.decisions, "mined": stats.mined,
        "requests_sent": stats.requests_sent, "dead_letters": stats.dead_letters, "commits": stats.commits,
        "pauses": stats.pauses, "drained": stats.drained, "wall_s": round(stats.wall_s, 3),
        "output_dir": settings.sinks.output_dir,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0 if stats.drained else 1
