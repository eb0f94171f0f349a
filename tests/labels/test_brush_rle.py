"""Label Studio brush RLE (thi.ng rle-pack over RGBA): encode/decode round trips and the bit layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from avminer.errors import LabelError
from avminer.labels.brush_rle import decode_layer, decode_values, encode_layer, encode_values


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_layer_roundtrip(layer: np.ndarray) -> None:
    h, w = layer.shape
    assert np.array_equal(decode_layer(encode_layer(layer), w, h), layer)


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.integers(0, 300), elements=st.sampled_from([0, 1, 255])))
def test_values_roundtrip(values: np.ndarray) -> None:
    assert np.array_equal(decode_values(encode_values(values)), values)


def test_header_and_run_layout() -> None:
    # 8 values: four 0s then four 255s -> header + two repeat runs of length 4 (3-bit field).
    rle = encode_values(np.array([0, 0, 0, 0, 255, 255, 255, 255], dtype=np.uint8))
    bits = "".join(f"{b:08b}" for b in rle)
    assert bits[:32] == f"{8:032b}"  # number of values
    assert bits[32:37] == "00111"  # word size 8
    assert bits[37:53] == "0010" + "0011" + "0111" + "1111"  # run widths 3, 4, 8, 16
    assert bits[53:67] == "1" + "00" + "011" + "00000000"  # repeat, width #0, length 4, value 0
    assert bits[67:81] == "1" + "00" + "011" + "11111111"
    assert set(bits[81:]) <= {"0"} and len(bits) % 8 == 0


def test_literal_runs_decode() -> None:
    # A hand-made stream with a literal run of three values (flag 0), as other encoders emit.
    bits = f"{3:032b}" + "00111" + "0010001101111111" + "0" + "00" + "010" + "00000001" + "11111111" + "00000000"
    bits += "0" * (-len(bits) % 8)
    rle = list(int(bits, 2).to_bytes(len(bits) // 8, "big"))
    assert decode_values(rle).tolist() == [1, 255, 0]


def test_truncated_and_mis_sized_streams_are_refused() -> None:
    rle = encode_layer(np.ones((4, 4), dtype=bool))
    with pytest.raises(LabelError, match="truncated"):
        decode_values(rle[:8])
    with pytest.raises(LabelError, match="needs"):
        decode_layer(rle, 5, 4)
