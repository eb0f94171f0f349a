"""A real Prometheus server (Debian's package) scrapes a miner during a replay; the mining rate per
slice comes back through Prometheus's HTTP API and matches what the miner decided."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy import deploy_files
from tests.deploy.prometheus_server import PrometheusServer, start_prometheus
from tests.services import LOOPBACK, Service, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Replay:
    prometheus: PrometheusServer
    miner: Service
    done: Path  # written by the miner process when its replay has ended


@contextlib.contextmanager
def replay_scraped_by_prometheus(workdir: Path, miner_cmd: Sequence[str], port: int, env: dict[str, str] | None = None,
                                 ) -> Iterator[Replay]:
    """Start Prometheus (scraping ``port`` every second, evaluating the alert rules), then the miner."""
    prometheus = start_prometheus(workdir / "prometheus", [f"{LOOPBACK}:{port}"], rule_files=[deploy_files.ALERTS])
    log = workdir / "miner.log"
    try:
        with open(log, "wb") as fh:
            proc = subprocess.Popen(list(miner_cmd), cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env)
        miner = Service(proc, log)
        try:
            yield Replay(prometheus, miner, workdir / "done")
        finally:
            miner.stop()
    finally:
        prometheus.stop()


def wait_for_end_of_replay(replay: Replay, timeout: float) -> None:
    def ended() -> bool:
        if replay.miner.proc is not None and replay.miner.proc.poll() is not None:
            raise AssertionError(f"the miner exited early:\n{replay.miner.log.read_text()[-3000:]}")
        return replay.done.exists()

    wait_until(ended, timeout, "the end of the replay", replay.miner.log)


def wait_for_final_scrape(prometheus: PrometheusServer, decisions: int) -> None:
    """Until Prometheus holds the replay's final decision count (series go stale if the target
    disappears, hence last_over_time)."""

    def scraped() -> bool:
        got = prometheus.values("sum(last_over_time(avminer_decisions_total[5m]))", by="")
        return got.get("") == decisions

    # A readiness wait, not a speed check: on a loaded 2-core CI box the last scrape can come late.
    wait_until(scraped, 90, f"a scrape showing all {decisions} decisions", prometheus.service.log)
    # Scraped during the replay too, not only at its end: the frame counter changed between scrapes.
    assert prometheus.values("sum(changes(avminer_frames_in_total[5m]))", by="")[""] >= 1


# Mined fraction per slice from the decision counters (as the dashboard and alert rules compute it); a
# slice that mined nothing has no mined="true" series, hence the `or ... * 0`.
FLEET_RATE = (
    '(sum by (slice) (last_over_time(avminer_decisions_total{mined="true"}[5m]))'
    " or sum by (slice) (last_over_time(avminer_decisions_total[5m])) * 0)"
    " / sum by (slice) (last_over_time(avminer_decisions_total[5m]))"
)


# -- a stand-in miner that sets every metric (tests/deploy/fake_miner.py) ---------------------------

@pytest.fixture(scope="module")
def fake_replay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replay]:
    workdir = tmp_path_factory.mktemp("fake-replay")
    port = free_port()
    cmd = [sys.executable, "-m", "tests.deploy.fake_miner", "--port", str(port), "--done", str(workdir / "done")]
    with replay_scraped_by_prometheus(workdir, cmd, port) as replay:
        wait_for_end_of_replay(replay, 60)
        yield replay


def test_prometheus_reads_back_the_mining_rate_per_slice(fake_replay: Replay) -> None:
    prometheus = fake_replay.prometheus
    truth = json.loads(fake_replay.done.read_text())
    wait_for_final_scrape(prometheus, int(sum(truth["decisions"].values())))

    window_rate = prometheus.values("last_over_time(avminer_mining_rate_ratio[5m])", by="slice")
    assert window_rate.keys() == truth["window_rate"].keys()
    for slice_key, expected in truth["window_rate"].items():
        assert math.isclose(window_rate[slice_key], expected, rel_tol=1e-9), slice_key
    # The fleet-wide rate the dashboard and the alert rules compute from the decision counters.
    fleet_rate = prometheus.values(FLEET_RATE, by="slice")
    for slice_key, decided in truth["decisions"].items():
        assert math.isclose(fleet_rate[slice_key], truth["mined"][slice_key] / decided, rel_tol=1e-9), slice_key
    targets = prometheus.values("last_over_time(avminer_mining_target_ratio[5m])", by="slice")
    assert set(targets) == set(truth["decisions"])


def test_dashboard_queries_and_alert_rules_run_on_real_series(fake_replay: Replay) -> None:
    prometheus = fake_replay.prometheus
    wait_until(lambda: bool(prometheus.query("avminer_decisions_total")), 30, "a scrape", prometheus.service.log)
    for expr in deploy_files.dashboard_exprs(grafana_defaults=True):
        prometheus.query(expr)  # raises PrometheusQueryError on a query Prometheus rejects

    def rules_evaluated() -> bool:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return bool(rules) and all(r["health"] != "unknown" for r in rules)

    wait_until(rules_evaluated, 30, "an evaluation of every rule", prometheus.service.log)
    bad = {r["name"]: r.get("lastError") for g in prometheus.api("rules")["groups"] for r in g["rules"]
           if r["health"] != "ok"}
    assert not bad
    # The stand-in raises the drift alarm on the night slice: the rule sees it (pending: it needs 15m).
    wait_until(lambda: any(a["labels"]["alertname"] == "AvminerDriftAlarm" for a in prometheus.api("alerts")["alerts"]),
               30, "the drift alarm rule to see the night slice", prometheus.service.log)
    alerts = prometheus.api("alerts")["alerts"]
    assert {a["labels"].get("slice") for a in alerts if a["labels"]["alertname"] == "AvminerDriftAlarm"} == {
        "night/fog/cambridge_uk"}


# -- the real `avminer mine` (embedded mode, the bundled sample drive) -------------------------------

def miner_bundle(workdir: Path) -> Path:
    """The starter bundle when it is there, else a tiny random-weight ensemble exported for the test."""
    from avminer.engines import default_bundle_path

    starter = Path(default_bundle_path())
    if (starter / "manifest.json").exists():
        return starter
    from avminer.engines.export import export_bundle
    from avminer.models import build_ensemble, erfnet_arch

    arch = erfnet_arch(width=0.25, members=2)
    export_bundle(build_ensemble(arch, seed=1), arch, workdir / "bundle", version="deploy-test",
                  classes=[f"class{i}" for i in range(11)], void_index=11, input_hw=(32, 48),
                  mean=tuple(arch["mean"]), std=tuple(arch["std"]), check=False)
    return workdir / "bundle"


@pytest.fixture(scope="module")
def real_replay(tmp_path_factory: pytest.TempPathFactory, sample_drive: Path) -> Iterator[tuple[Replay, Path]]:
    workdir = tmp_path_factory.mktemp("real-replay")
    bundle = miner_bundle(workdir)
    port = free_port()
    out = workdir / "out"
    # Settings come from this environment only (no AVMINER_* of the caller leaks in); a short warm-up
    # and no camera cooldown so a 200-frame replay mines something.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVMINER_")}
    env.update(AVMINER_METRICS__ADDRESS=LOOPBACK, AVMINER_METRICS__PORT=str(port),
               AVMINER_SELECTION__WARMUP_FRAMES="20", AVMINER_SELECTION__TARGET_RATE="0.1",
               AVMINER_SELECTION__CAMERA_COOLDOWN_S="0")
    cmd = [sys.executable, "-m", "tests.deploy.run_miner", str(workdir / "done"), "--",
           "mine", "--drive-log", str(sample_drive), "--output", str(out), "--bundle", str(bundle),
           "--frames", "200", "--repeat", "--json"]
    with replay_scraped_by_prometheus(workdir, cmd, port, env) as replay:
        wait_for_end_of_replay(replay, 240)
        yield replay, out


def test_real_miner_mining_rate_per_slice_through_prometheus(real_replay: tuple[Replay, Path]) -> None:
    replay, out = real_replay
    assert replay.done.read_text() == "0", replay.miner.log.read_text()[-3000:]
    decisions = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    decided = Counter(d["slice"] for d in decisions)
    mined = Counter(d["slice"] for d in decisions if d["mined"])
    assert len(decisions) == 200 and len(decided) >= 2  # the sample drive has day and dusk frames

    wait_for_final_scrape(replay.prometheus, len(decisions))
    rate = replay.prometheus.values(FLEET_RATE, by="slice")
    assert rate.keys() == decided.keys()
    for slice_key, n in decided.items():
        assert math.isclose(rate[slice_key], mined[slice_key] / n, rel_tol=1e-9, abs_tol=0), slice_key
    frames_in = replay.prometheus.values("sum(last_over_time(avminer_frames_in_total[5m]))", by="")
    assert frames_in[""] == len(decisions)
