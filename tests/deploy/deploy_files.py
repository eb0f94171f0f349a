"""Paths of the deploy/ files and small readers the deploy tests share (PromQL names, env vars, units)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "avminer.json"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_GPU = DEPLOY / "compose.gpu.yaml"
CONFIG = DEPLOY / "config" / "miner.yaml"
K8S = DEPLOY / "k8s"
SYSTEMD_UNIT = DEPLOY / "systemd" / "avminer-miner.service"
SYSTEMD_ENV = DEPLOY / "systemd" / "miner.env.example"
DOCKERFILES = {"miner": DEPLOY / "docker" / "miner.Dockerfile", "trainer": DEPLOY / "docker" / "trainer.Dockerfile"}

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_METRIC = re.compile(r"(?<![\w:])avminer_[A-Za-z0-9_]+(?![\w:])")
_ENV_NAME = re.compile(r"\bAVMINER_[A-Z0-9][A-Z0-9_]*")
# Grafana's own variables, replaced by what Grafana would send with the default selection.
_GRAFANA_DEFAULTS = {"$__rate_interval": "1m", "$__interval": "15s", "$slice": ".*"}


def load_yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def text_files() -> Iterator[Path]:
    """Every file under deploy/ (all are text)."""
    return (p for p in sorted(DEPLOY.rglob("*")) if p.is_file() and "__pycache__" not in p.parts)


def metric_names(expr: str) -> set[str]:
    """The ``avminer_*`` series names a PromQL expression selects (label values and strings ignored)."""
    return set(_METRIC.findall(_QUOTED.sub('""', expr)))


def rule_exprs(path: Path = ALERTS) -> dict[str, str]:
    """{alert or record name: expr} of a Prometheus rule file."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return {r.get("alert") or r["record"]: r["expr"] for g in groups for r in g["rules"]}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_exprs(grafana_defaults: bool = False) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and the variables' label_values metrics."""
    dash = dashboard()
    exprs = [t["expr"] for p in _panels(dash["panels"]) for t in p.get("targets", []) if t.get("expr")]
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
            exprs.append(match.group(1) if match else query)
    if grafana_defaults:
        for name, value in sorted(_GRAFANA_DEFAULTS.items(), key=lambda kv: -len(kv[0])):
            exprs = [e.replace(name, value) for e in exprs]
    return exprs


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in load_yaml_docs(path)]


def k8s_containers(name: str) -> dict[str, Any]:
    """The first container of the k8s workload called ``name``."""
    for doc in k8s_docs():
        if doc["kind"] in {"Deployment", "Job", "StatefulSet"} and doc["metadata"]["name"] == name:
            return dict(doc["spec"]["template"]["spec"]["containers"][0])
    raise AssertionError(f"no workload {name} in deploy/k8s")


def k8s_doc(kind: str, name: str) -> dict[str, Any]:
    for doc in k8s_docs():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def env_names_anywhere() -> dict[str, set[Path]]:
    """Every AVMINER_* name mentioned in any deploy file (comments included) -> files naming it."""
    found: dict[str, set[Path]] = {}
    for path in text_files():
        for name in _ENV_NAME.findall(path.read_text()):
            found.setdefault(name, set()).add(path)
    return found


def dockerfile_env(path: Path) -> dict[str, str]:
    """ENV assignments of a Dockerfile (``ENV A=1 \\ B=2`` form)."""
    text = path.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def systemd_unit(path: Path = SYSTEMD_UNIT) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values...]}} (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: key outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file(path: Path = SYSTEMD_ENV) -> dict[str, str]:
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def seconds(value: str) -> float:
    """A systemd / compose duration (``45``, ``45s``, ``1m30s``, ``2min``) in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value.strip())
    assert parts, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)
