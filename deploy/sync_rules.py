"""Write deploy/k8s/prometheusrule.yaml from deploy/prometheus/alerts.yml (one source for the rules).

    python deploy/sync_rules.py          # rewrite the PrometheusRule
    python deploy/sync_rules.py --check  # exit 1 if it is out of date (tests/deploy does the same)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_RULE = DEPLOY / "k8s" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by `python deploy/sync_rules.py`: edit alerts.yml, not this.
# The label release: prometheus matches kube-prometheus-stack's default ruleSelector.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The PrometheusRule object (monitoring.coreos.com/v1) carrying ``groups``."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "avminer",
            "namespace": "avminer",
            "labels": {"app.kubernetes.io/part-of": "avminer", "release": "prometheus"},
        },
        "spec": {"groups": groups},
    }


def render() -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    body = yaml.dump(prometheus_rule(groups), Dumper=_Dumper, sort_keys=False, width=110)
    return HEADER + body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if PROMETHEUS_RULE.read_text() != text:
            print(f"{PROMETHEUS_RULE} is out of date: run python deploy/sync_rules.py", file=sys.stderr)
            return 1
        return 0
    PROMETHEUS_RULE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
