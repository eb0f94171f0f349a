"""The one image decoder and the one mask decoder (ground floor: numpy, simplejpeg, Pillow; no avminer layer).

Every layer that turns bytes into pixels comes here: the miner's decode stage (with size limits, so a
hostile 60 000 x 60 000 JPEG costs nothing), the dataset converter, the trainer's loaders and the label
checks. Failures raise :class:`ImageDecodeError` with a short machine-readable ``reason``; each caller
turns it into its own part's error (poison for the miner, :class:`~avminer.errors.DatasetError` for a
dataset, :class:`~avminer.labels.masks.InvalidLabelError` for a returned label).

- images: JPEG via simplejpeg (libjpeg-turbo, GIL released, DCT down-scaling when asked for a smaller
  size), everything else via Pillow; always uint8 RGB ``[H, W, 3]``;
- masks: single-channel PNGs of class ids (``L`` or ``P`` indices; 16-bit or 1-bit ones are accepted
  when every value fits in uint8), always uint8 ``[H, W]``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from avminer.errors import AvminerError

CORRUPT_IMAGE = "corrupt_image"
OVERSIZE_IMAGE = "oversize_image"
MASK_NOT_PNG = "mask_not_png"
MASK_NOT_CLASS_IDS = "mask_not_class_ids"
CLASS_OUT_OF_RANGE = "class_out_of_range"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageDecodeError(AvminerError):
    """Bytes that do not decode to an image or mask; ``reason`` is one of the module's reason constants."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def is_jpeg(data: bytes) -> bool:
    """True when ``data`` starts with the JPEG SOI marker."""
    return data[:2] == b"\xff\xd8"


def _check_pixels(h: int, w: int, max_pixels: int | None) -> None:
    if h <= 0 or w <= 0:
        raise ImageDecodeError(CORRUPT_IMAGE, f"image header says {w}x{h}")
    if max_pixels is not None and h * w > max_pixels:
        raise ImageDecodeError(OVERSIZE_IMAGE, f"{w}x{h} = {w * h} pixels > max_pixels={max_pixels}")


def decode_image(
    data: bytes,
    *,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
    min_hw: tuple[int, int] | None = None,
    encoding: str = "image",
) -> NDArray[np.uint8]:
    """Decode an encoded image to uint8 RGB ``[H, W, 3]``.

    Limits are checked on the encoded size and on the header *before* the pixels are decoded.

    Args:
        data: JPEG, PNG or any format Pillow reads.
        max_bytes: refuse more encoded bytes than this (``oversize_image``).
        max_pixels: refuse images whose header declares more pixels (``oversize_image``).
        min_hw: JPEG only: let libjpeg-turbo scale down during the IDCT (1/2, 1/4, 1/8) to no less
            than this (height, width); the caller resizes the rest of the way.
        encoding: the declared encoding, named in error messages.

    Raises:
        ImageDecodeError: over a limit, or corrupt / not an image (``corrupt_image``).
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageDecodeError(OVERSIZE_IMAGE, f"{len(data)} encoded bytes > max_bytes={max_bytes}")
    if is_jpeg(data):
        return _decode_jpeg(data, max_pixels, min_hw)
    return _decode_pillow(data, max_pixels, encoding)


def _decode_jpeg(data: bytes, max_pixels: int | None, min_hw: tuple[int, int] | None) -> NDArray[np.uint8]:
    import simplejpeg

    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise ImageDecodeError(CORRUPT_IMAGE, f"JPEG header: {exc}") from exc
    _check_pixels(h, w, max_pixels)
    kwargs = {} if min_hw is None else {"min_height": min_hw[0], "min_width": min_hw[1]}
    try:
        img = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, **kwargs)
    except ValueError as exc:
        raise ImageDecodeError(CORRUPT_IMAGE, f"JPEG data: {exc}") from exc
    return np.asarray(img)


def _decode_pillow(data: bytes, max_pixels: int | None, encoding: str) -> NDArray[np.uint8]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size  # header only: the pixels are not decoded yet
            _check_pixels(h, w, max_pixels)
            rgb = im.convert("RGB")  # decodes; truncated or corrupt data raises here
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(CORRUPT_IMAGE, f"{encoding} image ({len(data)} bytes): {exc}") from exc
    return np.asarray(rgb)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image, reading only its header.

    Raises:
        ImageDecodeError: the header does not parse (``corrupt_image``).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.width), int(img.height)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageDecodeError(CORRUPT_IMAGE, f"cannot read the image's size: {exc}") from exc


def read_file(path: str | Path, what: str = "image") -> bytes:
    """The bytes of an image or mask file.

    Raises:
        ImageDecodeError: the file cannot be read (``corrupt_image``; the message names the file).
    """
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(CORRUPT_IMAGE, f"cannot read {what} {path}: {exc.strerror}") from exc


def encode_jpeg(image: NDArray[np.uint8], quality: int = 90) -> bytes:
    """Encode uint8 RGB ``[H, W, 3]`` as JPEG (simplejpeg)."""
    import simplejpeg

    return bytes(simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality, colorspace="RGB"))


def decode_mask(data: bytes) -> NDArray[np.uint8]:
    """PNG bytes of class ids -> uint8 ``[H, W]`` (no check against a class list; callers do that).

    Raises:
        ImageDecodeError: not a PNG (``mask_not_png``), not one channel (``mask_not_class_ids``), or
            values that do not fit in uint8 (``class_out_of_range``).
    """
    from PIL import Image, UnidentifiedImageError

    if not data.startswith(_PNG_SIGNATURE):
        raise ImageDecodeError(MASK_NOT_PNG, "the mask is not a PNG (bad signature); send a PNG of class ids")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(MASK_NOT_PNG, f"the mask PNG does not decode: {exc}") from exc
    if mode not in ("L", "P", "I", "I;16", "1") or arr.ndim != 2:
        raise ImageDecodeError(
            MASK_NOT_CLASS_IDS,
            f"the mask PNG has mode {mode} ({arr.shape}); it must be one channel of class ids (mode L or P)",
        )
    if arr.dtype != np.uint8:
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
            raise ImageDecodeError(CLASS_OUT_OF_RANGE, f"mask values span {arr.min()}..{arr.max()}; "
                                   "class ids fit in 0..255")
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def encode_mask(mask: NDArray[np.uint8], *, optimize: bool = False) -> bytes:
    """Class ids ``[H, W]`` -> 8-bit greyscale PNG.

    Args:
        mask: uint8 class ids.
        optimize: smaller files at more CPU; off by default so the same mask always gives the same
            bytes (and the same content key) whatever zlib decides to try.
    """
    from PIL import Image

    if mask.ndim != 2:
        raise ValueError(f"a mask is 2-D [H, W], got shape {mask.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L").save(buf, format="PNG", optimize=optimize)
    return buf.getvalue()
