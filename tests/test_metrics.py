"""avminer.metrics: Prometheus naming conventions, bounded labels, and the /metrics endpoint."""

from __future__ import annotations

import re
import urllib.request

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.parser import text_string_to_metric_families

from avminer import metrics
from tests.services import LOOPBACK, free_port, wait_until

DECLARED = {name: obj for name, obj in vars(metrics).items()
            if isinstance(obj, (Counter, Gauge, Histogram, Info)) and name.isupper()}
# Labels whose values come from an open set (one per frame, vehicle, model...) would explode the series count.
UNBOUNDED = {"sample_id", "frame_id", "vehicle_id", "camera_id", "offset", "uri", "version", "error", "message"}
UNIT_SUFFIXES = ("_seconds", "_bytes", "_ratio", "_nats", "_messages", "_size", "_score", "_depth")


def families() -> dict[str, str]:
    return {f.name: f.type for f in REGISTRY.collect() if f.name.startswith("avminer_")}


def test_every_metric_has_the_prefix_and_a_help_text() -> None:
    assert len(DECLARED) >= 30
    for name, obj in DECLARED.items():
        assert obj._name.startswith("avminer_"), name
        assert obj._documentation.strip(), name
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", obj._name), name


def test_counters_end_in_total_and_other_types_do_not() -> None:
    for name, kind in families().items():
        series = metrics.family_series()[name]
        if kind == "counter":
            assert series == {f"{name}_total"}
        else:
            assert not any(s.endswith("_total") for s in series), name


def test_histograms_carry_a_unit_and_no_label_is_unbounded() -> None:
    for name, obj in DECLARED.items():
        if isinstance(obj, Histogram):
            assert obj._name.endswith(UNIT_SUFFIXES), f"{name}: histogram {obj._name} names no unit"
        labels = set(obj._labelnames)
        assert not labels & UNBOUNDED, f"{name}: unbounded labels {labels & UNBOUNDED}"
        assert "le" not in labels and "quantile" not in labels


def test_time_metrics_are_in_seconds() -> None:
    for name, obj in DECLARED.items():
        assert not re.search(r"_(ms|milliseconds|minutes|hours)(_|$)", obj._name), name


def test_the_issue_list_is_exported() -> None:
    """Frames in, decisions, mined per slice and reason, rate vs target, drift, uncertainty, engine,
    queues, lag, commits, DLQ, S3/Kafka errors, model info and swaps, trainer progress and gates."""
    names = metrics.series_names()
    for needed in [
        "avminer_frames_in_total", "avminer_decisions_total", "avminer_mined_frames_total",
        "avminer_mining_rate_ratio", "avminer_mining_target_ratio", "avminer_drift_statistic",
        "avminer_frame_mutual_information_nats_bucket", "avminer_frame_entropy_nats_bucket",
        "avminer_engine_batch_duration_seconds_bucket", "avminer_engine_batch_size_bucket",
        "avminer_stage_queue_depth", "avminer_consumer_lag_messages", "avminer_commits_total",
        "avminer_dead_letters_total", "avminer_s3_errors_total", "avminer_kafka_errors_total",
        "avminer_model_info", "avminer_model_swaps_total", "avminer_trainer_epoch",
        "avminer_trainer_runs_total", "avminer_trainer_gate_miou_ratio", "avminer_trainer_gate_results_total",
    ]:
        assert needed in names, needed
    assert set(metrics.MINED._labelnames) == {"slice", "reason"}
    assert set(metrics.CONSUMER_LAG._labelnames) == {"topic", "partition"}
    assert set(metrics.DEAD_LETTERS._labelnames) == {"reason"}


def test_series_names_include_labelled_families_without_children() -> None:
    registry = CollectorRegistry()
    Counter("t_events_total", "x", ["kind"], registry=registry)
    Histogram("t_wait_seconds", "x", registry=registry)
    Info("t_build", "x", registry=registry)
    Gauge("t_depth", "x", ["stage"], registry=registry)
    assert metrics.series_names(registry, prefix="t_") == {
        "t_events_total", "t_wait_seconds_bucket", "t_wait_seconds_sum", "t_wait_seconds_count",
        "t_build_info", "t_depth",
    }


def test_serve_port_zero_does_nothing() -> None:
    metrics.serve(LOOPBACK, 0)  # no thread, no socket: nothing to assert but that it returns


def test_serve_exposes_the_registry_on_the_configured_address_and_port() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("avminer_mining_rate_ratio", "x", ["slice"], registry=registry)
    gauge.labels(slice="dusk/clear/cambridge_uk").set(0.25)
    port = free_port()
    metrics.serve(LOOPBACK, port, registry=registry)
    url = f"http://{LOOPBACK}:{port}/metrics"
    wait_until(lambda: urllib.request.urlopen(url, timeout=2).status == 200, 10, "metrics endpoint")
    text = urllib.request.urlopen(url, timeout=2).read().decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "avminer_mining_rate_ratio"]
    (sample,) = family.samples
    assert sample.labels == {"slice": "dusk/clear/cambridge_uk"} and sample.value == pytest.approx(0.25)
