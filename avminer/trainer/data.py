"""Labeled frames for training and evaluation: CamVid-layout directories and drive logs with ground truth.

Everything is loaded once, resized to the net's input size (images bilinear, labels nearest) and kept
in memory as uint8 arrays: CamVid at 176×240 is ~60 MB, and on two cores decoding JPEGs every epoch would
cost more than the training step. Augmentation then runs on torch batches (:func:`augment_batch`).

Each frame carries its slice key ``time_of_day/weather/region`` (as in :mod:`avminer.scoring.conditions`),
so evaluation and gates can report per condition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from avminer import images
from avminer.datasets.layout import CamvidRow, read_layout
from avminer.errors import DatasetError, TrainerError
from avminer.taxonomy import CAMVID

if TYPE_CHECKING:
    import torch

VOID = CAMVID.void
NUM_CLASSES = CAMVID.num_classes
DEFAULT_WEATHER = "clear"


@dataclass
class LabeledFrames:
    """Frames with per-pixel labels, all at one size.

    Attributes:
        images: uint8 [N, H, W, 3] RGB.
        labels: uint8 [N, H, W] class ids, ``VOID`` (11) for unlabelled pixels.
        frame_ids: N frame ids.
        slices: N slice keys ``time_of_day/weather/region``.
        sequences: N sequence names (CamVid) or vehicle/camera ids (drive logs).
    """

    images: NDArray[np.uint8]
    labels: NDArray[np.uint8]
    frame_ids: list[str]
    slices: list[str]
    sequences: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frame_ids)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def subset(self, index: Sequence[int] | NDArray[np.int64]) -> LabeledFrames:
        """The frames at ``index``, in that order."""
        idx = np.asarray(index, dtype=np.int64)
        seqs = [self.sequences[i] for i in idx] if self.sequences else []
        return LabeledFrames(
            self.images[idx], self.labels[idx], [self.frame_ids[i] for i in idx], [self.slices[i] for i in idx], seqs
        )

    def where(self, keep: Callable[[int], bool]) -> LabeledFrames:
        """The frames whose index satisfies ``keep``."""
        return self.subset([i for i in range(len(self)) if keep(i)])

    def by_slice(self) -> dict[str, LabeledFrames]:
        """One subset per slice key, keys sorted."""
        keys = sorted(set(self.slices))
        return {k: self.where(lambda i, k=k: self.slices[i] == k) for k in keys}  # type: ignore[misc]

    @staticmethod
    def concat(parts: Iterable[LabeledFrames]) -> LabeledFrames:
        """All frames of ``parts`` in order (same size required)."""
        items = [p for p in parts if len(p)]
        if not items:
            raise DatasetError("no frames to concatenate")
        if len({p.size for p in items}) != 1:
            raise DatasetError(f"cannot concatenate frames of different sizes {sorted({p.size for p in items})}")
        return LabeledFrames(
            np.concatenate([p.images for p in items]),
            np.concatenate([p.labels for p in items]),
            [f for p in items for f in p.frame_ids],
            [s for p in items for s in p.slices],
            [s for p in items for s in (p.sequences or [""] * len(p))],
        )


def row_slice_key(row: CamvidRow) -> str:
    """Slice key ``time_of_day/weather/region`` of a CamVid row (CamVid frames are all clear weather)."""
    return f"{row.time_of_day}/{DEFAULT_WEATHER}/{row.location}"


def decode_pair(image: bytes, label: bytes, size: tuple[int, int]) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """An encoded frame and its label PNG, decoded (:mod:`avminer.images`) and resized to ``size`` = (h, w).

    Images are resized bilinearly, labels by nearest neighbour (class ids must not blend).

    Raises:
        ValueError: either does not decode (:class:`avminer.images.ImageDecodeError`).
    """
    h, w = size
    try:
        rgb, ids = images.decode_image(image), images.decode_mask(label)
    except images.ImageDecodeError as exc:
        raise ValueError(str(exc)) from exc
    img = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
    lab = np.asarray(Image.fromarray(ids).resize((w, h), Image.Resampling.NEAREST), dtype=np.uint8)
    return img, lab


def load_camvid(
    root: str | Path,
    size: tuple[int, int],
    *,
    splits: Sequence[str] | None = None,
    sequences: Sequence[str] | None = None,
    time_of_day: Sequence[str] | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> LabeledFrames:
    """Load a CamVid-layout directory, filtered, resized to ``size`` = (height, width).

    Args:
        root: directory with ``manifest.csv``.
        size: (height, width) of the net input.
        splits, sequences, time_of_day: keep only rows whose column is in the given list.
        limit: keep at most this many rows (after filtering; for tests).
        progress: show a tqdm bar.

    Raises:
        DatasetError: unreadable manifest, images or labels, or nothing left after filtering.
    """
    rows = [
        r for r in read_layout(root)
        if (splits is None or r.split in splits)
        and (sequences is None or r.sequence in sequences)
        and (time_of_day is None or r.time_of_day in time_of_day)
    ]
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise DatasetError(
            f"{root}: no rows left after filtering (splits={splits}, sequences={sequences}, "
            f"time_of_day={time_of_day})"
        )
    h, w = size
    images = np.empty((len(rows), h, w, 3), np.uint8)
    labels = np.empty((len(rows), h, w), np.uint8)
    from tqdm import tqdm

    for i, row in enumerate(tqdm(rows, desc="load", unit="frame", disable=not progress, leave=False)):
        try:
            images[i], labels[i] = decode_pair(row.image_path.read_bytes(), row.label_path.read_bytes(), size)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{row.frame_id}: cannot load {row.image_path} / {row.label_path}: {exc}") from exc
    return LabeledFrames(
        images, labels, [r.frame_id for r in rows], [row_slice_key(r) for r in rows], [r.sequence for r in rows]
    )


def load_holdout(data_dir: Path, input_hw: tuple[int, int], holdout_non_day: bool = True) -> LabeledFrames:
    """Held-out rows of a CamVid-layout directory: non-``train`` splits, plus non-day rows if asked."""
    rows = read_layout(data_dir)
    parts = []
    other_splits = sorted({r.split for r in rows if r.split != "train"})
    if other_splits:
        parts.append(load_camvid(data_dir, input_hw, splits=other_splits))
    other_tods = sorted({r.time_of_day for r in rows if r.time_of_day != "day"})
    if holdout_non_day and other_tods:
        parts.append(load_camvid(data_dir, input_hw, splits=["train"], time_of_day=other_tods))
    if not parts:
        raise TrainerError(f"{data_dir}: no held-out rows (no val split and nothing but day)")
    return LabeledFrames.concat(parts)


def frame_slice_key(conditions: Any, default_region: str = "unknown") -> str:
    """Slice key of a drive-log frame from its metadata (missing fields: ``unknown``)."""
    tod = getattr(conditions, "time_of_day", None) or "unknown"
    weather = getattr(conditions, "weather", None) or "unknown"
    region = getattr(conditions, "region", None) or default_region
    return f"{tod}/{weather}/{region}"


def load_drive_log(path: str | Path, size: tuple[int, int], limit: int | None = None) -> LabeledFrames:
    """Camera frames of a drive log that have ground truth in its ``.gt.avro`` side file.

    Raises:
        DatasetError: no side file, or no frame with ground truth.
    """
    from avminer.events.drivelog import ground_truth_path, read_drive_log, read_ground_truth
    from avminer.events.records import CameraFrame

    gt_path = ground_truth_path(Path(path))
    if not gt_path.exists():
        raise DatasetError(f"{path}: no ground-truth side file {gt_path}; only labeled drives can train")
    truth = read_ground_truth(gt_path)
    imgs: list[NDArray[np.uint8]] = []
    labs: list[NDArray[np.uint8]] = []
    ids: list[str] = []
    slices: list[str] = []
    seqs: list[str] = []
    for record in read_drive_log(path):
        if not isinstance(record, CameraFrame) or record.frame_id not in truth or record.image is None:
            continue
        try:
            img, lab = decode_pair(record.image, truth[record.frame_id], size)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: frame {record.frame_id} or its label cannot be decoded: {exc}") from exc
        imgs.append(img)
        labs.append(lab)
        ids.append(record.frame_id)
        slices.append(frame_slice_key(record.conditions))
        seqs.append(f"{record.vehicle_id}/{record.camera_id}")
        if limit is not None and len(ids) >= limit:
            break
    if not ids:
        raise DatasetError(f"{path}: no camera frame has ground truth in {gt_path}")
    return LabeledFrames(np.stack(imgs), np.stack(labs), ids, slices, seqs)


def holdout_split(frames: LabeledFrames, fraction: float, seed: int = 0) -> tuple[LabeledFrames, LabeledFrames]:
    """(train, held-out): every ``1/fraction``-th frame per sequence is held out, so both sides span time.

    Deterministic given ``seed`` (the phase of the stride).
    """
    if not 0 < fraction < 1:
        raise DatasetError(f"hold-out fraction must be in (0, 1), got {fraction}")
    stride = max(2, int(round(1 / fraction)))
    phase = seed % stride
    held = [i for i in range(len(frames)) if i % stride == phase]
    keep = [i for i in range(len(frames)) if i % stride != phase]
    return frames.subset(keep), frames.subset(held)


def class_pixel_counts(labels: NDArray[np.uint8], num_classes: int = NUM_CLASSES) -> NDArray[np.int64]:
    """Pixels per class id 0..num_classes-1 (void not counted)."""
    counts = np.bincount(labels.ravel(), minlength=num_classes + 1)[:num_classes]
    return counts.astype(np.int64)


def enet_class_weights(labels: NDArray[np.uint8], num_classes: int = NUM_CLASSES, c: float = 1.02) -> NDArray[np.float32]:
    """ENet's class weighting w_c = 1 / ln(c + p_c), p_c the class's share of labelled pixels.

    Paszke et al., "ENet: A Deep Neural Network Architecture for Real-Time Semantic Segmentation", 2016.
    Bounded by 1/ln(c) (~50 for c = 1.02), so absent classes do not explode the loss.
    """
    counts = class_pixel_counts(labels, num_classes).astype(np.float64)
    p = counts / max(counts.sum(), 1.0)
    return np.asarray(1.0 / np.log(c + p), dtype=np.float32)


# -- batches ---------------------------------------------------------------------------------------------


def batches(n: int, batch_size: int, shuffle: bool, generator: np.random.Generator | None = None) -> Iterator[NDArray[np.int64]]:
    """Index batches over ``n`` items (last one may be short)."""
    order = (generator or np.random.default_rng()).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def to_tensors(frames: LabeledFrames, index: NDArray[np.int64]) -> tuple[torch.Tensor, torch.Tensor]:
    """images float32 [B, 3, H, W] (0..255) and labels int64 [B, H, W] for the frames at ``index``."""
    import torch

    images = torch.from_numpy(frames.images[index]).permute(0, 3, 1, 2).float()  # [B, 3, H, W]
    labels = torch.from_numpy(frames.labels[index]).long()  # [B, H, W]
    return images.contiguous(), labels


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    max_scale: float = 1.25,
    jitter: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Light augmentation, per frame: horizontal flip, zoom-in crop, brightness/contrast/saturation jitter.

    Kept light on purpose: strong photometric jitter would teach the day model to see dusk as day, and the
    shift detector relies on the features *not* being invariant to lighting.

    Args:
        images: float32 [B, 3, H, W] in 0..255.
        labels: int64 [B, H, W].
        generator: torch RNG (reproducible augmentation).
        max_scale: zoom factors are drawn from [1, max_scale].
        jitter: relative strength of the colour jitter.
    """
    import torch
    import torch.nn.functional as F

    b, _, h, w = images.shape
    out_i = torch.empty_like(images)
    out_l = torch.empty_like(labels)
    u = torch.rand(b, 6, generator=generator)  # flip, scale, crop y, crop x, brightness, contrast/sat
    for i in range(b):
        img, lab = images[i : i + 1], labels[i : i + 1]
        if u[i, 0] < 0.5:
            img, lab = img.flip(-1), lab.flip(-1)
        s = 1.0 + float(u[i, 1]) * (max_scale - 1.0)
        if s > 1.01:
            sh, sw = int(round(h * s)), int(round(w * s))
            img = F.interpolate(img, size=(sh, sw), mode="bilinear", align_corners=False)
            lab = F.interpolate(lab[:, None].float(), size=(sh, sw), mode="nearest")[:, 0].long()
            y0 = int(float(u[i, 2]) * (sh - h))
            x0 = int(float(u[i, 3]) * (sw - w))
            img, lab = img[..., y0 : y0 + h, x0 : x0 + w], lab[..., y0 : y0 + h, x0 : x0 + w]
        brightness = 1.0 + jitter * (2 * float(u[i, 4]) - 1)
        contrast = 1.0 + jitter * (2 * float(u[i, 5]) - 1)
        mean = img.mean()
        img = ((img - mean) * contrast + mean) * brightness
        gray = img.mean(dim=1, keepdim=True)
        img = gray + (img - gray) * contrast  # saturation moves with contrast: one draw, two effects
        out_i[i] = img.clamp(0, 255)[0]
        out_l[i] = lab[0]
    return out_i, out_l
