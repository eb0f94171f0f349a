"""The deploy files parse, and their image names, ports, env vars and timeouts match the code's configuration."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import avminer
from avminer.config import Settings, load_settings
from avminer.errors import ConfigError
from tests.deploy import deploy_files as df

DEFAULTS = Settings()
METRICS_PORT = DEFAULTS.metrics.port
K8S_VERSION = "1.30.0"
IMAGES = {"miner": f"avminer/miner:{avminer.__version__}", "trainer": f"avminer/trainer:{avminer.__version__}"}


# -- everything parses -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [p for p in df.text_files() if p.suffix in {".yml", ".yaml"}],
                         ids=lambda p: str(p.relative_to(df.DEPLOY)))
def test_yaml_files_parse(path: Path) -> None:
    docs = df.load_yaml_docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


def test_dashboard_is_grafana_json() -> None:
    dash = json.loads(df.DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    taken: dict[tuple[int, int], str] = {}
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        overlap = {taken[c] for c in cells if c in taken}
        assert not overlap, f"{panel['title']} overlaps {overlap}"
        taken.update(dict.fromkeys(cells, panel["title"]))
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    compose = df.compose()["services"]["grafana"]
    (datasource,) = df.load_yaml_docs(df.DEPLOY / "grafana/provisioning/datasources/prometheus.yml")[0]["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    (provider,) = df.load_yaml_docs(df.DEPLOY / "grafana/provisioning/dashboards/avminer.yml")[0]["providers"]
    mounts = dict(v.split(":")[:2][::-1] for v in compose["volumes"])
    assert mounts[f"{provider['options']['path']}/avminer.json"] == "./grafana/avminer.json"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"


@pytest.mark.parametrize("doc", df.k8s_docs(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_k8s_manifests_match_the_kubernetes_schemas(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        assert doc["kind"] in {"ServiceMonitor", "PrometheusRule"}
        assert doc["spec"], "empty Prometheus operator resource"
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(df.load_yaml_docs(df.K8S / "kustomization.yaml")[0]["resources"])
    assert listed == {p.name for p in df.K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_prometheusrule_carries_the_alert_rules() -> None:
    spec = importlib.util.spec_from_file_location("sync_rules", df.DEPLOY / "sync_rules.py")
    assert spec and spec.loader
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    assert (df.K8S / "prometheusrule.yaml").read_text() == sync.render(), "run: python deploy/sync_rules.py"
    rule = df.k8s_doc("PrometheusRule", "avminer")
    assert rule["spec"]["groups"] == yaml.safe_load(df.ALERTS.read_text())["groups"]


# -- settings ------------------------------------------------------------------------------------------

def test_example_config_loads() -> None:
    settings = load_settings(df.CONFIG, environ={})
    assert not settings.embedded
    assert settings.metrics.port == METRICS_PORT


def test_k8s_configmap_config_loads(tmp_path: Path) -> None:
    text = df.k8s_doc("ConfigMap", "avminer-config")["data"]["miner.yaml"]
    settings = load_settings_text(text, {}, tmp_path / "miner.yaml")
    assert settings.metrics.port == METRICS_PORT and settings.metrics.address == "0.0.0.0"
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_plain_password is None, "secrets come from avminer-secrets, not the ConfigMap"


def load_settings_text(text: str, environ: dict[str, str], path: Path) -> Settings:
    path.write_text(text)
    return load_settings(path, environ=environ)


@pytest.mark.parametrize("name", sorted(df.env_names_anywhere()))
def test_every_avminer_env_var_maps_to_a_settings_field(name: str) -> None:
    if name == "AVMINER_CONFIG":
        return  # read by load_settings itself: the YAML file's path
    try:
        load_settings(environ={name: "1"})
    except ConfigError as exc:
        # a bad value for "1" is fine; an unknown name, or a section instead of a field, is not
        where = sorted(str(p.relative_to(df.DEPLOY)) for p in df.env_names_anywhere()[name])
        assert "unknown field" not in str(exc) and "must be a mapping" not in str(exc), f"{name} in {where}: {exc}"


def _k8s_env(container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:  # secretKeyRef / fieldRef: any string stands in for the value
            source = var["valueFrom"]
            assert set(source) & {"secretKeyRef", "fieldRef", "configMapKeyRef"}, var
            env[var["name"]] = f"from-{next(iter(source))}"
    return env


@pytest.mark.parametrize("workload", ["avminer-miner", "avminer-trainer"])
def test_k8s_pods_settings_load_with_their_env(workload: str, tmp_path: Path) -> None:
    container = df.k8s_containers(workload)
    env = _k8s_env(container)
    config_text = df.k8s_doc("ConfigMap", "avminer-config")["data"]["miner.yaml"]
    settings = load_settings_text(config_text, {k: v for k, v in env.items() if k != "AVMINER_CONFIG"},
                                  tmp_path / "miner.yaml")
    assert settings.metrics.port == METRICS_PORT and settings.metrics.address == "0.0.0.0"
    # the file the pod reads is the ConfigMap's key, mounted where AVMINER_CONFIG says
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert env["AVMINER_CONFIG"] == mount["mountPath"] and mount["subPath"] == "miner.yaml"
    # secrets come from secretKeyRef, never inline
    secret_vars = {v["name"] for v in container["env"] if "secretKeyRef" in v.get("valueFrom", {})}
    assert {"AVMINER_KAFKA__SASL_PLAIN_PASSWORD", "AVMINER_SINKS__S3__SECRET_ACCESS_KEY",
            "AVMINER_SINKS__S3__ACCESS_KEY_ID"} <= secret_vars


@pytest.mark.parametrize("service", ["miner", "trainer"])
def test_compose_services_settings_load_with_their_env(service: str) -> None:
    svc = df.compose()["services"][service]
    env = {k: str(v) for k, v in svc["environment"].items()}
    mounts = dict(v.split(":")[:2][::-1] for v in svc["volumes"])
    assert mounts[env["AVMINER_CONFIG"]] == "./config/miner.yaml"
    settings = load_settings(df.CONFIG, environ={k: v for k, v in env.items() if k != "AVMINER_CONFIG"})
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.sinks.s3.endpoint_url == "http://s3:8333"


def test_dockerfile_and_systemd_env_load() -> None:
    for path in df.DOCKERFILES.values():
        env = df.dockerfile_env(path)
        assert env["AVMINER_CONFIG"] == "/etc/avminer/miner.yaml"
        assert f"COPY deploy/config/miner.yaml {env['AVMINER_CONFIG']}" in path.read_text()
        load_settings(df.CONFIG, environ={k: v for k, v in env.items() if k.startswith("AVMINER_") and k != "AVMINER_CONFIG"})
    settings = load_settings(df.CONFIG, environ=df.env_file())
    assert settings.kafka.sasl_plain_password is not None


# -- images ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("part", ["miner", "trainer"])
def test_image_names_agree(part: str) -> None:
    image = IMAGES[part]
    svc = df.compose()["services"][part]
    assert svc["image"] == image
    assert (df.COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == df.DOCKERFILES[part]
    assert df.k8s_containers(f"avminer-{part}")["image"] == image
    text = df.DOCKERFILES[part].read_text()
    name, tag = image.split(":")
    assert f'org.opencontainers.image.title="{name}"' in text
    assert f'org.opencontainers.image.version="{tag}"' in text
    assert f"-t {image} ." in text  # the build command in the header


@pytest.mark.parametrize("part", ["miner", "trainer"])
def test_dockerfiles_copy_files_that_exist(part: str) -> None:
    text = df.DOCKERFILES[part].read_text()
    sources = [src for line in text.splitlines() if line.startswith("COPY ") and "--from" not in line
               for src in line.split()[1:-1]]
    assert sources
    missing = [s for s in sources if not (df.REPO / s).exists()]
    if missing == ["README.md"]:
        pytest.xfail("README.md is not written yet (the lead's); pyproject's readme, so the image build needs it")
    assert not missing, f"{df.DOCKERFILES[part].name} copies files missing from the repo: {missing}"
    ignore = (df.DOCKERFILES[part].parent / f"{df.DOCKERFILES[part].name}.dockerignore").read_text()
    for src in sources:
        assert f"!{src.rstrip('/')}" in ignore.replace("/\n", "\n"), f"{src} is excluded by the .dockerignore"


def test_miner_image_is_tensorrt_and_trainer_pytorch() -> None:
    miner = df.DOCKERFILES["miner"].read_text()
    trainer = df.DOCKERFILES["trainer"].read_text()
    assert re.search(r"ARG TENSORRT_IMAGE=nvcr\.io/nvidia/tensorrt:\S+-py3", miner)
    assert '".[gpu]"' in miner
    assert re.search(r"ARG PYTORCH_IMAGE=pytorch/pytorch:\S+", trainer)
    torch_pin = re.search(r'"torch==([\d.]+)"', (df.REPO / "pyproject.toml").read_text())
    assert torch_pin and f"pytorch/pytorch:{torch_pin.group(1)}-" in trainer


def test_deployed_commands_are_avminer_commands() -> None:
    compose = df.compose()["services"]
    assert compose["miner"]["command"] == df.k8s_containers("avminer-miner")["args"] == ["mine"]
    assert compose["trainer"]["command"] == df.k8s_containers("avminer-trainer")["args"] == ["train", "serve"]
    assert 'CMD ["mine"]' in df.DOCKERFILES["miner"].read_text()
    assert 'CMD ["train", "serve"]' in df.DOCKERFILES["trainer"].read_text()
    assert df.systemd_unit()["Service"]["ExecStart"] == ["/opt/avminer/bin/avminer mine"]


# -- ports, topics, buckets --------------------------------------------------------------------------

def test_metrics_port_agrees_everywhere() -> None:
    assert load_settings(df.CONFIG, environ={}).metrics.port == METRICS_PORT
    # Kubernetes: containerPort, Service, ServiceMonitor by port name
    for workload in ("avminer-miner", "avminer-trainer"):
        ports = {p["name"]: p["containerPort"] for p in df.k8s_containers(workload)["ports"]}
        assert ports["metrics"] == METRICS_PORT
    for name in ("avminer-miner-metrics", "avminer-trainer-metrics"):
        (port,) = df.k8s_doc("Service", name)["spec"]["ports"]
        assert port["port"] == METRICS_PORT and port["targetPort"] == "metrics"
    endpoints = df.k8s_doc("ServiceMonitor", "avminer")["spec"]["endpoints"]
    assert [e["port"] for e in endpoints] == ["metrics"]
    # compose: container side of the port mapping, and what Prometheus scrapes
    compose = df.compose()["services"]
    for service in ("miner", "trainer"):
        assert any(p.endswith(f":{METRICS_PORT}") for p in compose[service]["ports"])
    scrape = yaml.safe_load(df.PROMETHEUS_YML.read_text())["scrape_configs"]
    jobs = {j["job_name"]: [t for s in j.get("static_configs", []) for t in s["targets"]] for j in scrape}
    assert jobs["avminer-miner"] == [f"miner:{METRICS_PORT}"]
    assert jobs["avminer-trainer"] == [f"trainer:{METRICS_PORT}"]
    # images
    for path in df.DOCKERFILES.values():
        assert f"EXPOSE {METRICS_PORT}" in path.read_text()
        assert df.dockerfile_env(path)["AVMINER_METRICS__PORT"] == str(METRICS_PORT)
    assert df.env_file()["AVMINER_METRICS__PORT"] == str(METRICS_PORT)


def test_compose_kafka_s3_and_topics_match_the_settings() -> None:
    services = df.compose()["services"]
    kafka_env = services["kafka"]["environment"]
    assert "PLAINTEXT://kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert "-s3.port=8333" in services["s3"]["command"]
    init = services["kafka-init"]["command"][0]
    created = dict(re.findall(r"--topic (\S+) --partitions (\d+)", init))
    assert set(created) == set(vars(DEFAULTS.topics).values()), "kafka-init must create every topic in TopicSettings"
    assert f"s3://{load_settings(df.CONFIG, environ={}).sinks.s3.bucket}" in services["s3-init"]["command"][0]


def test_miner_replicas_do_not_exceed_partitions() -> None:
    init = df.compose()["services"]["kafka-init"]["command"][0]
    match = re.search(rf"--topic {re.escape(DEFAULTS.topics.frames)} --partitions (\d+)", init)
    assert match, "kafka-init creates no frames topic"
    frames_partitions = int(match[1])
    deployment = df.k8s_doc("Deployment", "avminer-miner")
    assert deployment["spec"]["replicas"] <= frames_partitions
    assert "replicas <= partitions" in (df.K8S / "miner-deployment.yaml").read_text()


def test_miner_runs_on_gpu_nodes_with_a_disruption_budget() -> None:
    pod = df.k8s_doc("Deployment", "avminer-miner")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    pdb = df.k8s_doc("PodDisruptionBudget", "avminer-miner")
    labels = df.k8s_doc("Deployment", "avminer-miner")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


# -- shutdown deadlines --------------------------------------------------------------------------------

def test_stop_timeouts_exceed_the_shutdown_deadline() -> None:
    deadline = max(load_settings(df.CONFIG, environ={}).shutdown_deadline_s, DEFAULTS.shutdown_deadline_s)
    unit = df.systemd_unit()["Service"]
    assert unit["Restart"] == ["always"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["EnvironmentFile"] == ["/etc/avminer/miner.env"]
    assert df.seconds(unit["TimeoutStopSec"][0]) > deadline
    for workload in ("avminer-miner", "avminer-trainer"):
        pod = df.k8s_doc("Deployment", workload)["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > deadline
    for service in ("miner", "trainer"):
        svc = df.compose()["services"][service]
        assert df.seconds(svc["stop_grace_period"]) > deadline and svc["stop_signal"] == "SIGTERM"
    assert "STOPSIGNAL SIGTERM" in df.DOCKERFILES["miner"].read_text()
