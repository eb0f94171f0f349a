"""``avminer bench shift``: how well the shift score tells new conditions from the training domain.

For a model trained on day frames only, every frame of a CamVid-layout folder is run through the
ensemble, clear and in synthetic variants, and the AUROC of three per-frame scores is printed for:

- ``dusk_vs_day``: clear dusk frames (CamVid 0001TP) against clear day frames;
- ``fog<beta>_vs_clear``: day frames fogged with :func:`~avminer.datasets.conditions.apply_fog` (beta in
  1/m, at the native resolution with the label-aware depth) against the same frames clear;
- ``night_vs_day`` (``--night``): :func:`~avminer.datasets.conditions.apply_night` variants of the day frames.

Scores: ``mahalanobis`` (squared distance to the bundle's pooled reference, the score the miner
uses), ``msp`` (the max-softmax baseline, 1 - mean max probability) and ``mi`` (mean mutual
information, for reference). ``*_heldout`` repeats the comparison with negatives restricted to day
frames outside the ``train`` split, which the reference statistics have not seen. The drift
statistic (:class:`~avminer.scoring.shift.DriftMonitor`, one window holding each group's frames) and
its alarm are printed per group.

``--data`` is the pool (its day ``train`` rows fit a reference when the bundle has none);
``--eval-data`` (default: the pool) supplies the frames evaluated. Every manifest row is used.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from typing import Any

GOAL = 0.95


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "shift", help="AUROC of the shift score (dusk, fog, night vs day) next to the max-softmax baseline"
    )
    parser.add_argument("--model", help="bundle directory (default: the starter bundle)")
    parser.add_argument("--data", required=True, help="CamVid-layout folder (the pool)")
    parser.add_argument("--eval-data", help="CamVid-layout folder to evaluate on (default: --data)")
    parser.add_argument("--fog", default="0.01,0.02,0.05", help="fog densities beta in 1/m, comma-separated")
    parser.add_argument("--night", action="store_true", help="also evaluate night variants of the day frames")
    parser.add_argument("--batch", type=int, default=8, help="frames per engine batch")
    parser.add_argument("--backend", default="auto", help="engine backend (auto, onnxruntime, torch, tensorrt)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: library default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from avminer.config import load_settings
    from avminer.datasets.conditions import apply_fog, apply_night
    from avminer.datasets.layout import load_image, load_label, read_layout
    from avminer.engines import default_bundle_path, open_engine
    from avminer.engines.base import resize_batch
    from avminer.errors import AvminerError
    from avminer.scoring.evaluate import auroc
    from avminer.scoring.shift import DriftMonitor, ShiftReference, max_softmax_score
    from avminer.scoring.uncertainty import aggregate, mutual_information

    start = time.perf_counter()
    settings = load_settings(args.config)
    try:
        fogs = [float(x) for x in args.fog.split(",") if x.strip()]
    except ValueError:
        raise AvminerError(f"--fog must be comma-separated numbers, got {args.fog!r}") from None
    pool = read_layout(args.data)
    rows = read_layout(args.eval_data) if args.eval_data else pool
    engine = open_engine(args.model or default_bundle_path(), backend=args.backend, threads=args.threads)
    bundle = engine.bundle
    h, w = bundle.input_height, bundle.input_width

    def infer(images: list[Any]) -> tuple[Any, Any]:
        out = engine.infer(resize_batch(images, h, w))
        return out.probs, out.features

    # -- reference statistics ------------------------------------------------------------------------
    if bundle.reference_path is not None:
        reference = ShiftReference.load(bundle.reference_path)
        reference_source = "bundle"
    else:
        fit_rows = [r for r in pool if r.time_of_day == "day" and r.split == "train"] or \
                   [r for r in pool if r.time_of_day == "day"]
        feats = []
        for i in range(0, len(fit_rows), args.batch):
            feats.append(infer([load_image(r.image_path) for r in fit_rows[i: i + args.batch]])[1])
        reference = ShiftReference.fit({"all": np.concatenate(feats)})
        reference_source = f"fitted here on {len(fit_rows)} day frames of --data (the bundle has none)"

    # -- score every frame and variant -----------------------------------------------------------------
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    heldout: dict[str, list[bool]] = defaultdict(list)
    pending: list[tuple[str, bool, Any]] = []

    def flush() -> None:
        if not pending:
            return
        probs, feats = infer([img for _, _, img in pending])
        maha = reference.mahalanobis(feats)  # pooled reference: distance to the training domain
        msp = max_softmax_score(probs)
        mi = aggregate(mutual_information(probs), "mean")
        for i, (group, held, _) in enumerate(pending):
            scores[group]["mahalanobis"].append(float(maha[i]))
            scores[group]["msp"].append(float(msp[i]))
            scores[group]["mi"].append(float(mi[i]))
            heldout[group].append(held)
        pending.clear()

    def add(group: str, held: bool, image: Any) -> None:
        pending.append((group, held, image))
        if len(pending) >= args.batch:
            flush()

    for idx, row in enumerate(rows):
        image = load_image(row.image_path)
        held = row.split != "train"
        if row.time_of_day != "day":
            add(row.time_of_day, held, image)  # dusk (and any real night) frames, clear
            continue
        add("day", held, image)
        label = load_label(row.label_path) if fogs else None
        for beta in fogs:
            add(f"fog{beta:g}", held, apply_fog(image, beta, label=label))
        if args.night:
            add("night", held, apply_night(image, seed=idx))
    flush()
    engine.close()

    # -- figures --------------------------------------------------------------------------------------------
    if "day" not in scores:
        raise AvminerError(f"{args.eval_data or args.data} has no day frames to compare against")
    day = {k: np.array(v) for k, v in scores["day"].items()}
    day_held = np.array(heldout["day"])
    comparisons = {}
    pairs = [("dusk_vs_day", "dusk"), *((f"fog{b:g}_vs_clear", f"fog{b:g}") for b in fogs)]
    if args.night or "night" in scores:
        pairs.append(("night_vs_day", "night"))
    for name, group in pairs:
        if group not in scores:
            continue
        entry: dict[str, Any] = {"positives": len(scores[group]["msp"]), "negatives": int(day_held.size)}
        for score, values in scores[group].items():
            pos = np.array(values)
            entry[score] = round(auroc(pos, day[score]), 4)
            if day_held.any():
                entry[f"{score}_heldout"] = round(auroc(pos, day[score][day_held]), 4)
        # the goal: >= 0.95 and not below the baseline (both at a perfect 1.0 is a tie, reported as such)
        entry["beats_baseline"] = bool(entry["mahalanobis"] > entry["msp"])
        entry["goal_met"] = bool(entry["mahalanobis"] >= GOAL and entry["mahalanobis"] >= entry["msp"])
        comparisons[name] = entry
    drift = {}
    for group, by_score in scores.items():
        monitor = DriftMonitor(window=len(by_score["mahalanobis"]), alarm=settings.scoring.drift_alarm,
                               reference=reference)
        state = monitor.update(group, by_score["mahalanobis"])
        drift[group] = {"z": round(state.value, 2), "alarm": state.alarm, "frames": state.frames,
                        "mean_mahalanobis": round(float(np.mean(by_score["mahalanobis"])), 2)}
    result = {
        "model": bundle.version,
        "bundle": str(bundle.path),
        "backend": engine.backend if isinstance(getattr(engine, "backend", None), str) else args.backend,
        "data": str(args.data),
        "eval_data": str(args.eval_data or args.data),
        "reference": reference_source,
        "reference_mean": round(reference.slices["all"].score_mean, 2),
        "reference_std": round(reference.slices["all"].score_std, 2),
        "feature_dim": reference.dim,
        "auroc": comparisons,
        "drift": drift,
        "drift_alarm_level": settings.scoring.drift_alarm,
        "goal": GOAL,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"model {bundle.version} ({reference_source}); {sum(len(v['msp']) for v in scores.values())} frames "
          f"in {result['wall_s']} s")
    print(f"{'comparison':22s} {'n+':>5s} {'mahalanobis':>12s} {'held-out':>9s} {'msp':>7s} {'mi':>7s}  goal")
    for name, e in comparisons.items():
        verdict = ("met" if e["beats_baseline"] else "met (ties baseline)") if e["goal_met"] else "NOT met"
        print(f"{name:22s} {e['positives']:5d} {e['mahalanobis']:12.4f} {e.get('mahalanobis_heldout', float('nan')):9.4f}"
              f" {e['msp']:7.4f} {e['mi']:7.4f}  {verdict}")
    print(f"drift z per group (alarm above {settings.scoring.drift_alarm:g}):")
    for group, d in drift.items():
        print(f"  {group:12s} z={d['z']:8.2f} {'ALARM' if d['alarm'] else 'ok':5s} ({d['frames']} frames)")
    return 0
