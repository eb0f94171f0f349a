"""Small generated samples for the sink and label tests (no shared data needed)."""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from avminer.events.records import Decision
from avminer.sinks.base import MinedSample

W, H = 48, 32


def jpeg(i: int, width: int = W, height: int = H) -> bytes:
    """A distinct small JPEG per ``i``."""
    rng = np.random.default_rng(i)
    img = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def png(mask: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def class_mask(i: int, width: int = W, height: int = H) -> np.ndarray:
    """A plausible class-id mask [H, W]: horizontal bands of classes, a void patch."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for row in range(height):
        mask[row] = (row * 4 // height + i) % 11
    mask[: height // 4, : width // 4] = 11
    return mask


def decision(i: int, *, mined: bool = True, slice_key: str = "dusk/clear/cambridge_uk", ts_us: int | None = None,
             model: str = "v1") -> Decision:
    ts = ts_us if ts_us is not None else int(time.time() * 1e6) - 1000 * i
    return Decision(
        sample_id=f"s{i:04d}", frame_id=f"f{i:04d}", vehicle_id="veh1", camera_id="front", timestamp_us=ts,
        model_version=model, slice=slice_key, mined=mined, scores={"mi": 0.1 * i, "shift": 2.0},
        reasons=["uncertainty"] if mined else [],
    )


def sample(i: int, *, mined: bool = True, with_maps: bool = True, **kw: object) -> MinedSample:
    return MinedSample(
        decision=decision(i, mined=mined, **kw),  # type: ignore[arg-type]
        image=jpeg(i), content_type="image/jpeg",
        uncertainty_png=png((np.arange(W * H) % 256).astype(np.uint8).reshape(H, W)) if with_maps else None,
        prediction_png=png(class_mask(i)) if with_maps else None,
        width=W, height=H, priority=float(i),
    )
