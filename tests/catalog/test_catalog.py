"""The provenance catalog, on SQLite and on the real PostgreSQL (same tests, both backends)."""

from __future__ import annotations

import threading
import time

import pytest

from avminer.catalog.catalog import Catalog, DatasetQuery, open_catalog, parse_time_us, slice_matches
from avminer.errors import CatalogError
from avminer.sinks.base import label_request_for
from tests.sinks import factories as f


def _mine(catalog: Catalog, i: int, *, request: bool = True, **kw: object) -> None:
    s = f.sample(i, with_maps=False, **kw)  # type: ignore[arg-type]
    catalog.upsert_decision(s.decision, frame_uri=f"s3://b/frame{i}.jpg", width=f.W, height=f.H, priority=i)
    if request:
        catalog.upsert_request(label_request_for(s, f"s3://b/frame{i}.jpg", None))


def test_upserts_are_idempotent_and_state_only_moves_forward(catalog: Catalog) -> None:
    _mine(catalog, 1)
    catalog.mark_labeled("s0001", "s3://b/mask1.png", "oracle")
    # A replay of the decision and the request must neither duplicate nor move the state back.
    _mine(catalog, 1)
    row = catalog.get_sample("s0001")
    assert row is not None
    assert row.state == "labeled"
    assert row.label_uri == "s3://b/mask1.png"
    assert row.frame_uri == "s3://b/frame1.jpg"
    assert (row.width, row.height) == (f.W, f.H)
    assert row.scores == {"mi": pytest.approx(0.1), "shift": 2.0}
    assert catalog.stats()["samples"] == 1


def test_requested_ids_tells_which_requests_were_sent(catalog: Catalog) -> None:
    _mine(catalog, 1, request=False)
    _mine(catalog, 2)
    assert catalog.requested_ids(["s0001", "s0002", "nope"]) == {"s0002"}


def test_mark_labeled_unknown_sample_is_refused(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="unknown sample"):
        catalog.mark_labeled("missing", "s3://b/m.png", "oracle")


def test_mined_at_dusk_last_hour_and_why(catalog: Catalog) -> None:
    now = int(time.time() * 1e6)
    _mine(catalog, 1, slice_key="dusk/clear/cambridge_uk", ts_us=now - 60_000_000)
    _mine(catalog, 2, slice_key="dusk/fog/cambridge_uk", ts_us=now - 120_000_000)
    _mine(catalog, 3, slice_key="dusk/clear/cambridge_uk", ts_us=now - 3 * 3_600_000_000)  # too old
    _mine(catalog, 4, slice_key="day/clear/cambridge_uk", ts_us=now - 60_000_000)  # wrong slice
    _mine(catalog, 5, slice_key="dusky/clear/x", ts_us=now)  # shares the LIKE prefix, not the segment
    rows = catalog.query_samples(slices=["dusk/*/*"], since_us=parse_time_us("1h"))
    assert [r.sample_id for r in rows] == ["s0001", "s0002"]  # newest first
    assert all(r.reasons == ["uncertainty"] for r in rows)
    assert catalog.query_samples(slices=["*/fog/*"]) [0].sample_id == "s0002"
    assert catalog.query_samples(reason="shift") == []


def test_dataset_versions_are_frozen(catalog: Catalog) -> None:
    for i in range(3):
        _mine(catalog, i)
    catalog.mark_labeled("s0000", "s3://b/m0.png", "oracle")
    catalog.mark_labeled("s0001", "s3://b/m1.png", "oracle")
    v1 = catalog.create_dataset("dusk-train", DatasetQuery(slices=["dusk/*/*"]))
    assert (v1.version, v1.sample_count) == (1, 2)
    # Later labels change neither v1's membership nor its label URIs.
    catalog.mark_labeled("s0002", "s3://b/m2.png", "human")
    catalog.mark_labeled("s0001", "s3://b/m1-fixed.png", "human")
    v2 = catalog.create_dataset("dusk-train", DatasetQuery(slices=["dusk/*/*"]))
    assert (v2.version, v2.sample_count) == (2, 3)
    frozen = {s["sample_id"]: s["label_uri"] for s in catalog.dataset_samples("dusk-train", 1)}
    assert frozen == {"s0000": "s3://b/m0.png", "s0001": "s3://b/m1.png"}
    assert catalog.get_dataset("dusk-train").version == 2
    assert [(d.dataset_id, d.version) for d in catalog.list_datasets()] == [("dusk-train", 1), ("dusk-train", 2)]
    with pytest.raises(CatalogError, match="no sample matches"):
        catalog.create_dataset("empty", DatasetQuery(slices=["night/*/*"]))
    with pytest.raises(CatalogError, match="invalid dataset id"):
        catalog.create_dataset("../etc", DatasetQuery())


