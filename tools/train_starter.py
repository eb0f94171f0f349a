"""Reproduce the starter bundle shipped at avminer/data/starter_bundle/.

    .venv/bin/python tools/train_starter.py --data ../shared/data/camvid

Trains K=4 ERFNet members (width 0.25, 144x192) jointly with the DPE regulariser on the CamVid day
sequences (0006R0, 0016E5 train split), evaluates per slice on the held-out day val split and on the
dusk sequence 0001TP, fits the shift reference on the training frames, and writes the bundle.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from avminer.trainer.run import RunSpec, run_camvid
from avminer.trainer.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "camvid")
    p.add_argument("--out", type=Path, default=REPO / "avminer" / "data" / "starter_bundle")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/avminer-starter-train"))
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--size", default="144x192", help="HxW input size, multiples of 8")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = RunSpec(
        data_dir=args.data, out_dir=args.out, work_dir=args.work_dir, version="starter-1",
        members=args.members, width=args.width, input_hw=(h, w), day_only=True,
        train=TrainConfig(epochs=args.epochs, lr=args.lr, threads=args.threads, progress=not args.no_progress),
    )
    out = run_camvid(spec)
    print(json.dumps({
        "bundle": str(out.bundle_path), "bundle_mb": round(out.bundle_bytes / 1e6, 2),
        "seconds_per_epoch": round(out.seconds_per_epoch, 1), "seconds_total": round(out.seconds_total),
        "miou": {k: round(m.miou, 4) for k, m in out.metrics.items()},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
