"""Every metric the dashboard and the alert rules name is one avminer.metrics exports."""

from __future__ import annotations

import pytest

from avminer import metrics
from tests.deploy import deploy_files

EXPORTED = metrics.series_names()


def test_metric_name_parser_handles_promql() -> None:
    expr = ('sum by (slice) (rate(avminer_decisions_total{mined="true", slice=~"avminer_not_a_metric"}[5m]))'
            ' / ignoring(x) avminer_frame_entropy_nats_bucket and on() avminer:recorded:rate5m')
    assert deploy_files.metric_names(expr) == {"avminer_decisions_total", "avminer_frame_entropy_nats_bucket"}


@pytest.mark.parametrize("name,expr", sorted(deploy_files.rule_exprs().items()))
def test_alert_rule_names_exported_metrics(name: str, expr: str) -> None:
    names = deploy_files.metric_names(expr)
    assert names, f"{name} names no avminer metric"
    assert names <= EXPORTED, f"{name} names metrics avminer does not export: {sorted(names - EXPORTED)}"


def test_dashboard_names_exported_metrics() -> None:
    exprs = deploy_files.dashboard_exprs()
    assert len(exprs) >= 20
    named = set().union(*map(deploy_files.metric_names, exprs))
    assert named <= EXPORTED, f"dashboard names metrics avminer does not export: {sorted(named - EXPORTED)}"


def test_dashboard_covers_the_issue_list() -> None:
    """Mining rate vs target per slice, drift, lag, latency, DLQ, versions and queue depths are on it."""
    named = set().union(*map(deploy_files.metric_names, deploy_files.dashboard_exprs()))
    for needed in ("avminer_decisions_total", "avminer_mining_target_ratio", "avminer_drift_statistic",
                   "avminer_consumer_lag_messages", "avminer_engine_batch_duration_seconds_bucket",
                   "avminer_dead_letters_total", "avminer_model_info", "avminer_stage_queue_depth"):
        assert needed in named, needed


def test_every_exported_family_is_on_the_dashboard_or_in_a_rule() -> None:
    """No metric is exported that nobody can see (a histogram counts once, via any of its series)."""
    named = set().union(*map(deploy_files.metric_names, deploy_files.dashboard_exprs()),
                        *map(deploy_files.metric_names, deploy_files.rule_exprs().values()))
    unseen = [family for family, series in metrics.family_series().items() if not series & named]
    assert not unseen, f"exported but on no dashboard panel or rule: {unseen}"