def test_which_labels_trained_model_v7(catalog: Catalog) -> None:
    for i in range(3):
        _mine(catalog, i)
        catalog.mark_labeled(f"s{i:04d}", f"s3://b/m{i}.png", "oracle")
    catalog.create_dataset("ds", DatasetQuery())
    catalog.record_training_run("run-1", "ds", model_version="v7")
    labels = catalog.trained_on("v7")
    assert sorted(r["sample_id"] for r in labels) == ["s0000", "s0001", "s0002"]
    assert {r["run_id"] for r in labels} == {"run-1"}
    assert all(r["label_uri"].startswith("s3://b/m") for r in labels)
    assert catalog.get_sample("s0000").state == "used"  # type: ignore[union-attr]
    stats = catalog.stats()
    assert stats["by_state"]["used"] == 3
    assert stats["training_runs"] == 1
    with pytest.raises(CatalogError, match="no training run"):
        catalog.trained_on("v8")


def test_concurrent_writers_converge(catalog: Catalog) -> None:
    """Several writers (own connections) upserting the same samples: one row each, state requested."""
    others = [open_catalog(catalog.url, schema=catalog._schema) for _ in range(3)]
    errors: list[BaseException] = []

    def work(cat: Catalog) -> None:
        try:
            for i in range(20):
                _mine(cat, i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in others:
        c.close()
    assert not errors
    stats = catalog.stats()
    assert stats["samples"] == 20
    assert stats["by_state"]["requested"] == 20


def test_parse_time_and_slice_patterns() -> None:
    now = 1_000_000_000_000
    assert parse_time_us("1h", now=now) == now - 3_600_000_000
    assert parse_time_us("2024-01-01T00:00:00Z") == 1_704_067_200_000_000
    assert parse_time_us("123") == 123
    with pytest.raises(CatalogError):
        parse_time_us("yesterday-ish")
    assert slice_matches("dusk/*/*", "dusk/fog/x")
    assert slice_matches("dusk", "dusk/fog/x")
    assert not slice_matches("dusk/*", "dusky/fog/x")
    assert not slice_matches("*/clear", "day/fog/x")


def test_bad_urls_are_refused(tmp_path: object) -> None:
    with pytest.raises(CatalogError, match="unsupported catalog URL"):
        open_catalog("mysql://x/y")


def test_a_batch_of_requests_is_recorded_in_one_call(catalog: Catalog) -> None:
    """The writer records a batch's requests together right after sending them (one commit)."""
    samples = [f.sample(i, with_maps=False) for i in range(3)]
    for s in samples:
        catalog.upsert_decision(s.decision, frame_uri=f"s3://b/{s.sample_id}.jpg", width=f.W, height=f.H)
    ids = [s.sample_id for s in samples]
    catalog.upsert_requests([])
    assert catalog.requested_ids(ids) == set()
    catalog.upsert_requests([label_request_for(s, f"s3://b/{s.sample_id}.jpg", None) for s in samples[:2]])
    assert catalog.requested_ids(ids) == set(ids[:2])
    catalog.mark_labeled(ids[0], "s3://b/mask.png", "oracle")
    catalog.upsert_requests([label_request_for(samples[0], "s3://b/x.jpg", None)])  # a replay: no step back
    row = catalog.get_sample(ids[0])
    assert row is not None and row.state == "labeled"
