"""The one segmentation evaluation: per-condition mIoU of any model on CamVid-layout folders.

Every report, gate comparison, backtest round and ``avminer eval`` goes through :func:`evaluate`, so a
figure in one place means the same thing as in another.

- Frames come from one or more CamVid-layout folders (``manifest.csv``); each folder is scored in its
  *own* taxonomy, read from its ``classes.json`` and matched against the declared taxonomies of
  :mod:`avminer.taxonomy` (never guessed). A model predicting CamVid's 11 classes is scored on IDD-lite's
  7 groups through the declared mapping: a group's probability is the sum of its classes' probabilities.
- A frame's *condition* is ``location/time_of_day`` (plus ``/weather`` when not clear). Fog and night
  variants of the clear day frames are made on request by the dataset tools' own models
  (:func:`avminer.datasets.conditions.apply_fog`, :func:`~avminer.datasets.conditions.apply_night`) and form
  conditions of their own (``cambridge_uk/fog0.02``, ``cambridge_uk/night``).
- Besides each condition's mIoU in its own taxonomy, every condition is also scored in one *common*
  taxonomy (IDD's 7 level-1 groups by default), so that conditions labeled in different schemes can be
  compared; :attr:`EvalReport.worst` is the lowest common-taxonomy mIoU — the figure a fleet cares about
  (no failing condition), not the average.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from avminer.errors import DatasetError
from avminer.taxonomy import (
    CAMVID,
    IDD_LEVEL1,
    Taxonomy,
    confusion,
    iou_per_class,
    mapping,
    mean_iou,
    taxonomy_for,
)

Predictor = Callable[[NDArray[np.uint8]], NDArray[np.float32]]
"""uint8 ``[N, H, W, 3]`` RGB at the model's input size -> float32 ``[N, C, H, W]`` ensemble-mean probabilities."""


@dataclass
class EvalSlice:
    """The frames of one condition, at the model's input size, with the taxonomy their labels are in."""

    condition: str
    frames: Any  # avminer.trainer.data.LabeledFrames (kept Any: this module must not import torch at load)
    taxonomy: Taxonomy


@dataclass(frozen=True)
class SliceResult:
    """Scores of one condition.

    Attributes:
        condition: the condition key.
        frames: number of frames.
        taxonomy: name of the labels' taxonomy.
        miou: mIoU in that taxonomy.
        per_class: IoU per class of that taxonomy (NaN where absent from truth and prediction).
        miou_common: mIoU in the common taxonomy.
        pixel_accuracy: fraction of labeled pixels predicted right (own taxonomy).
    """

    condition: str
    frames: int
    taxonomy: str
    miou: float
    per_class: dict[str, float]
    miou_common: float
    pixel_accuracy: float


@dataclass(frozen=True)
class EvalReport:
    """Per-condition results and the worst condition in the common taxonomy."""

    slices: list[SliceResult]
    common_taxonomy: str

    @property
    def worst(self) -> SliceResult:
        """The condition with the lowest common-taxonomy mIoU."""
        scored = [s for s in self.slices if np.isfinite(s.miou_common)]
        if not scored:
            raise DatasetError("no condition has a finite mIoU")
        return min(scored, key=lambda s: s.miou_common)

    def by_condition(self) -> dict[str, SliceResult]:
        """Results keyed by condition."""
        return {s.condition: s for s in self.slices}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN IoUs as None)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not np.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        worst = self.worst
        return {
            "common_taxonomy": self.common_taxonomy,
            "worst_condition": worst.condition,
            "worst_miou_common": clean(worst.miou_common),
            "conditions": {s.condition: clean(asdict(s)) for s in self.slices},
        }


def condition_key(location: str, time_of_day: str, weather: str = "clear") -> str:
    """``location/time_of_day`` plus ``/weather`` when the weather is not clear."""
    key = f"{location}/{time_of_day}"
    return key if weather in ("", "clear") else f"{key}/{weather}"


