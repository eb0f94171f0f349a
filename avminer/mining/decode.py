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
from avminer.errors import AvminerError, DecodeError, EventDecodeError
from avminer.events.records import CameraFrame, RadarScan
from avminer.safeio import InputRefusedError, printable, read_file_uri
from avminer.sources.base import SourceMessage

UNDECODABLE = "undecodable_event"
UNKNOWN_SCHEMA = "unknown_schema"
UNEXPECTED_RECORD = "unexpected_record"
CORRUPT_IMAGE = images.CORRUPT_IMAGE
OVERSIZE_IMAGE = images.OVERSIZE_IMAGE
MISSING_IMAGE = "missing_image"
INVALID_FIELD = "invalid_field"
REASONS = (UNDECODABLE, UNKNOWN_SCHEMA, UNEXPECTED_RECORD, CORRUPT_IMAGE, OVERSIZE_IMAGE, MISSING_IMAGE,
           INVALID_FIELD)
"""Dead-letter reasons (the ``reason`` header and the ``avminer_dead_letters_total`` label)."""


class PoisonError(DecodeError):
    """A message that can never become a frame; it goes to the dead-letter topic.

    Attributes:
        reason: one of :data:`REASONS`.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def as_poison(exc: BaseException) -> PoisonError:
    """Any failure while decoding one message, as the dead letter it becomes.

    Only :class:`PoisonError` is expected; anything else (a codec or Pillow bug, a ``MemoryError`` a
    limit missed) would otherwise stop the stage and, under Kafka, stop every restart on the same
    uncommitted message.
    """
    if isinstance(exc, PoisonError):
        return exc
    reason = OVERSIZE_IMAGE if isinstance(exc, MemoryError) else CORRUPT_IMAGE
    return PoisonError(reason, f"unexpected {type(exc).__name__}: {printable(exc)}")


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
    check_fields(record)
    return record


_MAX_ID_CHARS = 256


def check_fields(record: CameraFrame | RadarScan) -> None:
    """Refuse strings no sink can store or show: NUL anywhere, control characters or excess length in ids.

    PostgreSQL text cannot hold NUL, and ids end up in file names, log lines and reports: a message
    that breaks any of them is poison here rather than a fatal sink error later.

    Raises:
        PoisonError: ``invalid_field`` naming the field.
    """
    ids = {"vehicle_id": record.vehicle_id}
    if isinstance(record, CameraFrame):
        ids.update(camera_id=record.camera_id, frame_id=record.frame_id, encoding=record.encoding)
        if record.width <= 0 or record.height <= 0:
            raise PoisonError(INVALID_FIELD, f"width/height: {record.width}x{record.height} is not a frame size")
    else:
        ids["sensor_id"] = record.sensor_id
    for name, value in ids.items():
        if not value or len(value) > _MAX_ID_CHARS or printable(value, _MAX_ID_CHARS) != value:
            raise PoisonError(INVALID_FIELD, f"{name}: {printable(value, 80)!r} is empty, over {_MAX_ID_CHARS} "
                              "characters or holds control characters")
    if isinstance(record, CameraFrame):
        if record.conditions is not None:  # they name the condition slice: shown in reports and metric labels
            for name in record.conditions.__slots__:
                value = getattr(record.conditions, name) or ""
                if len(value) > 64 or printable(value) != value:
                    raise PoisonError(INVALID_FIELD, f"conditions.{name}: {printable(value, 80)!r} is over 64 "
                                      "characters or holds control characters")
        texts = dict(record.metadata)
        texts["image_uri"] = record.image_uri or ""
        for name, value in texts.items():
            if "\x00" in name or "\x00" in value:
                raise PoisonError(INVALID_FIELD, f"{printable(name, 80)}: holds a NUL character")


def fetch_file_uri(uri: str, limits: DecodeSettings | None = None) -> bytes:
    """Read a ``file://`` image URI under ``decode.image_roots`` (the default fetcher).

    Only regular files under the configured roots, at most ``decode.max_bytes``: a message naming
    ``/dev/zero``, a FIFO or ``/etc/shadow`` is refused before anything is read, so nothing outside
    the roots can reach a sink (and from there an export).
    """
    limits = limits or DecodeSettings()
    if not uri.startswith("file://"):
        raise DecodeError(f"cannot fetch {printable(uri)!r}: only file:// URIs without an object store")
    if not limits.image_roots:
        raise DecodeError("file:// image URIs are refused: decode.image_roots is empty")
    return read_file_uri(uri, limits.max_bytes, limits.image_roots)


def image_bytes(
    frame: CameraFrame, fetch: Callable[[str], bytes] | None = None, limits: DecodeSettings | None = None
) -> bytes:
    """The frame's encoded image, inline or fetched from ``image_uri``.

    Raises:
        PoisonError: neither inline bytes nor a URI, or a URI that cannot or may not be read.
    """
    if frame.image is not None:
        return frame.image
    if not frame.image_uri:
        raise PoisonError(MISSING_IMAGE, f"frame {printable(frame.frame_id)} has neither image bytes nor image_uri")
    try:
        if fetch is not None:
            return fetch(frame.image_uri)
        return fetch_file_uri(frame.image_uri, limits)
    except InputRefusedError as exc:
        reason = OVERSIZE_IMAGE if exc.oversize else MISSING_IMAGE
        raise PoisonError(reason, f"frame {printable(frame.frame_id)}: {exc}") from exc
    except (OSError, AvminerError) as exc:
        raise PoisonError(
            MISSING_IMAGE, f"frame {printable(frame.frame_id)}: cannot read {printable(frame.image_uri)}: {exc}"
        ) from exc


def decode_image(
    data: bytes, limits: DecodeSettings, target_hw: tuple[int, int] | None = None, encoding: str = "jpeg",
    declared_wh: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode an encoded frame to uint8 RGB ``[H, W, 3]``, resized to ``target_hw`` when given.

    The decoder is :func:`avminer.images.decode_image` with ``decode.max_bytes`` / ``decode.max_pixels``.

    Args:
        declared_wh: the (width, height) the frame claims; the image must have exactly this size, so
            the catalog's size (which labels are checked against) is the decoded one.

    Raises:
        PoisonError: bytes or pixels over the limits (``oversize_image``), a corrupt image, or an
            image whose size is not the declared one (``invalid_field``).
    """
    try:
        img = images.decode_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels,
                                  min_hw=target_hw, encoding=encoding, declared_encoding=encoding,
                                  expect_wh=declared_wh)
    except images.ImageDecodeError as exc:
        reason = INVALID_FIELD if exc.reason == images.SIZE_MISMATCH else exc.reason
        raise PoisonError(reason, printable(exc, 500)) from exc
    if target_hw is not None and img.shape[:2] != target_hw:
        from avminer.engines.base import resize_batch

        img = resize_batch([img], target_hw[0], target_hw[1])[0]
    return img
