"""Mask validation: one-channel PNG, the frame's size, class ids 0..10 or void 11."""

from __future__ import annotations

import numpy as np
import pytest

from avminer.labels.masks import InvalidLabelError, decode_mask_png, encode_mask_png, validate_mask
from tests.sinks import factories as f


def test_valid_mask_roundtrips_canonically() -> None:
    mask = f.class_mask(3)
    out = validate_mask(f.png(mask), f.W, f.H)
    assert np.array_equal(out, mask)
    assert encode_mask_png(out) == encode_mask_png(decode_mask_png(encode_mask_png(mask)))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GIF89a....", "mask_not_png"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "mask_not_png"),
        (f.png(np.zeros((f.H, f.W, 3), dtype=np.uint8), mode="RGB"), "mask_not_class_ids"),
        (f.png(np.zeros((f.H + 1, f.W), dtype=np.uint8)), "mask_size_mismatch"),
        (f.png(np.full((f.H, f.W), 12, dtype=np.uint8)), "class_out_of_range"),
    ],
    ids=["gif", "truncated-png", "rgb", "wrong-size", "class-12"],
)
def test_invalid_masks_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidLabelError) as info:
        validate_mask(data, f.W, f.H)
    assert info.value.reason == reason
