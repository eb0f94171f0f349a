"""Label Studio's brush RLE: the ``value.rle`` list of ``brushlabels`` results.

The format is thi.ng's ``rle-pack`` bit stream over the mask flattened as RGBA bytes (``[H, W, 4]``,
row-major), as Label Studio's frontend and ``label_studio_converter.brush`` read and write it::

    32 bits  number of values n (= H * W * 4)
    5 bits   word size - 1 (8-bit words here)
    4 x 4 b  the four run-length field widths - 1 (3, 4, 8, 16 here)
    then runs until n values are decoded:
      1 bit   1 = one value repeated, 0 = literal values follow
      2 bits  which run-length field width to use
      w bits  run length - 1
      words   the repeated value once, or (run length) literal values

padded with zero bits to a whole byte and given as a list of byte values. A brush layer is drawn
where the alpha channel is non-zero. Encoding here emits only repeat runs (literal runs of one value
for single pixels), which every decoder accepts.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from avminer.errors import LabelError

WORD_BITS = 8
RLE_WIDTHS = (3, 4, 8, 16)
_MAX_RUN = 1 << RLE_WIDTHS[-1]


def encode_layer(layer: NDArray[np.bool_]) -> list[int]:
    """Binary layer ``[H, W]`` → brush RLE (RGBA = 255 where set, 0 elsewhere)."""
    if layer.ndim != 2:
        raise LabelError(f"a brush layer is 2-D [H, W], got shape {layer.shape}")
    values = np.repeat(np.where(layer.reshape(-1), 255, 0).astype(np.uint8), 4)  # [H*W*4]
    return encode_values(values)


def encode_values(values: NDArray[np.uint8]) -> list[int]:
    """Flat byte array → rle-pack stream as a list of byte values."""
    n = int(values.size)
    bits: list[str] = [f"{n:032b}", f"{WORD_BITS - 1:05b}", *(f"{w - 1:04b}" for w in RLE_WIDTHS)]
    if n:
        change = np.flatnonzero(values[1:] != values[:-1]) + 1
        starts = np.concatenate(([0], change))
        lengths = np.diff(np.concatenate((starts, [n])))
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
            word = f"{int(values[start]):08b}"
            while length > 0:
                run = min(length, _MAX_RUN)
                if run == 1:
                    bits.append("0" + "00" + "000" + word)  # one literal value
                else:
                    idx = next(i for i, w in enumerate(RLE_WIDTHS) if run - 1 < (1 << w))
                    bits.append(f"1{idx:02b}{run - 1:0{RLE_WIDTHS[idx]}b}{word}")
                length -= run
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return list(int(stream, 2).to_bytes(len(stream) // 8, "big")) if stream else []


class _Bits:
    def __init__(self, data: list[int]) -> None:
        try:
            raw = bytes(data)
        except (TypeError, ValueError) as exc:
            raise LabelError(f"brush RLE must be a list of byte values 0..255: {exc}") from exc
        self.bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
        self.pos = 0

    def read(self, n: int) -> int:
        end = self.pos + n
        if end > self.bits.size:
            raise LabelError("brush RLE is truncated")
        chunk = self.bits[self.pos:end]
        self.pos = end
        out = 0
        for b in chunk.tolist():
            out = (out << 1) | b
        return out


MAX_VALUES = 4 * 4096 * 4096
"""Most values an RLE stream may declare (RGBA of a 4096 x 4096 mask)."""


def decode_values(rle: list[int], max_values: int = MAX_VALUES) -> NDArray[np.uint8]:
    """rle-pack stream → flat byte array (words wider than 8 bits are refused)."""
    src = _Bits(rle)
    n = src.read(32)
    word = src.read(5) + 1
    widths = [src.read(4) + 1 for _ in range(4)]
    if word > 8:
        raise LabelError(f"brush RLE word size {word} > 8 bits is not an image mask")
    if n > max_values:  # the header's count is allocated below: check it first
        raise LabelError(f"brush RLE declares {n} values > limit {max_values}")
    out = np.zeros(n, dtype=np.uint8)
    i = 0
    while i < n:
        repeat = src.read(1)
        j = i + 1 + src.read(widths[src.read(2)])
        if j > n:
            raise LabelError(f"brush RLE run overflows the {n} declared values")
        if repeat:
            out[i:j] = src.read(word)
        else:
            for k in range(i, j):
                out[k] = src.read(word)
        i = j
    return out


def decode_layer(rle: list[int], width: int, height: int) -> NDArray[np.bool_]:
    """Brush RLE → binary layer ``[H, W]`` (set where alpha > 0)."""
    values = decode_values(rle, min(MAX_VALUES, width * height * 4))
    if values.size != width * height * 4:
        raise LabelError(
            f"brush RLE holds {values.size} values but {width}x{height} RGBA needs {width * height * 4}"
        )
    return values.reshape(height, width, 4)[:, :, 3] > 0  # [H, W]
