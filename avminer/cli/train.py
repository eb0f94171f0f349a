"""``avminer train``: train an ensemble into a bundle, gate it per condition, release it, or serve.

    avminer train run --data DIR --out BUNDLE_DIR [--day-only] [--epochs N] [--width W] [--size HxW]
    avminer train gate --candidate BUNDLE [--production BUNDLE] --data DIR [--margin M]
    avminer train release BUNDLE [--production BUNDLE --data DIR] [--dataset-id ID]
    avminer train serve [--data DIR] [--threads N]
    avminer train report --data DIR [--quick] [--methods ...]
    avminer train run --adapt synth,adabn,pseudo --data DIR --target DIR --out BUNDLE   (domain adaptation)
    avminer train report --adapt --data DIR --target-data IDD_DIR [--quick]

Defaults come from the ``trainer`` settings section; flags override them. ``gate`` exits with status 3
when a slice regressed beyond the margin; ``release`` refuses (status 2) without uploading anything.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from avminer.errors import ConfigError

log = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW like 176x240, got {text!r}") from None
    return h, w


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "train", help="train, gate and release ensembles (the trainer service)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tsub = parser.add_subparsers(dest="train_command", metavar="ACTION")

    run = tsub.add_parser("run", help="train an ensemble on labeled frames and write a bundle")
    run.add_argument("--data", required=True, type=Path, metavar="DIR", help="CamVid-layout folder (manifest.csv)")
    run.add_argument("--out", required=True, type=Path, metavar="BUNDLE_DIR", help="bundle directory to write")
    run.add_argument("--day-only", action="store_true", help="train on day rows only; hold out the others")
    run.add_argument("--drive-log", type=Path, action="append", default=[], metavar="PATH",
                     help="also train on this drive log's labeled frames (<name>.gt.avro next to it); repeatable")
    run.add_argument("--version", default=None, help="model version (default: dev-<timestamp>)")
    run.add_argument("--epochs", type=int, help="epochs (default trainer.epochs)")
    run.add_argument("--members", type=int, help="ensemble size K (default trainer.members)")
    run.add_argument("--width", type=float, help="width multiplier (default trainer.width)")
    run.add_argument("--size", type=_size, metavar="HxW", help="input size, multiples of 8 (default trainer.*)")
    run.add_argument("--lr", type=float, help="Adam learning rate (default trainer.lr)")
    run.add_argument("--beta", type=float, help="DPE regulariser weight (default trainer.dpe_beta)")
    run.add_argument("--work-dir", type=Path, help="checkpoints (default trainer.work_dir); resumes if present")
    run.add_argument("--threads", type=int, default=0,
                     help="torch CPU threads (0: all cores; use 1 on a loaded machine, where OpenMP threads spin)")
    run.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    run.add_argument("--limit", type=int, help="at most this many frames per split (smoke runs)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--json", action="store_true", help="print one JSON object with the outcome")
    from avminer.cli import train_adapt

    train_adapt.add_run_arguments(run)
    run.set_defaults(train_func=_run)

    gate = tsub.add_parser("gate", help="compare a candidate with production per slice (mIoU)")
    gate.add_argument("--candidate", required=True, type=Path, metavar="BUNDLE")
    gate.add_argument("--production", type=Path, metavar="BUNDLE", help="model in production (omit: first release)")
    gate.add_argument("--data", required=True, type=Path, metavar="DIR", help="CamVid-layout folder")
    gate.add_argument("--margin", type=float, help="allowed mIoU drop per slice (default trainer.gate_margin)")
    gate.add_argument("--json", action="store_true", help="print the report as JSON")
    gate.set_defaults(train_func=_gate)

    rel = tsub.add_parser("release", help="gate (optional), check ORT parity, upload to S3, publish ModelRelease")
    rel.add_argument("bundle", type=Path, metavar="BUNDLE")
    rel.add_argument("--production", type=Path, metavar="BUNDLE", help="gate against this bundle first")
    rel.add_argument("--data", type=Path, metavar="DIR", help="held-out frames for the gate")
    rel.add_argument("--margin", type=float, help="allowed mIoU drop per slice (default trainer.gate_margin)")
    rel.add_argument("--dataset-id", help="dataset version the model was trained on")
    rel.add_argument("--notes", default="", help="free text carried by the release")
    rel.add_argument("--no-plans", action="store_true",
                     help="build no TensorRT plan even on a GPU machine (default: build one where CUDA and "
                          "tensorrt are available, record the skip elsewhere)")
    rel.set_defaults(train_func=_release)

    serve = tsub.add_parser("serve", help="follow label results and retrain (service mode)")
    serve.add_argument("--data", type=Path, metavar="DIR", help="base CamVid-layout training data")
    serve.add_argument("--threads", type=int, default=0,
                       help="torch CPU threads for training (0: all cores; 1 on a shared machine)")
    serve.set_defaults(train_func=_serve)

    from avminer.cli import train_report

    train_report.add_arguments(tsub.add_parser("report", **train_report.PARSER_TEXT))  # type: ignore[arg-type]

    parser.set_defaults(func=_dispatch, _parser=parser)


def _dispatch(args: argparse.Namespace) -> int:
    action = getattr(args, "train_func", None)
    if action is not None:
        return int(action(args))
    args._parser.print_help()
    return 2


def _run(args: argparse.Namespace) -> int:
    import time

    from avminer.config import load_settings
    from avminer.trainer.run import RunSpec, run_camvid
    from avminer.trainer.train import TrainConfig

    if args.adapt is not None:
        from avminer.cli.train_adapt import run_adapt

        return run_adapt(args)
    t = load_settings(args.config).trainer
    size = args.size or (t.input_height, t.input_width)
    if size[0] % 8 or size[1] % 8:
        raise ConfigError(f"must be multiples of 8, got {size[0]}x{size[1]}", "--size")
    spec = RunSpec(
        data_dir=args.data, out_dir=args.out, work_dir=args.work_dir or Path(t.work_dir),
        version=args.version or time.strftime("dev-%Y%m%d-%H%M%S", time.gmtime()),
        members=args.members or t.members, width=args.width or t.width, input_hw=size, day_only=args.day_only,
        limit=args.limit, drive_logs=list(args.drive_log),
        train=TrainConfig(
            epochs=args.epochs or t.epochs, batch_size=t.batch_size, lr=args.lr or t.lr,
            beta=t.dpe_beta if args.beta is None else args.beta, threads=args.threads, device=args.device,
            progress=not args.no_progress,
        ),
    )
    out = run_camvid(spec)
    if out.bundle_path is None:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    summary = {
        "bundle": str(out.bundle_path), "bundle_bytes": out.bundle_bytes,
        "seconds_per_epoch": round(out.seconds_per_epoch, 2), "seconds_total": round(out.seconds_total, 1),
        "miou": {k: round(m.miou, 4) for k, m in out.metrics.items()},
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0


def _gate(args: argparse.Namespace) -> int:
    from avminer.config import load_settings
    from avminer.trainer.gates import gate_bundles

    margin = args.margin if args.margin is not None else load_settings(args.config).trainer.gate_margin
    report = gate_bundles(args.candidate, args.production, args.data, margin, raise_on_failure=False)
    print(report.to_json() if args.json else report.table())
    return 0 if report.passed else 3


def _release(args: argparse.Namespace) -> int:
    from avminer.config import load_settings
    from avminer.trainer.gates import gate_bundles
    from avminer.trainer.release import release

    settings = load_settings(args.config)
    report = None
    if args.production is not None:
        if args.data is None:
            raise ConfigError("gating against --production needs --data with held-out frames", "--data")
        margin = args.margin if args.margin is not None else settings.trainer.gate_margin
        report = gate_bundles(args.bundle, args.production, args.data, margin)  # raises GateRefusedError
        print(report.table())
    record = release(args.bundle, settings, gate_report=report, dataset_id=args.dataset_id, notes=args.notes,
                     plans=not args.no_plans)
    print(json.dumps({"version": record.version, "bundle_uri": record.bundle_uri,
                      "manifest_sha256": record.manifest_sha256, "topic": settings.topics.releases}))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from avminer.config import load_settings
    from avminer.trainer.service import serve

    return int(serve(load_settings(args.config), base_data=args.data, threads=args.threads))
