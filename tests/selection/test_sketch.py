"""Property tests of the mergeable quantile sketch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avminer.errors import SelectionError
from avminer.selection.sketch import QuantileSketch

values = st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(values, st.floats(0.0, 1.0), st.sampled_from([0.01, 0.0025]))
def test_quantile_relative_error_bound(xs: list[float], q: float, acc: float) -> None:
    s = QuantileSketch(acc)
    s.update(xs)
    exact = sorted(xs)[int(np.floor(q * (len(xs) - 1)))]
    got = s.quantile(q)
    if exact <= s.min_value:
        assert got <= s.min_value
    else:
        assert abs(got - exact) <= acc * exact * (1 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(values, values)
def test_merge_equals_sketch_of_union(a: list[float], b: list[float]) -> None:
    sa, sb, su = QuantileSketch(), QuantileSketch(), QuantileSketch()
    sa.update(a)
    sb.update(b)
    su.update(a + b)
    sa.merge(sb)
    assert sa.to_bytes() == su.to_bytes()
    assert sa.count == len(a) + len(b)


@settings(max_examples=100, deadline=None)
@given(values)
def test_bytes_round_trip(xs: list[float]) -> None:
    s = QuantileSketch()
    s.update(xs)
    back = QuantileSketch.from_bytes(s.to_bytes())
    assert back.to_bytes() == s.to_bytes()
    for q in (0.0, 0.5, 0.999, 1.0):
        assert back.quantile(q) == s.quantile(q)


def test_count_above_and_tail() -> None:
    rng = np.random.default_rng(0)
    x = rng.lognormal(size=100_000)
    s = QuantileSketch()
    s.update(x)
    for t in np.quantile(x, [0.5, 0.9, 0.99, 0.999]):
        exact = float((x > t).sum())
        assert s.count_above([t])[0] == pytest.approx(exact, rel=0.05, abs=3)
    assert s.count_above([0.0])[0] == pytest.approx(len(x))
    assert s.quantile(0.999) == pytest.approx(np.quantile(x, 0.999), rel=0.01)


def test_zero_bucket_nan_and_collapse() -> None:
    s = QuantileSketch(max_bins=16)
    s.update([0.0, 0.0, -1.0, float("nan"), *np.geomspace(1e-3, 1e3, 500)])
    assert s.count == 503
    assert s.quantile(0.0) == 0.0
    assert s.quantile(1.0) == pytest.approx(1e3, rel=0.01)  # high quantiles survive collapsing
    assert len(s._bins) <= 16


def test_errors() -> None:
    with pytest.raises(SelectionError, match="empty"):
        QuantileSketch().quantile(0.5)
    with pytest.raises(SelectionError, match="truncated"):
        QuantileSketch.from_bytes(b"\x01")
    bad = bytearray(QuantileSketch().to_bytes())
    bad[0] = 9
    with pytest.raises(SelectionError, match="version 9"):
        QuantileSketch.from_bytes(bytes(bad))
    with pytest.raises(SelectionError, match="same sketch settings"):
        QuantileSketch(0.01).merge(QuantileSketch(0.02))


@settings(max_examples=50, deadline=None)
@given(values, st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=20))
def test_scalar_paths_match_the_vectorised_ones(xs: list[float], queries: list[float]) -> None:
    vec, one = QuantileSketch(), QuantileSketch()
    vec.update(np.array(xs))
    for x in xs:
        one.update(float(x))
    assert one.to_bytes() == vec.to_bytes()
    np.testing.assert_allclose([one.count_above_one(q) for q in queries], vec.count_above(queries))
