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
from typing import Any

import numpy as np
from numpy.typing import NDArray

from avminer.errors import AvminerError

CORRUPT_IMAGE = "corrupt_image"
OVERSIZE_IMAGE = "oversize_image"
SIZE_MISMATCH = "size_mismatch"
MASK_NOT_PNG = "mask_not_png"
MASK_NOT_CLASS_IDS = "mask_not_class_ids"
MASK_TOO_LARGE = "mask_too_large"
MASK_SIZE_MISMATCH = "mask_size_mismatch"
CLASS_OUT_OF_RANGE = "class_out_of_range"

MAX_MASK_PIXELS = 8192 * 8192
"""Largest mask header decoded at all (a 20000² PNG bomb is a few hundred bytes)."""
IMAGE_FORMATS: dict[str, tuple[str, ...]] = {
    "jpeg": ("JPEG",), "jpg": ("JPEG",), "png": ("PNG",), "webp": ("WEBP",), "bmp": ("BMP",),
    "gif": ("GIF",), "tiff": ("TIFF",),
}
"""Declared ``encoding`` -> the only Pillow formats that may open it (bytes of any other format are refused)."""

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


def _formats(declared: str | None) -> tuple[str, ...] | None:
    """Pillow formats allowed for a declared encoding; None: any (trusted files)."""
    if declared is None:
        return None
    formats = IMAGE_FORMATS.get(declared.lower())
    if formats is None:
        raise ImageDecodeError(CORRUPT_IMAGE, f"image encoding {declared[:40]!r} is not one of {sorted(IMAGE_FORMATS)}")
    return formats


def _check_expected(w: int, h: int, expect_wh: tuple[int, int] | None, reason: str, what: str) -> None:
    if expect_wh is not None and (w, h) != tuple(expect_wh):
        raise ImageDecodeError(reason, f"{what} is {w}x{h} but the frame is {expect_wh[0]}x{expect_wh[1]}")


def open_image(data: bytes, max_pixels: int | None, declared: str | None = None) -> Any:
    """Open encoded bytes with Pillow, header only, restricted to the declared encoding's formats, pixels checked.

    Returns:
        A lazily decoded ``PIL.Image.Image`` (decode it inside the caller's error handling).

    Raises:
        ImageDecodeError: an unknown encoding or bytes of another format (``corrupt_image``), a
            decompression bomb or a header over ``max_pixels`` (``oversize_image``).
    """
    from PIL import Image, UnidentifiedImageError

    formats = _formats(declared)
    try:
        img = Image.open(io.BytesIO(data), formats=list(formats) if formats else None)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(OVERSIZE_IMAGE, f"decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        what = "/".join(formats) if formats else "an"
        raise ImageDecodeError(CORRUPT_IMAGE, f"the bytes are not {what} image ({exc})") from exc
    try:
        _check_pixels(int(img.height), int(img.width), max_pixels)
    except ImageDecodeError:
        img.close()
        raise
    return img


def decode_image(
    data: bytes,
    *,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
    min_hw: tuple[int, int] | None = None,
    encoding: str = "image",
    declared_encoding: str | None = None,
    expect_wh: tuple[int, int] | None = None,
) -> NDArray[np.uint8]:
    """Decode an encoded image to uint8 RGB ``[H, W, 3]``.

    Limits are checked on the encoded size and on the header *before* the pixels are decoded.

    Args:
        data: JPEG, PNG or any format Pillow reads.
        max_bytes: refuse more encoded bytes than this (``oversize_image``).
        max_pixels: refuse images whose header declares more pixels (``oversize_image``).
        min_hw: JPEG only: let libjpeg-turbo scale down during the IDCT (1/2, 1/4, 1/8) to no less
            than this (height, width); the caller resizes the rest of the way.
        encoding: what the bytes are, named in error messages.
        declared_encoding: the encoding a message declared (``jpeg``, ``png``...): only its formats may
            open the bytes. None: any format Pillow reads (trusted files).
        expect_wh: the (width, height) the sender declared; a header of another size is refused
            (``size_mismatch``) before decoding, so what is recorded is what was decoded.

    Raises:
        ImageDecodeError: over a limit, or corrupt / not an image of its encoding (``corrupt_image``).
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageDecodeError(OVERSIZE_IMAGE, f"{len(data)} encoded bytes > max_bytes={max_bytes}")
    formats = _formats(declared_encoding)
    if is_jpeg(data) and (formats is None or "JPEG" in formats):
        return _decode_jpeg(data, max_pixels, min_hw, expect_wh)
    return _decode_pillow(data, max_pixels, encoding, declared_encoding, expect_wh)


def _decode_jpeg(
    data: bytes, max_pixels: int | None, min_hw: tuple[int, int] | None, expect_wh: tuple[int, int] | None
) -> NDArray[np.uint8]:
    import simplejpeg

    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise ImageDecodeError(CORRUPT_IMAGE, f"JPEG header: {exc}") from exc
    _check_pixels(h, w, max_pixels)
    _check_expected(w, h, expect_wh, SIZE_MISMATCH, "the image")
    kwargs = {} if min_hw is None else {"min_height": min_hw[0], "min_width": min_hw[1]}
    try:
        img = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, **kwargs)
    except ValueError as exc:
        raise ImageDecodeError(CORRUPT_IMAGE, f"JPEG data: {exc}") from exc
    return np.asarray(img)


def _decode_pillow(
    data: bytes, max_pixels: int | None, encoding: str, declared: str | None, expect_wh: tuple[int, int] | None
) -> NDArray[np.uint8]:
    from PIL import Image, UnidentifiedImageError

    try:
        with open_image(data, max_pixels, declared) as im:  # header only: the pixels are not decoded yet
            _check_expected(im.width, im.height, expect_wh, SIZE_MISMATCH, "the image")
            rgb = im.convert("RGB")  # decodes; truncated or corrupt data raises here
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(OVERSIZE_IMAGE, f"{encoding} image: decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
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
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
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


def decode_mask(
    data: bytes, *, expect_wh: tuple[int, int] | None = None, max_pixels: int = MAX_MASK_PIXELS
) -> NDArray[np.uint8]:
    """PNG bytes of class ids -> uint8 ``[H, W]`` (no check against a class list; callers do that).

    Args:
        data: the PNG.
        expect_wh: the frame's (width, height): a header of another size is refused before decoding.
        max_pixels: the largest header decoded at all.

    Raises:
        ImageDecodeError: not a PNG (``mask_not_png``), over ``max_pixels`` (``mask_too_large``), not the
            expected size (``mask_size_mismatch``), not one channel (``mask_not_class_ids``), or values
            that do not fit in uint8 (``class_out_of_range``).
    """
    if not data.startswith(_PNG_SIGNATURE):
        raise ImageDecodeError(MASK_NOT_PNG, "the mask is not a PNG (bad signature); send a PNG of class ids")
    try:
        img = open_image(data, max_pixels, "png")
    except ImageDecodeError as exc:
        raise ImageDecodeError(MASK_TOO_LARGE if exc.reason == OVERSIZE_IMAGE else MASK_NOT_PNG,
                               f"mask PNG: {exc}") from exc
    try:
        with img:
            _check_expected(img.width, img.height, expect_wh, MASK_SIZE_MISMATCH,
                            "the mask (labels must be at the frame's full resolution)")
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
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
