"""A real Prometheus server for the tests (Debian's ``prometheus`` package), in the style of tests/services.py.

It runs on a free loopback port with its own storage directory, scrapes the given targets every
``scrape_interval`` and evaluates the given rule files; :meth:`PrometheusServer.query` goes through the
HTTP API (``/api/v1/query``) like Grafana does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.services import LOOPBACK, Service, free_port, wait_until


def prometheus_binary() -> str:
    """Path of the prometheus server binary, or a RuntimeError that says how to install it."""
    found = shutil.which("prometheus")
    if not found:
        raise RuntimeError("prometheus is not installed: apt-get install -y prometheus (Debian's package)")
    return found


def promtool_binary() -> str:
    """Path of promtool, or a RuntimeError that says how to install it."""
    found = shutil.which("promtool")
    if not found:
        raise RuntimeError("promtool is not installed: apt-get install -y prometheus (Debian's package)")
    return found


class PrometheusQueryError(RuntimeError):
    """The HTTP API answered with an error (bad PromQL, timeout)."""


@dataclass
class PrometheusServer:
    url: str
    service: Service
    workdir: Path

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; raise PrometheusQueryError on an API error."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusQueryError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the vector's samples as ``{"metric": {...}, "value": [t, "v"]}``."""
        data = self.api("query", query=expr)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    def values(self, expr: str, by: str) -> dict[str, float]:
        """Instant query reduced to ``{label value of `by`: sample value}``."""
        return {s["metric"].get(by, ""): float(s["value"][1]) for s in self.query(expr)}

    def targets_up(self) -> bool:
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def targets_scraped(self) -> bool:
        """True once every target has been tried at least once (up or down)."""
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(t["health"] != "unknown" for t in active)

    def stop(self) -> None:
        self.service.stop()


def start_prometheus(
    workdir: Path,
    targets: Sequence[str],
    rule_files: Sequence[Path] = (),
    scrape_interval: str = "1s",
    job: str = "avminer",
) -> PrometheusServer:
    """Start Prometheus scraping ``targets`` (host:port) as ``job``; rule files are copied next to its config."""
    workdir.mkdir(parents=True, exist_ok=True)
    rules = []
    for path in rule_files:
        shutil.copy(path, workdir / path.name)
        rules.append(path.name)
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": rules,
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    cmd = [
        prometheus_binary(),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={LOOPBACK}:{port}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
    ]
    fh = open(log, "wb")  # noqa: SIM115 - kept open for the child's lifetime
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    server = PrometheusServer(f"http://{LOOPBACK}:{port}", Service(proc, log), workdir)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}")
        with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)

    try:
        wait_until(ready, 30, "prometheus", log)
        # Target discovery hands targets to the scrape loops a few seconds after start: wait for it,
        # so a scrape loop is running before the caller starts what it scrapes.
        wait_until(server.targets_scraped, 30, "prometheus scrape loops", log)
    except BaseException:
        server.stop()
        raise
    return server
