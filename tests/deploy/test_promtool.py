"""promtool checks the scrape config, the alert rules (syntax and unit tests) and the dashboard's PromQL."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import deploy_files
from tests.deploy.prometheus_server import promtool_binary


@pytest.fixture(scope="module")
def promtool() -> str:
    try:
        return promtool_binary()
    except RuntimeError as exc:
        pytest.fail(str(exc))


def run(promtool: str, *args: str | Path) -> str:
    proc = subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def test_alert_rules_pass_promtool_check_rules(promtool: str) -> None:
    output = run(promtool, "check", "rules", deploy_files.ALERTS)
    assert f"SUCCESS: {len(deploy_files.rule_exprs())} rules found" in output


def test_alert_rules_unit_tests_pass(promtool: str) -> None:
    """Collapse, flood, drift, dead letters, lag, refused releases, failed swaps fire on the right input."""
    output = run(promtool, "test", "rules", deploy_files.ALERTS_TEST)
    assert "SUCCESS" in output
    tested = {t["alertname"] for case in yaml.safe_load(deploy_files.ALERTS_TEST.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    must = {"AvminerMiningRateCollapse", "AvminerMiningRateFlood", "AvminerDriftAlarm", "AvminerConsumerLagGrowing",
            "AvminerDeadLetterSpike", "AvminerReleaseRefused", "AvminerModelSwapFailed"}
    assert must <= tested


def test_prometheus_config_passes_promtool_check_config(promtool: str) -> None:
    output = run(promtool, "check", "config", deploy_files.PROMETHEUS_YML)
    assert "is valid prometheus config file syntax" in output
    assert "SUCCESS: 1 rule files found" in output  # alerts.yml is loaded, relative to the config


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Every dashboard query, with Grafana's variables filled in, is valid PromQL (as recording rules)."""
    exprs = deploy_files.dashboard_exprs(grafana_defaults=True)
    rules = [{"record": f"avminer_dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run(promtool, "check", "rules", path)
