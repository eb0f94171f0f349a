"""Label masks: PNGs of class ids (CamVid's 11 classes, void = 11), decoded and validated.

A returned mask is accepted only if it decodes as a single-channel PNG (greyscale ``L`` or palette
``P`` indices), has exactly the frame's size, and every pixel is a class id in ``0..10`` or void
``11``. Anything else raises :class:`InvalidLabelError` with a short machine-readable ``reason`` (the
dead-letter header) and a message that says what was wrong.
"""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray

from avminer.datasets.camvid import CAMVID_CLASSES, CAMVID_VOID
from avminer.errors import LabelError

CLASS_NAMES: tuple[str, ...] = CAMVID_CLASSES
NUM_CLASSES = len(CLASS_NAMES)
# CamVid's own colours by class id, so labeling tools look like the dataset's label images.
CLASS_COLOURS: tuple[str, ...] = (
    "#808080", "#800000", "#C0C080", "#800080", "#3C2840", "#808000", "#C08080", "#404080", "#400080",
    "#404000", "#0080C0",
)
VOID = CAMVID_VOID

# Reasons a label result is refused (dead-letter ``reason`` header).
REASONS = (
    "undecodable_event", "no_mask", "mask_unreadable", "mask_not_png", "mask_not_class_ids",
    "mask_size_mismatch", "class_out_of_range", "unknown_sample", "frame_size_unknown",
)


class InvalidLabelError(LabelError):
    """A label result that can never be accepted; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def decode_mask_png(data: bytes) -> NDArray[np.uint8]:
    """PNG bytes → class-id array ``[H, W]`` uint8 (no range check; see :func:`validate_mask`)."""
    from PIL import Image, UnidentifiedImageError

    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise InvalidLabelError("mask_not_png", "the mask is not a PNG (bad signature); send a PNG of class ids")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidLabelError("mask_not_png", f"the mask PNG does not decode: {exc}") from exc
    if mode not in ("L", "P", "I", "I;16", "1") or arr.ndim != 2:
        raise InvalidLabelError(
            "mask_not_class_ids",
            f"the mask PNG has mode {mode} ({arr.shape}); it must be one channel of class ids (mode L or P)",
        )
    if arr.dtype != np.uint8:
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
            raise InvalidLabelError("class_out_of_range", f"mask values span {arr.min()}..{arr.max()}; "
                                    f"class ids are 0..{NUM_CLASSES - 1} and void {VOID}")
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def validate_mask(data: bytes, width: int, height: int) -> NDArray[np.uint8]:
    """Decode and check a mask against its frame's size; returns the class-id array ``[H, W]``.

    Raises:
        InvalidLabelError: not a one-channel PNG, wrong size, or ids outside ``0..10`` and void 11.
    """
    mask = decode_mask_png(data)  # [H, W]
    if mask.shape != (height, width):
        raise InvalidLabelError(
            "mask_size_mismatch",
            f"mask is {mask.shape[1]}x{mask.shape[0]} but the frame is {width}x{height}; "
            "labels must be at the frame's full resolution",
        )
    bad = (mask > VOID)
    if bad.any():
        values = sorted({int(v) for v in np.unique(mask[bad])})[:10]
        raise InvalidLabelError(
            "class_out_of_range",
            f"{int(bad.sum())} pixels have ids {values}; valid ids are 0..{NUM_CLASSES - 1} and void {VOID}",
        )
    return mask


def encode_mask_png(mask: NDArray[np.uint8]) -> bytes:
    """Class-id array ``[H, W]`` → canonical greyscale PNG (same mask, same bytes, same content key)."""
    from PIL import Image

    if mask.ndim != 2:
        raise LabelError(f"a mask is 2-D [H, W], got shape {mask.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image, reading only its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.width), int(img.height)
    except (UnidentifiedImageError, OSError) as exc:
        raise LabelError(f"cannot read the frame's size: {exc}") from exc
