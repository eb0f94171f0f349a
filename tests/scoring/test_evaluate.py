"""Rank-based AUROC against the brute-force pair count."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avminer.errors import ScoringError
from avminer.scoring.evaluate import auroc, rankdata

small = st.lists(st.integers(0, 5).map(float), min_size=1, max_size=30)  # many ties


@settings(max_examples=200, deadline=None)
@given(small, small)
def test_auroc_equals_pair_counting(pos: list[float], neg: list[float]) -> None:
    p, n = np.array(pos)[:, None], np.array(neg)[None, :]
    brute = ((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size)
    assert auroc(np.array(pos), np.array(neg)) == pytest.approx(brute)


def test_examples_and_errors() -> None:
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    np.testing.assert_array_equal(rankdata(np.array([10, 20, 10, 30])), [1.5, 3, 1.5, 4])
    with pytest.raises(ScoringError):
        auroc([], [1.0])
    with pytest.raises(ScoringError):
        auroc([float("nan")], [1.0])
