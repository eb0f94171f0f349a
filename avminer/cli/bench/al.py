"""``avminer bench al``: closed-loop active-learning simulation, strategies side by side in one run."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "al",
        help="active-learning simulation: random, entropy, MC-dropout BALD, DPE MI, avminer policy",
        description="Start from a few labeled day frames; each round every strategy picks frames from the pool, "
        "the oracle labels them, the model is retrained, mIoU is measured per condition on held-out frames.",
    )
    p.add_argument("--data", required=True, help="pool: a CamVid-layout directory (every manifest row is used)")
    p.add_argument("--eval-data", help="held-out CamVid-layout directory (default: every 4th pool frame)")
    p.add_argument("--quick", action="store_true", help="small settings for CI (a few minutes on 2 cores)")
    p.add_argument("--strategies", help="comma-separated subset of random,entropy,mc_bald,dpe_mi,policy")
    p.add_argument("--epochs", type=float, help="passes over the labeled set per (re)training (default 40)")
    p.add_argument("--size", help="input HxW, multiples of 8 (default 48x64; quick 32x48)")
    p.add_argument("--fractions", help="labeled fractions after each round, e.g. 0.1,0.2,0.3")
    p.add_argument("--limit", type=int, help="use N evenly spaced pool frames (smoke tests)")
    p.add_argument("--seed", type=int, default=0, help="first seed (initial set, random picks, weights)")
    p.add_argument("--seeds", type=int, default=1,
                   help="run the whole simulation for seeds seed..seed+N-1 and report mean curves with the "
                        "per-seed values (the spread shows what is training noise); default 1")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for --seeds (each with --threads threads)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: all cores); 1 is far faster on a machine shared with other work")
    p.add_argument("--out", default="avminer-out/bench-al", help="directory for al.json and al.png")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avminer.errors import DatasetError
    from avminer.evaluation.al import QUICK, ALConfig, Simulation, load_frames, run_seeds, write_report

    cfg = QUICK if args.quick else ALConfig()
    changes: dict[str, Any] = {"seed": args.seed, "threads": args.threads}
    if args.strategies:
        changes["strategies"] = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.epochs:
        changes["epochs"] = args.epochs
    if args.size:
        h, w = (int(v) for v in args.size.lower().split("x"))
        changes.update(height=h, width=w)
    if args.fractions:
        changes["fractions"] = [float(v) for v in args.fractions.split(",")]
    cfg = replace(cfg, **changes).validate()
    stream = sys.stderr if args.json else sys.stdout  # --json keeps stdout for the one JSON object

    def say(msg: str) -> None:
        print(msg, file=stream, flush=True)

    if args.seeds < 1 or args.jobs < 1:
        raise DatasetError("--seeds and --jobs must be at least 1")
    pool, held = load_frames(args.data, args.eval_data, cfg, limit=args.limit)
    say(f"pool {len(pool)} frames, held-out {len(held)}, input {cfg.height}x{cfg.width}, width {cfg.net_width}, "
        f"K={cfg.members}, {cfg.epochs:g} epochs per training (>= {cfg.min_steps} steps)")
    if args.seeds == 1:
        report = {**Simulation(pool, held, cfg, progress=say).run(), "seeds": [cfg.seed]}
    else:
        seeds = list(range(args.seed, args.seed + args.seeds))
        say(f"seeds {seeds} in {min(args.jobs, len(seeds))} process(es); progress lines on stderr")
        report = run_seeds(args.data, args.eval_data, cfg, seeds, args.jobs, args.limit)
    jpath, ppath = write_report(report, args.out)
    report["files"] = {"json": str(jpath), "plot": str(ppath)}
    if args.json:
        print(json.dumps(report))
        return 0
    mean_of = f" (mean of seeds {report['seeds']})" if len(report.get("seeds", [])) > 1 else ""
    print(f"\nfull-pool mIoU {report['full_pool']['miou']:.3f}{mean_of}  (took {report['seconds']:.0f} s)")
    print(f"{'strategy':10s} " + " ".join(f"{r['fraction']:>7.1%}" for r in next(iter(report['strategies'].values()))['curve'])
          + "   reaches full-pool at")
    for name, s in report["strategies"].items():
        reach = s["reaches_full_pool_at"]
        print(f"{name:10s} " + " ".join(f"{r['miou']:7.3f}" for r in s["curve"])
              + f"   {reach:.1%}" if reach is not None else f"{name:10s} "
              + " ".join(f"{r['miou']:7.3f}" for r in s["curve"]) + "   not reached")
    cost = report.get("uncertainty_seconds_per_frame")
    if cost:
        print(f"uncertainty per frame: ensemble K={cost['ensemble_k']} {cost['ensemble'] * 1e3:.1f} ms, "
              f"MC-dropout T=20 {cost['mc_dropout_t20'] * 1e3:.1f} ms ({cost['mc_over_ensemble']:.1f}x)")
    print(f"wrote {jpath} and {ppath}")
    return 0
