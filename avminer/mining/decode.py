"""Bytes to frames: the event codec, then the image, with limits that keep poison out.

Anything that cannot become a frame the engine can run on is *poison*: it raises
:class:`PoisonError` with a reason from :data:`REASONS`, and the pipeline sends the original bytes to
the dead-letter topic instead of stopping. Size limits are checked on the encoded bytes and on the
image header *before* decoding, so a hostile 60 000 x 60 000 JPEG costs nothing.

Images go through the one decoder, :func:`avminer.images.decode_image`: JPEGs with simplejpeg
(libjpeg-turbo, GIL released); when the engine's input is at most half the frame's size the decoder
scales down by itself (DCT scaling), which is both faster and what the final resize would do anyway.
Other encodings go through Pillow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from avminer import images
from avminer.config import DecodeSettings
from avminer.errors import DecodeError, EventDecodeError
from avminer.events.records import CameraFrame, RadarScan
from avminer.sources.base import SourceMessage

UNDECODABLE = "undecodable_event"
UNKNOWN_SCHEMA = "unknown_schema"
UNEXPECTED_RECORD = "unexpected_record"
CORRUPT_IMAGE = images.CORRUPT_IMAGE
OVERSIZE_IMAGE = images.OVERSIZE_IMAGE
MISSING_IMAGE = "missing_image"
REASONS = (UNDECODABLE, UNKNOWN_SCHEMA, UNEXPECTED_RECORD, CORRUPT_IMAGE, OVERSIZE_IMAGE, MISSING_IMAGE)
"""Dead-letter reasons (the ``reason`` header and the ``avminer_dead_letters_total`` label)."""


class PoisonError(DecodeError):
    """A message that can never become a frame; it goes to the dead-letter topic.

    Attributes:
        reason: one of :data:`REASONS`.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def decode_event(msg: SourceMessage) -> CameraFrame | RadarScan:
    """The message's record (decoded from its bytes unless the source already did).

    Raises:
        PoisonError: undecodable bytes, an unknown schema, or a record of another kind.
    """
    record: object = msg.record
    if record is None:
        from avminer.events import codec

        try:
            record = codec.decode(msg.value)
        except EventDecodeError as exc:
            text = str(exc)
            reason = UNKNOWN_SCHEMA if "schema" in text.lower() and "unknown" in text.lower() else UNDECODABLE
            raise PoisonError(reason, text) from exc
        except Exception as exc:  # a codec bug must not take the daemon down either
            raise PoisonError(UNDECODABLE, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(record, (CameraFrame, RadarScan)):
        raise PoisonError(
            UNEXPECTED_RECORD, f"{type(record).__name__} on {msg.topic}; expected CameraFrame or RadarScan"
        )
    return record


def fetch_file_uri(uri: str) -> bytes:
    """Read a ``file://`` image URI (the default fetcher; S3 URIs need a store's ``get``)."""
    if not uri.startswith("file://"):
        raise DecodeError(f"cannot fetch {uri!r}: only file:// URIs without an object store")
    from avminer.storage.local import path_of_file_uri

    return path_of_file_uri(uri).read_bytes()


def image_bytes(frame: CameraFrame, fetch: Callable[[str], bytes] | None = None) -> bytes:
    """The frame's encoded image, inline or fetched from ``image_uri``.

    Raises:
        PoisonError: neither inline bytes nor a URI, or a URI that cannot be read.
    """
    if frame.image is not None:
        return frame.image
    if not frame.image_uri:
        raise PoisonError(MISSING_IMAGE, f"frame {frame.frame_id} has neither image bytes nor image_uri")
    try:
        return (fetch or fetch_file_uri)(frame.image_uri)
    except (OSError, DecodeError) as exc:
        raise PoisonError(MISSING_IMAGE, f"frame {frame.frame_id}: cannot read {frame.image_uri}: {exc}") from exc


def decode_image(
    data: bytes, limits: DecodeSettings, target_hw: tuple[int, int] | None = None, encoding: str = "jpeg"
) -> np.ndarray:
    """Decode an encoded frame to uint8 RGB ``[H, W, 3]``, resized to ``target_hw`` when given.

    The decoder is :func:`avminer.images.decode_image` with ``decode.max_bytes`` / ``decode.max_pixels``.

    Raises:
        PoisonError: bytes or pixels over the limits (``oversize_image``), or a corrupt image.
    """
    try:
        img = images.decode_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels,
                                  min_hw=target_hw, encoding=encoding)
    except images.ImageDecodeError as exc:
        raise PoisonError(exc.reason, str(exc)) from exc
    if target_hw is not None and img.shape[:2] != target_hw:
        from avminer.engines.base import resize_batch

        img = resize_batch([img], target_hw[0], target_hw[1])[0]
    return img
