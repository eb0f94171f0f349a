"""Settings: defaults, YAML, AVMINER_* overrides, errors that name the field, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from avminer.config import Secret, Settings, describe_fields, load_settings
from avminer.errors import ConfigError


def test_defaults_are_embedded_and_valid() -> None:
    s = load_settings(environ={})
    assert s.embedded
    assert s.selection.target_rate == pytest.approx(0.001)
    assert s.shutdown_deadline_s == 30.0


def test_yaml_then_env_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka:\n  bootstrap_servers: a:9092\n  group_id: g1\nbatcher:\n  max_batch: 4\n")
    s = load_settings(cfg, environ={"AVMINER_BATCHER__MAX_BATCH": "16", "AVMINER_SELECTION__SLICE_RATES": "{dusk/*/*: 0.01}"})
    assert s.kafka.group_id == "g1"
    assert s.batcher.max_batch == 16
    assert s.selection.slice_rates == {"dusk/*/*": 0.01}
    assert not s.embedded


def test_config_file_from_env(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("log_level: DEBUG\n")
    assert load_settings(environ={"AVMINER_CONFIG": str(cfg)}).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("environ", "field"),
    [
        ({"AVMINER_SELECTION__TARGET_RATE": "2"}, "selection.target_rate"),
        ({"AVMINER_BATCHER__MAX_BATCH": "many"}, "batcher.max_batch"),
        ({"AVMINER_ENGINE__BACKEND": "cuda-magic"}, "engine.backend"),
        ({"AVMINER_KAFKA__NOPE": "1"}, "kafka.nope"),
        ({"AVMINER_SELECTION__FLEET_SKETCHES": "perhaps"}, "selection.fleet_sketches"),
        ({"AVMINER_SELECTION__SLICE_RATES": "{dusk/*/*: 5}"}, "selection.slice_rates.dusk/*/*"),
    ],
)
def test_bad_values_name_the_field(environ: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ)
    assert info.value.field == field
    assert str(info.value).startswith(field)


def test_bad_yaml_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(cfg, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", environ={})


def test_secrets_are_masked_but_passed_to_clients() -> None:
    s = load_settings(
        environ={
            "AVMINER_KAFKA__BOOTSTRAP_SERVERS": "b1:9092, b2:9092",
            "AVMINER_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "AVMINER_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "AVMINER_KAFKA__SASL_PLAIN_USERNAME": "miner",
            "AVMINER_KAFKA__SASL_PLAIN_PASSWORD": "hunter2",
        }
    )
    assert isinstance(s.kafka.sasl_plain_password, Secret)
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.as_dict())
    kw = s.kafka.client_kwargs()
    assert kw["bootstrap_servers"] == ["b1:9092", "b2:9092"]
    assert kw["sasl_plain_password"] == "hunter2"
    assert kw["security_protocol"] == "SASL_SSL"


def test_client_kwargs_without_broker_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        Settings().kafka.client_kwargs()
    assert info.value.field == "kafka.bootstrap_servers"


def test_every_field_is_documented() -> None:
    rows = describe_fields()
    assert len(rows) > 40
    undocumented = [name for name, _, text in rows if not text]
    assert undocumented == []
