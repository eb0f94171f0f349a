"""The taxonomy module: declared mappings, label and probability mapping, confusion and mIoU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from avminer.taxonomy import (
    CAMVID,
    CAMVID_TO_IDD_LEVEL1,
    IDD_LEVEL1,
    Taxonomy,
    TaxonomyError,
    TaxonomyMapping,
    confusion,
    mapping,
    mean_iou,
    taxonomy_for,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_known_taxonomies_match_the_shared_datasets_class_files() -> None:
    for folder, tax in (("camvid", CAMVID), ("idd_lite", IDD_LEVEL1)):
        path = SHARED / folder / "classes.json"
        if not path.exists():
            pytest.fail(f"{path} missing: the shared data sets are part of every machine of this project")
        data = json.loads(path.read_text())
        assert taxonomy_for(data["classes"], data["void"]) is tax


def test_every_camvid_class_lands_in_one_idd_group() -> None:
    m = CAMVID_TO_IDD_LEVEL1
    assert m.matrix.sum(axis=0).tolist() == [1.0] * CAMVID.num_classes
    assert m.map_labels(np.array([CAMVID.index("road"), CAMVID.index("car"), CAMVID.void])).tolist() == [
        IDD_LEVEL1.index("drivable"), IDD_LEVEL1.index("vehicles"), IDD_LEVEL1.void,
    ]
    assert mapping(CAMVID, IDD_LEVEL1) is m
    assert mapping(CAMVID, CAMVID) is None
    with pytest.raises(TaxonomyError, match="no declared mapping"):
        mapping(IDD_LEVEL1, CAMVID)


def test_bad_declarations_name_the_problem() -> None:
    with pytest.raises(TaxonomyError, match="void must be"):
        Taxonomy("x", ("a", "b"), void=1)
    with pytest.raises(TaxonomyError, match="belong to no group"):
        TaxonomyMapping(CAMVID, IDD_LEVEL1, {"sky": ("sky",)})
    with pytest.raises(TaxonomyError, match="no class 'lorry'"):
        TaxonomyMapping(CAMVID, IDD_LEVEL1, {"vehicles": ("lorry",)})


@given(st.integers(min_value=1, max_value=4), st.integers(min_value=0, max_value=2**31 - 1))
def test_group_probabilities_sum_fine_ones(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, CAMVID.num_classes, 3, 5))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # [N, C, H, W]
    grouped = CAMVID_TO_IDD_LEVEL1.map_probs(probs)  # [N, G, H, W]
    assert grouped.shape == (n, IDD_LEVEL1.num_classes, 3, 5)
    np.testing.assert_allclose(grouped.sum(axis=1), 1.0, rtol=1e-5)
    road, drivable = CAMVID.index("road"), IDD_LEVEL1.index("drivable")
    np.testing.assert_allclose(grouped[:, drivable], probs[:, road], rtol=1e-6)


def test_confusion_skips_void_and_miou_ignores_absent_classes() -> None:
    truth = np.array([0, 0, 1, CAMVID.void])
    pred = np.array([0, 1, 1, 5])
    cm = confusion(pred, truth, CAMVID)
    assert cm.sum() == 3
    # class 0: tp 1, union 2 -> 0.5; class 1: tp 1, union 2 -> 0.5; others absent
    assert mean_iou(cm) == pytest.approx(0.5)
