"""``avminer backtest``: the closed mining loop on a fleet stream, every selection policy, several seeds."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "backtest",
        help="closed-loop fleet backtest: mine -> oracle labels -> fine-tune, gate, release -> next segment",
        description=(
            "Run the product's loop on a fleet stream (`avminer dataset fleet`) once per selection policy and "
            "seed: the embedded miner mines each segment, the oracle labels what it requested, the trainer "
            "fine-tunes the production model, the gates decide, the release is hot-swapped; after every round "
            "the production model is scored per condition on the held-out folders. Reports worst-condition "
            "mIoU vs labels bought (mean and per-seed range), labels bought per condition, time per round."
        ),
    )
    p.add_argument("--fleet", help="a directory written by `avminer dataset fleet` (stream, base, eval folders)")
    p.add_argument("--stream", help="the fleet drive log (default: FLEET/stream.avro)")
    p.add_argument("--base", help="CamVid-layout folder the starting model was trained on (default: FLEET/base)")
    p.add_argument("--eval", nargs="+", metavar="DIR",
                   help="held-out CamVid-layout folders (default: FLEET/eval-*); never frames of the stream")
    p.add_argument("--eval-fog", default="0.02,0.05", help="fog densities of eval day copies ('' for none)")
    p.add_argument("--no-eval-night", action="store_true", help="no night copies of the eval day frames")
    p.add_argument("--strategies", default=",".join(_strategies()),
                   help="comma-separated selection policies (default: all); POLICY-xK runs one at K times the "
                        "budget, e.g. random-x3")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per strategy (>= 3 for a claim)")
    p.add_argument("--rounds", type=int, help="rounds (stream segments; default 4)")
    p.add_argument("--budget", type=float, help="labels per round as a fraction of the segment (default 0.03)")
    p.add_argument("--size", help="model input HxW, multiples of 8 (default 96x128)")
    p.add_argument("--steps", type=int, help="optimiser steps per fine-tuning (default 40)")
    p.add_argument("--replay", type=float,
                   help="base frames replayed per bought label in each fine-tune (default 1, at least 16)")
    p.add_argument("--initial-epochs", type=int,
                   help="epochs the starting model is fine-tuned on the base frames at --size first (default 4)")
    p.add_argument("--no-gates", action="store_true", help="release every candidate (diagnosis)")
    p.add_argument("--bundle", help="starting model bundle (default: the starter bundle)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (each --threads threads)")
    p.add_argument("--threads", type=int, default=1, help="torch/ONNX Runtime threads per run (default 1)")
    p.add_argument("--quick", action="store_true", help="CI smoke settings (2 rounds, 48x64, few steps)")
    p.add_argument("--out", default="avminer-out/backtest", help="output directory (backtest.json, backtest.png)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: summarise the runs earlier backtests with these settings finished")
    p.add_argument("--resummarise", metavar="JSON",
                   help="run nothing: summarise again the runs a written backtest.json holds (into --out)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def _strategies() -> tuple[str, ...]:
    from avminer.evaluation.backtest import STRATEGIES

    return STRATEGIES


def run(args: argparse.Namespace) -> int:
    from avminer.config import load_settings
    from avminer.errors import DatasetError
    from avminer.evaluation.backtest import BacktestConfig, quick_config, resummarise, run_backtest

    stream_out = sys.stderr if args.json else sys.stdout

    def say(msg: str) -> None:
        print(msg, file=stream_out, flush=True)

    if args.resummarise:
        try:
            written = json.loads(Path(args.resummarise).read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"--resummarise {args.resummarise}: {exc}") from exc
        return _finish(resummarise(written), Path(args.out), args.json, say)
    fleet = Path(args.fleet) if args.fleet else None
    stream = Path(args.stream) if args.stream else (fleet / "stream.avro" if fleet else None)
    base = Path(args.base) if args.base else (fleet / "base" if fleet else None)
    evals = [Path(e) for e in args.eval] if args.eval else (sorted(fleet.glob("eval-*")) if fleet else [])
    if stream is None or base is None:
        raise DatasetError("give --fleet DIR (from `avminer dataset fleet`) or --stream and --base")
    try:
        fog = tuple(float(v) for v in args.eval_fog.split(",") if v.strip())
    except ValueError as exc:
        raise DatasetError(f"--eval-fog {args.eval_fog!r}: {exc}") from exc
    changes: dict[str, Any] = dict(
        stream=stream, base=base, eval_folders=evals, eval_fog=fog, eval_night=not args.no_eval_night,
        strategies=[s.strip() for s in args.strategies.split(",") if s.strip()],
        seeds=list(range(args.seeds)), gates=not args.no_gates, jobs=args.jobs, threads=args.threads,
        out=Path(args.out), initial_bundle=Path(args.bundle) if args.bundle else None,
    )
    for name in ("rounds", "budget", "steps", "replay", "initial_epochs"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.size:
        try:
            h, w = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise DatasetError(f"--size {args.size!r}: expected HxW, e.g. 96x128") from None
        changes["size"] = (h, w)
    cfg = (quick_config(**changes) if args.quick else BacktestConfig(**changes)).validate()
    settings = load_settings(args.config)
    report = run_backtest(cfg, settings, say, report_only=args.report_only)
    return _finish(report, cfg.out, args.json, say)


def _finish(report: dict[str, Any], out: Path, as_json: bool, say: Any) -> int:
    from avminer.evaluation.backtest import write_report

    jpath, ppath = write_report(report, out)
    if as_json:
        print(json.dumps({k: v for k, v in report.items() if k != "runs"}, default=str))
        return 0
    print_summary(report, say)
    say(f"wrote {jpath} and {ppath} ({report.get('seconds', 0):.0f} s)")
    return 0


def print_summary(report: dict[str, Any], say: Any) -> None:
    """The headline table: worst-condition mIoU per round, labels, rare-label share, goals."""
    say(f"\nstarting model: worst {report['initial']['worst_condition']} {report['initial']['worst_miou_common']:.3f}; "
        f"rare conditions are {report['rare_stream_share']:.1%} of the stream")
    say(f"{'strategy':9s} {'labels':>24s}   worst-condition mIoU per round (mean [min, max])")
    for name, s in report["strategies"].items():
        labels = "/".join(f"{c['labels']:.0f}" for c in s["curve"])
        curve = "  ".join(f"{c['worst']:.3f} [{c['worst_min']:.3f}, {c['worst_max']:.3f}]" for c in s["curve"])
        ratio = s["rare_buy_ratio"]
        say(f"{name:9s} {labels:>24s}   {curve}   seeds {len(s['seeds'])}   rare labels {s['rare_label_share']:.0%}"
            + (f" ({ratio:.1f}x stream share)" if ratio is not None else "")
            + f"  {s['seconds_per_round']:.0f} s/round")
    for name, g in report["goals"].items():
        frac = g["label_fraction_of_random"]
        say(f"{name}: reaches random's final worst ({g['random_final_worst']:.3f} at {g['random_final_labels']:.0f} labels) "
            + (f"with {g['labels_to_reach_random_final']:.0f} labels ({frac:.0%})" if frac is not None
               else "-- random did not improve on the starting model" if not g["random_improved_worst"] else "never")
            + "; beats by > spread, same round: " + ", ".join(f"{b} {sum(v)}/{len(v)}" for b, v in g["beats_by_more_than_spread"].items()))
        for m in g.get("more_labels", []):
            say(f"  vs {m['strategy']} (final worst {m['final_worst']:.3f} at {m['final_labels']:.0f} labels): "
                + (f"reached by {m['reached_by_round_labels']:.0f} labels (at most {m['label_fraction_bound']:.0%} of "
                   f"its labels; {m['labels_to_reach']:.0f} interpolated from the start)"
                   if m["label_fraction"] is not None
                   else "it did not improve on the starting model" if not m["improved_worst"] else "never reached")
                + ("; ahead at every round" if m["ahead_at_every_round"] else ""))
        day = [d for d in g["day_vs_random"] if d]
        if day:
            say(f"  day vs random ({day[-1]['condition']}): below by " + "  ".join(
                f"{d['gap']:+.3f} (spread {d['spread']:.3f}{', within' if d['within_spread'] else ', beyond'})"
                for d in day))
        for b, rows in g["at_equal_labels"].items():
            say(f"  vs {b} at equal labels: " + "  ".join(
                f"{r['labels']:.0f}: {r['mine']:.3f} vs " + (f"{r['theirs']:.3f} (spread {r['spread']:.3f}"
                                                              f"{', win' if r['win'] else ''})" if r["theirs"] is not None
                                                              else "beyond its labels")
                + (f" [ahead on {r['ahead']}/{r['paired_seeds']} seeds]" if r.get("paired_seeds") else "")
                for r in rows))
