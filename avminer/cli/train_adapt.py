"""``avminer train run --adapt ...`` and ``avminer train report --adapt``: domain adaptation from the CLI.

    avminer train run --adapt synth,adabn,pseudo --data CAMVID --target DIR [--target-sequences S ...]
        [--target-labels DIR] [--init BUNDLE] [--synth-mix fog=0.1,dusk=0.3] [--pseudo-rounds N] --out BUNDLE
    avminer train report --adapt --data CAMVID --target-data IDD_LITE [--quick] [--seeds 0 1] [--json]
        [--validation] [--methods ROW ...] [--pseudo-groups on|off] [--pseudo-flip on|off] [--source-share S] ...

``--methods`` names report rows (``synth+mix``: self-training through cross-domain ClassMix); the
self-training flags (``--pseudo-groups``, ``--pseudo-flip``, ``--pseudo-lr-scale``, ``--min-threshold``,
``--keep``, ``--source-share``, ``--source-bn``) and ``--synth-keep-clear`` exist to choose settings on
``--validation``.

``report --adapt`` without scale flags is the full report (:class:`avminer.evaluation.adaptation.AdaptReportConfig`'s
defaults, under an hour on two shared cores at one thread); ``--quick`` is the CI scale.

``run --adapt`` fine-tunes ``--init`` (default: the bundled starter model) on the labeled ``--data``
frames with the chosen methods (:mod:`avminer.trainer.adapt`), towards the unlabeled ``--target`` frames;
``--target-labels`` folders add labeled target frames in their own taxonomy (IDD-lite's 7 groups go
through the declared mapping). Pseudo-labeled frames are listed in the bundle's manifest and, with
``--catalog``, marked in the catalog as pseudo-labeled (never as human labels).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from avminer.errors import ConfigError

STARTER = Path(__file__).resolve().parents[1] / "data" / "starter_bundle"


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """The adaptation options of ``avminer train run``."""
    run.add_argument("--adapt", metavar="METHODS",
                     help="adapt a trained bundle instead of training from scratch: comma-separated synth, adabn, "
                          "pseudo or mix (self-training through cross-domain ClassMix) (or none: fine-tune on "
                          "--target-labels only)")
    run.add_argument("--init", type=Path, metavar="BUNDLE", help="bundle to adapt (default: the starter bundle)")
    run.add_argument("--target", type=Path, action="append", default=[], metavar="DIR",
                     help="CamVid-layout folder of unlabeled target frames (labels ignored); repeatable")
    run.add_argument("--target-sequences", nargs="+", metavar="SEQ", help="only these sequences of --target")
    run.add_argument("--target-labels", type=Path, action="append", default=[], metavar="DIR",
                     help="labeled target frames in any declared taxonomy (IDD-lite's groups via the mapping)")
    run.add_argument("--synth-mix", metavar="C=R,...",
                     help="synthetic share per condition (fog, dusk, night, rain, appearance, target_style: the "
                          "style of the --target frames), e.g. fog=0.1,dusk=0.3 (default trainer.synth_mix)")
    run.add_argument("--pseudo-rounds", type=int, help="pseudo-label rounds (default 2)")
    from avminer.cli.catalog import add_catalog_argument

    add_catalog_argument(run)


def run_adapt(args: argparse.Namespace) -> int:
    """``avminer train run --adapt``."""
    from avminer.config import load_settings
    from avminer.datasets.layout import read_classes
    from avminer.engines.bundle import load_bundle
    from avminer.models import load_ensemble
    from avminer.taxonomy import CAMVID, TaxonomyError, mapping, taxonomy_for
    from avminer.trainer.adapt import AdaptConfig, PseudoConfig, adapt, parse_methods, record_pseudo_labels
    from avminer.trainer.coarse import encode_coarse
    from avminer.trainer.data import LabeledFrames, load_camvid
    from avminer.trainer.release import bundle_dir_size, export_release_bundle, fit_reference
    from avminer.trainer.synth import SynthMix
    from avminer.trainer.train import TrainConfig, evaluate

    methods = parse_methods(args.adapt)
    if ({"adabn", "pseudo", "mix"} & set(methods)) and not args.target:
        raise ConfigError("adabn, pseudo and mix need unlabeled target frames", "--target")
    if not methods and not args.target_labels:
        raise ConfigError("--adapt none fine-tunes on target labels only; give --target-labels", "--target-labels")
    if args.pseudo_rounds is not None and args.pseudo_rounds < 1:
        raise ConfigError(f"must be >= 1, got {args.pseudo_rounds}", "--pseudo-rounds")
    t = load_settings(args.config).trainer
    mix = SynthMix.parse(args.synth_mix, "--synth-mix") if args.synth_mix else SynthMix.parse(t.synth_mix, "trainer.synth_mix")
    if "synth" in methods and mix is not None and mix.ratios.get("target_style") and not args.target:
        raise ConfigError("synth's mix renders frames in the style of the target frames (target_style); give "
                          "--target, or a --synth-mix without target_style", "--target")
    bundle = load_bundle(args.init or STARTER)
    if bundle.torch_path is None:
        raise ConfigError(f"{bundle.path}: no model.pt to fine-tune", "--init")
    size = (bundle.input_height, bundle.input_width)
    model = load_ensemble(bundle.torch_path)
    t0 = time.perf_counter()
    source = load_camvid(args.data, size, splits=["train"], time_of_day=["day"] if args.day_only else None,
                         limit=args.limit)
    target = LabeledFrames.concat([load_camvid(d, size, sequences=args.target_sequences, limit=args.limit)
                                   for d in args.target]) if args.target else source.subset([])
    labeled_parts, coarse = [], ""
    for folder in args.target_labels:
        try:
            tax = taxonomy_for(*read_classes(folder))
            to_coarse = mapping(CAMVID, tax)
        except TaxonomyError as exc:
            raise ConfigError(str(exc), "--target-labels") from exc
        frames = load_camvid(folder, size, limit=args.limit)
        if to_coarse is not None:
            if coarse and coarse != tax.name:
                raise ConfigError(f"one coarse taxonomy per run; got {coarse} and {tax.name}", "--target-labels")
            coarse = tax.name
            frames = LabeledFrames(frames.images, encode_coarse(frames.labels, to_coarse, CAMVID.void),
                                   frames.frame_ids, frames.slices, frames.sequences)
        labeled_parts.append(frames)
    train = TrainConfig(
        epochs=args.epochs or 2, batch_size=t.batch_size, lr=args.lr or 5e-4,
        beta=t.dpe_beta if args.beta is None else args.beta, threads=args.threads, device=args.device,
        progress=not args.no_progress, eval_every=10_000, synth_mix=mix.as_dict() if mix else {},
        coarse_taxonomy=coarse,
    )
    pseudo = PseudoConfig(rounds=args.pseudo_rounds or 2)
    labeled = LabeledFrames.concat(labeled_parts) if labeled_parts else None
    model, record = adapt(model, source, target, AdaptConfig(methods, train=train, pseudo=pseudo),
                          target_labeled=labeled)
    held = load_camvid(args.data, size, splits=["val"], limit=args.limit) if _has_split(args.data, "val") else None
    metrics = evaluate(model, held) if held is not None else {}
    version = args.version or time.strftime("dev-%Y%m%d-%H%M%S", time.gmtime())
    trained_on = {"dataset": args.data.name, "frames": len(source), "adapted_from": bundle.version,
                  "adaptation": record.as_dict(), "pseudo_labeled_frames": record.pseudo_frames,
                  "target_labeled_frames": record.target_labels_used, "config": {
                      k: v for k, v in vars(train).items() if k != "progress"}}
    out = export_release_bundle(model, args.out, version=version, input_hw=size, reference=fit_reference(model, source),
                                metrics=metrics, trained_on=trained_on, classes=list(CAMVID.classes))
    marked = None
    if args.catalog is not None and record.pseudo_frames:
        from avminer.cli.catalog import open_from_args

        with open_from_args(args) as catalog:
            marked = record_pseudo_labels(catalog, record.pseudo_frames, version)
    summary: dict[str, Any] = {
        "bundle": str(out.path), "bundle_bytes": bundle_dir_size(out.path), "adaptation": record.as_dict(),
        "seconds_total": round(time.perf_counter() - t0, 1), "miou": {k: round(m.miou, 4) for k, m in metrics.items()},
    }
    if marked is not None:
        summary["catalog_pseudo_marked"] = marked
    print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


def _has_split(folder: Path, split: str) -> bool:
    from avminer.datasets.layout import read_layout

    return any(r.split == split for r in read_layout(folder))


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--adapt`` options of ``avminer train report``."""
    parser.add_argument("--adapt", action="store_true",
                        help="the domain-adaptation report (method x condition) instead of the compression one")
    parser.add_argument("--target-data", metavar="DIR", help="with --adapt: IDD-lite folder (India, 7 groups)")
    parser.add_argument("--model", metavar="BUNDLE", help="with --adapt: bundle to adapt (default: the starter)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S", help="with --adapt: seeds (default 0 1; quick: 0)")
    parser.add_argument("--rounds", type=int, help="with --adapt: pseudo-label rounds (default 2; quick: 1)")
    parser.add_argument("--max-source-frames", type=int, metavar="N",
                        help="with --adapt: source frames per training stage (default 120; quick: 24)")
    parser.add_argument("--thin", metavar="ROLE=N,...",
                        help="with --adapt: keep every N-th frame of a role (source, day, dusk, india, india_adapt), "
                             "e.g. india=3; merged over the default (india_adapt=3; quick: day=6,dusk=3,india=24,"
                             "india_adapt=12), N=1 keeps every frame")
    parser.add_argument("--validation", action="store_true",
                        help="with --adapt: score on the validation slices (CamVid day sequence 0006R0 held out of "
                             "the source, the last third of the dusk adaptation frames, the IDD-lite validation "
                             "sequences), never loading the evaluation frames: for choosing settings")
    parser.add_argument("--lr", type=float, help="with --adapt: fine-tuning learning rate (default 5e-4)")
    parser.add_argument("--interpolate", type=float, metavar="A",
                        help="with --adapt: the +wise rows' weights are (1 - A) * starting + A * fine-tuned (default 0.5)")
    parser.add_argument("--interpolate-sweep", metavar="A,B,...",
                        help="with --adapt: train each +wise row once per seed and score it at every weight given "
                             "(rows ROW@A; for choosing the weight with --validation)")
    parser.add_argument("--source-share", type=float, metavar="S",
                        help="with --adapt: least share of labeled frames in every self-training epoch (default 0.5 "
                             "in pseudo rows, 0.75 in mix rows; 0: every pseudo-labeled frame)")
    parser.add_argument("--synth-mix", metavar="C=R,...",
                        help="with --adapt: synthetic share per condition in the synth rows, e.g. "
                             "fog=0.1,dusk=0.3,appearance=0.2 (default: the adaptation's default mix)")
    parser.add_argument("--pseudo-groups", choices=("on", "off"),
                        help="with --adapt: self-training rows pseudo-label in IDD's 7 groups (on) or CamVid's "
                             "classes (off) (default: off for pseudo rows, the mix rows' setting for mix rows)")
    parser.add_argument("--pseudo-flip", choices=("on", "off"),
                        help="with --adapt: pseudo-labels from probabilities averaged over each frame and its mirror")
    parser.add_argument("--pseudo-lr-scale", type=float, metavar="X",
                        help="with --adapt: the self-training rounds' learning rate as a multiple of --lr (default 1)")
    parser.add_argument("--source-bn", action="store_true",
                        help="with --adapt: rows without adabn end with the BatchNorm statistics re-estimated on the "
                             "source frames")
    parser.add_argument("--synth-keep-clear", action="store_true",
                        help="with --adapt: synth rows train on every rendered frame beside its clear original "
                             "instead of in its place")
    parser.add_argument("--min-threshold", type=float, metavar="P",
                        help="with --adapt: no pseudo-label below this confidence, whatever the class (default 0)")
    parser.add_argument("--keep", type=float, metavar="Q",
                        help="with --adapt: first-round share of each class's agreeing pixels kept (default 0.2)")