def _stable_seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def load_eval_slices(
    folders: Sequence[str | Path],
    size: tuple[int, int],
    *,
    fog_betas: Sequence[float] = (),
    night: bool = False,
    sequences: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[EvalSlice]:
    """Held-out frames per condition from CamVid-layout folders, resized to ``size`` = (height, width).

    Args:
        folders: CamVid-layout folders; each is scored in the taxonomy of its ``classes.json``.
        size: the model's input (height, width).
        fog_betas: also make fogged copies of each folder's clear day frames at these densities (1/m).
        night: also make night copies of each folder's clear day frames.
        sequences: keep only these sequences (the held-out ones); default every row.
        limit: at most this many frames per folder (tests).

    Raises:
        DatasetError: a folder is unreadable, its classes match no declared taxonomy, or nothing is left.
    """
    from avminer.datasets.conditions import apply_fog, apply_night
    from avminer.datasets.layout import read_classes, read_layout
    from avminer.taxonomy import TaxonomyError
    from avminer.trainer.data import load_camvid

    out: list[EvalSlice] = []
    for folder in folders:
        classes, void = read_classes(folder)
        try:
            tax = taxonomy_for(classes, void)
        except TaxonomyError as exc:
            raise DatasetError(f"{folder}: {exc}") from exc
        rows = [r for r in read_layout(folder) if sequences is None or r.sequence in sequences]
        if not rows:
            continue
        frames = load_camvid(folder, size, sequences=sorted({r.sequence for r in rows}), limit=limit)
        weather = _weather_column(Path(folder))
        keys = []
        for fid, slice_key in zip(frames.frame_ids, frames.slices, strict=True):
            tod, _, location = slice_key.split("/", 2)
            keys.append(condition_key(location, tod, weather.get(fid, "clear")))
        for key in sorted(set(keys)):
            out.append(EvalSlice(key, frames.subset([i for i, k in enumerate(keys) if k == key]), tax))
        clear_day = [i for i, k in enumerate(keys) if k.endswith("/day")]
        if not clear_day:
            continue
        base = frames.subset(clear_day)
        location = keys[clear_day[0]].split("/", 1)[0]
        # Depth refinement from the label only where labels are CamVid ids (the camera model reads them so).
        use_label = tax == CAMVID
        for beta in fog_betas:
            images = np.stack([
                apply_fog(img, beta, label=lab if use_label else None)
                for img, lab in zip(base.images, base.labels, strict=True)
            ])
            out.append(EvalSlice(f"{location}/fog{beta:g}", _with_images(base, images, f"+fog{beta:g}"), tax))
        if night:
            images = np.stack([
                apply_night(img, seed=_stable_seed("night", fid)) for img, fid in zip(base.images, base.frame_ids, strict=True)
            ])
            out.append(EvalSlice(f"{location}/night", _with_images(base, images, "+night"), tax))
    if not out:
        raise DatasetError(f"no evaluation frames in {[str(f) for f in folders]} (sequences={sequences})")
    return out


def _weather_column(folder: Path) -> dict[str, str]:
    """frame_id -> weather from the manifest's optional ``weather`` column (IDD-lite has one)."""
    import csv

    with open(folder / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        if "weather" not in (reader.fieldnames or ()):
            return {}
        return {
            (r.get("frame_id") or Path(r["image"]).stem): (r.get("weather") or "clear") for r in reader
        }


def _with_images(frames: Any, images: NDArray[np.uint8], suffix: str) -> Any:
    from avminer.trainer.data import LabeledFrames

    return LabeledFrames(
        images, frames.labels.copy(), [f + suffix for f in frames.frame_ids], list(frames.slices), list(frames.sequences)
    )


def evaluate(
    predict: Predictor,
    slices: Sequence[EvalSlice],
    *,
    model_taxonomy: Taxonomy = CAMVID,
    common: Taxonomy = IDD_LEVEL1,
    batch_size: int = 16,
) -> EvalReport:
    """Score ``predict`` on every condition, in its own taxonomy and in the common one.

    Args:
        predict: the model (see :data:`Predictor`); its classes are ``model_taxonomy``'s.
        slices: from :func:`load_eval_slices`.
        model_taxonomy: what the model predicts.
        common: the taxonomy every condition is also scored in (needs a declared mapping from each).
        batch_size: frames per ``predict`` call.

    Raises:
        avminer.taxonomy.TaxonomyError: a slice's taxonomy has no declared mapping from the model's.
    """
    results = []
    for sl in slices:
        to_own = mapping(model_taxonomy, sl.taxonomy)
        to_common = mapping(model_taxonomy, common)
        own_to_common = mapping(sl.taxonomy, common)
        cm_own = np.zeros((sl.taxonomy.num_classes,) * 2, np.int64)
        cm_common = np.zeros((common.num_classes,) * 2, np.int64)
        n = len(sl.frames)
        for start in range(0, n, batch_size):
            probs = predict(sl.frames.images[start:start + batch_size])  # [B, C, H, W]
            labels = sl.frames.labels[start:start + batch_size]  # [B, H, W], slice taxonomy
            own = probs if to_own is None else to_own.map_probs(probs)
            cm_own += confusion(own.argmax(axis=1), labels, sl.taxonomy)
            com = probs if to_common is None else to_common.map_probs(probs)
            com_labels = labels if own_to_common is None else own_to_common.map_labels(labels)
            cm_common += confusion(com.argmax(axis=1), com_labels, common)
        iou = iou_per_class(cm_own)
        total = cm_own.sum()
        results.append(SliceResult(
            condition=sl.condition, frames=n, taxonomy=sl.taxonomy.name, miou=mean_iou(cm_own),
            per_class={c: float(v) for c, v in zip(sl.taxonomy.classes, iou, strict=True)},
            miou_common=mean_iou(cm_common),
            pixel_accuracy=float(np.trace(cm_own) / total) if total else float("nan"),
        ))
    return EvalReport(results, common.name)


def ensemble_predictor(model: Any, batch_size: int = 16) -> Predictor:
    """A :data:`Predictor` of a torch :class:`avminer.models.Ensemble` (eval mode, no gradients, its device)."""
    import torch

    def run(images: NDArray[np.uint8]) -> NDArray[np.float32]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        try:
            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
                probs, _ = model(x)  # [K, N, C, H, W]
                return probs.mean(0).float().cpu().numpy()  # type: ignore[no-any-return]
        finally:
            model.train(was_training)

    return run


def bundle_predictor(bundle_dir: str | Path) -> tuple[Predictor, tuple[int, int]]:
    """A :data:`Predictor` of a model bundle's ``model.pt`` and the bundle's input (height, width).

    Raises:
        avminer.errors.BundleError: the bundle is malformed, corrupt or has no ``model.pt``.
    """
    from avminer.engines.bundle import load_bundle
    from avminer.errors import BundleError
    from avminer.models import load_ensemble

    bundle = load_bundle(bundle_dir)
    if bundle.torch_path is None:
        raise BundleError(f"{bundle.path}: no model.pt in the bundle; evaluation needs it")
    return ensemble_predictor(load_ensemble(bundle.torch_path)), (bundle.input_height, bundle.input_width)
