"""``avminer dataset camvid DIR --out drive.avro``: a CamVid-layout folder -> drive log + ground truth."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("dataset", help="turn datasets into drive logs")
    ds = parser.add_subparsers(dest="dataset", metavar="DATASET")
    ds.required = True
    cam = ds.add_parser(
        "camvid",
        help="CamVid layout (manifest.csv, JPEG frames, PNG labels) -> drive log with simulated radar",
        description=(
            "Write every manifest row (any split) as camera frames plus simulated radar scans, in time "
            "order, to a drive log, and the labels to its ground-truth side file <stem>.gt.avro. "
            "Condition variants use documented physical models (see avminer.datasets.conditions); their "
            "parameters go into each frame's metadata."
        ),
    )
    cam.add_argument("directory", metavar="DIR", help="CamVid-layout folder holding manifest.csv")
    cam.add_argument("--out", required=True, help="drive log to write (e.g. drive.avro)")
    cam.add_argument("--fog", type=float, metavar="BETA",
                     help="synthetic fog, attenuation in 1/m (0.005 light .. 0.02 dense, ~150 m visibility)")
    cam.add_argument("--airlight", type=float, metavar="A",
                     help="fog airlight in [0, 1] (default: estimated per frame)")
    cam.add_argument("--night", action="store_true", help="synthetic night: darker, gamma, shot and read noise")
    cam.add_argument("--region", metavar="NAME", help="override the region condition (default: manifest location)")
    cam.add_argument("--limit", type=int, metavar="N", help="only the first N frames of the drive (in time order)")
    cam.add_argument("--sequences", nargs="+", metavar="SEQ", help="only these sequences (e.g. 0001TP 0006R0)")
    cam.add_argument("--seed", type=int, default=0, help="seed of radar, jitter and sensor noise (default 0)")
    cam.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded variants (default 90)")
    cam.add_argument("--no-progress", action="store_true", help="no progress bar")
    cam.set_defaults(func=_camvid)
    _register_fleet(ds)


def _register_fleet(ds: Any) -> None:
    fleet = ds.add_parser(
        "fleet",
        help="a fleet-like stream (mostly day, a few %% dusk/fog/night/new region, standstills) + held-out folders",
        description=(
            "Write a deterministic fleet drive log mixing CamVid-layout sources with the condition shares "
            "given, its ground-truth side file, the base training folder and held-out evaluation folders "
            "(never a frame in both); see avminer.datasets.fleet for the split."
        ),
    )
    fleet.add_argument("camvid", metavar="CAMVID_DIR", help="CamVid-layout folder (day rows with a val split, dusk)")
    fleet.add_argument("--region", metavar="DIR", help="CamVid-layout folder of a new geography (e.g. IDD-lite)")
    fleet.add_argument("--out", required=True, help="output directory")
    fleet.add_argument("--frames", type=int, default=3000, help="camera frames in the stream (default 3000)")
    fleet.add_argument("--share", action="append", default=[], metavar="COND=FRACTION",
                       help="share of a rare condition (dusk, fog, night, new_region); repeatable; defaults "
                            "dusk=0.02 fog=0.02 night=0.01 new_region=0.02 (new_region 0 without --region)")
    fleet.add_argument("--fog-betas", default="0.01,0.02,0.05", help="fog densities in 1/m (default 0.01,0.02,0.05)")
    fleet.add_argument("--vehicles", type=int, default=4, help="vehicles (default 4)")
    fleet.add_argument("--standstill", type=float, default=0.15,
                       help="probability that a frame starts a standstill (repeated, jittered; default 0.15)")
    fleet.add_argument("--eval-region-frames", type=int, default=150,
                       help="at most this many held-out new-region frames (default 150)")
    fleet.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    fleet.add_argument("--no-progress", action="store_true", help="no progress bar")
    fleet.set_defaults(func=_fleet)


def _fleet(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avminer.datasets.fleet import FleetSpec, build_fleet
    from avminer.errors import DatasetError

    shares = dict(FleetSpec().shares)
    if not args.region:
        shares["new_region"] = 0.0
    for item in args.share:
        name, sep, value = item.partition("=")
        try:
            shares[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise DatasetError(f"--share {item!r}: expected COND=FRACTION, e.g. dusk=0.02")
    try:
        betas = tuple(float(b) for b in args.fog_betas.split(",") if b.strip())
    except ValueError as exc:
        raise DatasetError(f"--fog-betas {args.fog_betas!r}: {exc}") from exc
    spec = FleetSpec(frames=args.frames, shares=shares, fog_betas=betas, vehicles=args.vehicles,
                     standstill=args.standstill, seed=args.seed,
                     eval_region_frames=args.eval_region_frames).validate()
    with tqdm(total=spec.frames, unit="frame", file=sys.stderr, disable=args.no_progress or None) as bar:
        summary = build_fleet(args.camvid, args.out, spec, region=args.region, progress=bar.update)
    shares_seen = ", ".join(f"{c} {n} ({n / summary.frames:.1%}, {summary.distinct_by_condition.get(c, 0)} distinct)"
                            for c, n in summary.by_condition.items())
    print(f"wrote {summary.stream}: {summary.frames} frames: {shares_seen}")
    print(f"ground truth: {summary.ground_truth}; base data: {summary.base}")
    print(f"held out: {', '.join(str(p) for p in summary.eval_folders)}; index: {summary.index}")
    return 0


def _camvid(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avminer.datasets import drive, layout
    from avminer.errors import DatasetError

    if args.limit is not None and args.limit < 1:
        raise DatasetError(f"--limit must be >= 1, got {args.limit}")
    if args.fog is not None and not args.fog >= 0:
        raise DatasetError(f"--fog BETA must be >= 0 (1/m), got {args.fog}")
    if not 1 <= args.quality <= 100:
        raise DatasetError(f"--quality must be in 1..100, got {args.quality}")
    rows = layout.read_layout(args.directory)
    classes, void = layout.read_classes(args.directory)
    rows = drive.select_rows(rows, sequences=args.sequences, limit=args.limit, night=args.night)
    options = drive.DriveOptions(
        fog_beta=args.fog, fog_airlight=args.airlight, night=args.night, region=args.region, seed=args.seed,
        jpeg_quality=args.quality,
    )
    with tqdm(total=len(rows), unit="frame", file=sys.stderr, disable=args.no_progress or None) as bar:
        summary = drive.write_drive(
            rows, args.out, options, classes=classes, void=void, source=f"camvid:{args.directory}",
            progress=bar.update,
        )
    size = summary.path.stat().st_size + summary.ground_truth.stat().st_size
    span = (summary.end_us - summary.start_us) / 1e6 if summary.start_us is not None and summary.end_us else 0.0
    tod = ", ".join(f"{k} {v}" for k, v in sorted(summary.time_of_day.items()))
    print(f"wrote {summary.path}: {summary.frames} frames ({tod}), {summary.radar_scans} radar scans "
          f"({summary.detections} detections, simulated), {len(summary.vehicles)} vehicles")
    print(f"ground truth: {summary.ground_truth} ({summary.frames} labels); {size / 1e6:.1f} MB in all")
    print(f"vehicles: {', '.join(summary.vehicles)}; time span {span:.0f} s")
    print(f"took {summary.seconds:.1f} s ({summary.frames / max(summary.seconds, 1e-9):.0f} frames/s)")
    return 0
