"""Label masks: PNGs of class ids (CamVid's 11 classes, void = 11), decoded and validated.

A returned mask is accepted only if it decodes as a single-channel PNG (greyscale ``L`` or palette
``P`` indices), has exactly the frame's size, and every pixel is a class id in ``0..10`` or void
``11``. Anything else raises :class:`InvalidLabelError` with a short machine-readable ``reason`` (the
dead-letter header) and a message that says what was wrong.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from avminer import images
from avminer.errors import LabelError
from avminer.taxonomy import CAMVID

CLASS_NAMES: tuple[str, ...] = CAMVID.classes
NUM_CLASSES = len(CLASS_NAMES)
# CamVid's own colours by class id, so labeling tools look like the dataset's label images.
CLASS_COLOURS: tuple[str, ...] = (
    "#808080", "#800000", "#C0C080", "#800080", "#3C2840", "#808000", "#C08080", "#404080", "#400080",
    "#404000", "#0080C0",
)
VOID = CAMVID.void

# Reasons a label result is refused (dead-letter ``reason`` header).
REASONS = (
    "undecodable_event", "no_mask", "mask_unreadable", images.MASK_NOT_PNG, images.MASK_NOT_CLASS_IDS,
    "mask_size_mismatch", images.CLASS_OUT_OF_RANGE, "unknown_sample", "frame_size_unknown", images.MASK_TOO_LARGE,
    "invalid_result",
)


class InvalidLabelError(LabelError):
    """A label result that can never be accepted; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def decode_mask_png(data: bytes, expect_wh: tuple[int, int] | None = None) -> NDArray[np.uint8]:
    """PNG bytes → class-id array ``[H, W]`` uint8 (:func:`avminer.images.decode_mask`; no range check,
    see :func:`validate_mask`). With ``expect_wh`` (the frame's width, height) a header of another size
    is refused before a pixel is decoded, as is any header over ``images.MAX_MASK_PIXELS``.

    Raises:
        InvalidLabelError: not a one-channel PNG of class ids; ``reason`` says which.
    """
    try:
        return images.decode_mask(data, expect_wh=expect_wh)
    except images.ImageDecodeError as exc:
        raise InvalidLabelError(exc.reason, str(exc)) from exc


def validate_mask(data: bytes, width: int, height: int) -> NDArray[np.uint8]:
    """Decode and check a mask against its frame's size; returns the class-id array ``[H, W]``.

    Raises:
        InvalidLabelError: not a one-channel PNG, wrong size, or ids outside ``0..10`` and void 11.
    """
    mask = decode_mask_png(data, (width, height))  # [H, W]
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
    if mask.ndim != 2:
        raise LabelError(f"a mask is 2-D [H, W], got shape {mask.shape}")
    return images.encode_mask(mask)


def mask_at_size(mask: NDArray[np.uint8], width: int, height: int) -> NDArray[np.uint8]:
    """A class-id mask ``[h, w]`` (e.g. a prediction at the engine's input size) at ``width`` x ``height``,
    nearest neighbour so ids stay ids."""
    if mask.shape == (height, width):
        return mask
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).resize(
        (width, height), Image.Resampling.NEAREST))


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image, reading only its header."""
    try:
        return images.image_size(data)
    except images.ImageDecodeError as exc:
        raise LabelError(str(exc)) from exc
