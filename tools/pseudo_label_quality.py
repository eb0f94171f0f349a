"""How good are the self-training targets? Pseudo-labels of the India *validation* frames, scored against their labels.

    .venv/bin/python tools/pseudo_label_quality.py --data ../shared/data/camvid --target-data ../shared/data/idd_lite

Runs the ``synth`` stage of ``avminer train report --adapt --validation`` (seed 0, the report's thin validation
settings: 120 source frames, 2 epochs, every 3rd India validation frame), then pseudo-labels the India
validation frames (never trained on) the way the self-training rounds pseudo-label the adaptation frames,
in each variant: CamVid classes or IDD groups, with or without the mirror-image average, keep 0.2 and 0.35
(rounds 1 and 2). Prints one JSON object: per variant the share of pixels kept, the precision of the kept
pixels in IDD's 7 groups (a fine class counts as its group), per group the kept share and precision, and the
whole model's pixel accuracy for comparison. Only validation frames are loaded and scored.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avminer.engines.bundle import load_bundle  # noqa: E402
from avminer.evaluation.adaptation import adaptation_splits  # noqa: E402
from avminer.models import load_ensemble  # noqa: E402
from avminer.taxonomy import CAMVID_TO_IDD_LEVEL1, IDD_LEVEL1  # noqa: E402
from avminer.trainer.adapt import AdaptConfig, PseudoConfig, adapt, ensemble_pixel_scores, pseudo_label  # noqa: E402
from avminer.trainer.coarse import COARSE_BASE  # noqa: E402
from avminer.trainer.train import TrainConfig, set_threads  # noqa: E402

STARTER = Path(__file__).resolve().parents[1] / "avminer" / "data" / "starter_bundle"


def to_groups(labels: np.ndarray) -> np.ndarray:
    """Pseudo-labels (fine ids or coarse-encoded groups, VOID) -> IDD group ids, 255 where not kept."""
    groups = np.where(labels >= COARSE_BASE, labels.astype(np.int64) - COARSE_BASE,
                      CAMVID_TO_IDD_LEVEL1.map_labels(labels))  # fine VOID -> the groups' void
    return np.where(groups == IDD_LEVEL1.void, 255, groups)


def score(kept: np.ndarray, truth: np.ndarray) -> dict[str, object]:
    valid = truth != IDD_LEVEL1.void
    on = (kept != 255) & valid
    out: dict[str, object] = {"kept_share": round(float(on.sum() / valid.sum()), 4),
                              "precision": round(float((kept[on] == truth[on]).mean()), 4) if on.any() else None}
    per = {}
    for g, name in enumerate(IDD_LEVEL1.classes):
        truth_g = valid & (truth == g)
        kept_g = on & (kept == g)
        per[name] = {"truth_px": int(truth_g.sum()), "kept_px": int(kept_g.sum()),
                     "precision": round(float((truth[kept_g] == g).mean()), 3) if kept_g.any() else None,
                     "recall_of_truth": round(float((kept[truth_g] == g).mean()), 3) if truth_g.any() else None}
    out["groups"] = per
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--target-data", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    set_threads(1)
    bundle = load_bundle(STARTER)
    size = (bundle.input_height, bundle.input_width)
    splits = adaptation_splits(args.data, args.target_data, size, thin={"day": 2, "india": 3, "india_adapt": 3},
                               validation=True)
    india = next(s for s in splits.eval_slices if s.condition == "india/day").frames
    truth = india.labels
    base = load_ensemble(bundle.torch_path)
    results: dict[str, object] = {"frames": len(india)}
    for name, methods in (("starter", ()), ("synth", ("synth",))):
        model = copy.deepcopy(base)
        if methods:
            train = TrainConfig(epochs=2, lr=5e-4, seed=args.seed, threads=1, eval_every=10_000, progress=False,
                                coarse_taxonomy=IDD_LEVEL1.name)
            adapt(model, splits.source, splits.target, AdaptConfig(methods, train=train, max_source_frames=120))
        pred, _, _ = ensemble_pixel_scores(model, india, groups=CAMVID_TO_IDD_LEVEL1.matrix)
        valid = truth != IDD_LEVEL1.void
        variants: dict[str, object] = {"model_pixel_accuracy": round(float((pred[valid] == truth[valid]).mean()), 4),
                                       "model_groups": score(pred.astype(np.int64), truth)}
        for groups in (False, True):
            for flip in (False, True):
                for r in (0, 1):
                    cfg = PseudoConfig(groups=groups, flip=flip)
                    pl = pseudo_label(model, india, cfg, r, coarse=CAMVID_TO_IDD_LEVEL1)
                    key = f"{'groups' if groups else 'fine'}{'+flip' if flip else ''} keep {cfg.keep_at(r):.2f}"
                    variants[key] = score(to_groups(pl.frames.labels), truth)
        results[name] = variants
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