def _thin(text: str) -> dict[str, int]:
    from avminer.evaluation.adaptation import THIN_ROLES

    out: dict[str, int] = {}
    for part in text.split(","):
        role, _, num = part.partition("=")
        role = role.strip()
        if role not in THIN_ROLES:
            raise ConfigError(f"unknown role {role!r}; known: {list(THIN_ROLES)}", "--thin")
        try:
            out[role] = int(num)
        except ValueError:
            raise ConfigError(f"expected role=N with N >= 1, got {part!r}", "--thin") from None
        if out[role] < 1:
            raise ConfigError(f"expected role=N with N >= 1, got {part!r}", "--thin")
    return out


def run_report(args: argparse.Namespace) -> int:
    """``avminer train report --adapt``."""
    from avminer.evaluation.adaptation import AdaptReportConfig, run_adapt_report
    from avminer.trainer.synth import SynthMix

    if not args.target_data:
        raise ConfigError("the adaptation report needs the India frames (IDD-lite folder)", "--target-data")
    overrides: dict[str, Any] = {"threads": args.threads, "progress": args.progress}
    for flag, key in (("epochs", "epochs"), ("rounds", "rounds"), ("max_source_frames", "max_source_frames"), ("lr", "lr"),
                      ("interpolate", "interpolate")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.seeds:
        overrides["seeds"] = tuple(args.seeds)
    if args.interpolate_sweep:
        try:
            overrides["interpolate_sweep"] = tuple(float(a) for a in args.interpolate_sweep.split(","))
        except ValueError:
            raise ConfigError(f"expected comma-separated weights, got {args.interpolate_sweep!r}",
                              "--interpolate-sweep") from None
    if args.source_share is not None:
        overrides["source_share"] = args.source_share
    if args.synth_mix:
        mix = SynthMix.parse(args.synth_mix, "--synth-mix")
        overrides["synth_mix"] = mix.as_dict() if mix else {}
    for flag in ("pseudo_groups", "pseudo_flip"):
        if getattr(args, flag) is not None:
            overrides[flag] = getattr(args, flag) == "on"
    if args.pseudo_lr_scale is not None:
        overrides["pseudo_lr_scale"] = args.pseudo_lr_scale
    if args.min_threshold is not None:
        overrides["min_threshold"] = args.min_threshold
    if args.source_bn:
        overrides["source_bn"] = True
    if args.synth_keep_clear:
        overrides["synth_keep_clear"] = True
    if args.keep is not None:
        overrides["keep"] = args.keep
    overrides["validation"] = args.validation
    if args.methods:
        overrides["rows"] = tuple(args.methods)
    paths = (Path(args.data), Path(args.target_data), Path(args.model) if args.model else STARTER)
    cfg = AdaptReportConfig.quick(*paths, **overrides) if args.quick else AdaptReportConfig(*paths, **overrides)
    if args.thin:
        cfg = dataclasses.replace(cfg, thin={**cfg.thin, **_thin(args.thin)})
    t0 = time.perf_counter()
    report = run_adapt_report(cfg)
    if args.json:
        print(json.dumps({**report.as_dict(), "seconds_total": round(time.perf_counter() - t0, 1)}))
    else:
        print(report.table())
        print(f"splits: {report.splits}; {time.perf_counter() - t0:.0f} s")
    return 0
