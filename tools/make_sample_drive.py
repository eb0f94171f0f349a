#!/usr/bin/env python
"""Regenerate the sample drive shipped in the package (avminer/data/sample_drive.avro + .gt.avro).

48 CamVid frames at their native 480x360 with simulated radar and their labels in the side file:
24 day frames (12 consecutive seconds each of 0006R0 and 0016E5) and 24 dusk frames (24 consecutive
seconds of 0001TP). The output is byte-for-byte reproducible from the same CamVid folder.

    .venv/bin/python tools/make_sample_drive.py [--camvid ../shared/data/camvid] [--out avminer/data/sample_drive.avro]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avminer.datasets import drive, layout

REPO = Path(__file__).resolve().parents[1]
# sequence -> (first frame, number of consecutive frames), positions in the sequence's frame order.
SELECTION = {"0006R0": (40, 12), "0016E5": (120, 12), "0001TP": (20, 24)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--camvid", type=Path, default=REPO.parent / "shared" / "data" / "camvid")
    parser.add_argument("--out", type=Path, default=REPO / "avminer" / "data" / "sample_drive.avro")
    args = parser.parse_args(argv)
    rows = layout.read_layout(args.camvid)
    chosen = []
    for sequence, (start, count) in SELECTION.items():
        seq_rows = sorted((r for r in rows if r.sequence == sequence), key=lambda r: r.frame_index)
        if len(seq_rows) < start + count:
            print(f"{args.camvid}: sequence {sequence} has {len(seq_rows)} frames, need {start + count}",
                  file=sys.stderr)
            return 1
        chosen += seq_rows[start:start + count]
    classes, void = layout.read_classes(args.camvid)
    summary = drive.write_drive(chosen, args.out, classes=classes, void=void, source="camvid:sample",
                                 reproducible=True)
    size = summary.path.stat().st_size + summary.ground_truth.stat().st_size
    print(f"wrote {summary.path} and {summary.ground_truth.name}: {summary.frames} frames "
          f"{summary.time_of_day}, {summary.radar_scans} radar scans, {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
