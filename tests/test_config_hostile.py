"""Hostile settings: every out-of-range field named at load, secrets masked wherever printed or logged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from avminer.cli.main import main
from avminer.config import load_settings, mask_url
from avminer.errors import ConfigError

BAD: list[tuple[str, str, str]] = [
    ("AVMINER_SELECTION__HOURLY_BUDGET", "-5", "selection.hourly_budget"),
    ("AVMINER_SCORING__DRIFT_WINDOW", "0", "scoring.drift_window"),
    ("AVMINER_SELECTION__MEMORY_SIZE", "-1", "selection.memory_size"),
    ("AVMINER_SELECTION__DUPLICATE_SIMILARITY", "nan", "selection.duplicate_similarity"),
    ("AVMINER_SELECTION__DUPLICATE_SIMILARITY", "inf", "selection.duplicate_similarity"),
    ("AVMINER_SELECTION__TARGET_RATE", "nan", "selection.target_rate"),
    ("AVMINER_DECODE__WORKERS", "-3", "decode.workers"),
    ("AVMINER_SCORING__GRID", "0", "scoring.grid"),
    ("AVMINER_ENGINE__THREADS", "-4", "engine.threads"),
    ("AVMINER_SELECTION__SLICE_RATES", "[1", "selection.slice_rates"),
    ("AVMINER_SELECTION__SLICE_RATES", "[1, 2]", "selection.slice_rates"),
    ("AVMINER_SELECTION__SLICE_RATES", "{a: nan}", "selection.slice_rates.a"),
    ("AVMINER_SELECTION__SCORE_WEIGHTS", "{mi: -1}", "selection.score_weights.mi"),
    ("AVMINER_SCORING__REGIONS", "{x: [1, 2]}", "scoring.regions.x"),
    ("AVMINER_DECODE__MAX_PIXELS", "1e400", "decode.max_pixels"),
    ("AVMINER_DECODE__MAX_BYTES", "0", "decode.max_bytes"),
    ("AVMINER_DECODE__IMAGE_ROOTS", "{a: 1}", "decode.image_roots"),
    ("AVMINER_SINKS__API_PORT", "99999", "sinks.api_port"),
    ("AVMINER_METRICS__PORT", "-1", "metrics.port"),
    ("AVMINER_KAFKA__MAX_POLL_RECORDS", "0", "kafka.max_poll_records"),
    ("AVMINER_KAFKA__EXTRA", "[oops", "kafka.extra"),
    ("AVMINER_TRAINER__LR", "-1e-3", "trainer.lr"),
    ("AVMINER_TRAINER__BATCH_SIZE", "0", "trainer.batch_size"),
    ("AVMINER_SHUTDOWN_DEADLINE_S", "nan", "shutdown_deadline_s"),
    ("AVMINER_LOG_LEVEL", "LOUD", "log_level"),
]


@pytest.mark.parametrize(("key", "value", "field"), BAD)
def test_out_of_range_values_name_their_field(key: str, value: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={key: value})
    assert info.value.field == field and "\n" not in str(info.value)


def test_a_non_utf8_config_file_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"log_level: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(cfg, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path, environ={})  # a directory


SECRET_URL = "postgresql://miner:hunter2@db.example:5432/avminer"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (SECRET_URL, "postgresql://miner:***@db.example:5432/avminer"),
        ("sqlite:////tmp/c.db", "sqlite:////tmp/c.db"),
        ("postgresql://miner@db/avminer", "postgresql://miner@db/avminer"),
        ("see postgres://a:b@h/x and s3://k:s@h/b", "see postgres://a:***@h/x and s3://k:***@h/b"),
        ("postgresql://u:p:w@h/d", "postgresql://u:***@h/d"),
    ],
)
def test_mask_url(text: str, masked: str) -> None:
    assert mask_url(text) == masked


def test_config_show_masks_every_secret(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AVMINER_SINKS__CATALOG_URL": SECRET_URL,
        "AVMINER_KAFKA__EXTRA": "{sasl_oauth_token_provider: tok-123, ssl_password: pw-456, api_key: key-789, "
                                "request_timeout_ms: 30000}",
        "AVMINER_KAFKA__SASL_PLAIN_PASSWORD": "pw-000",
        "AVMINER_SINKS__S3__SECRET_ACCESS_KEY": "s3-111",
    }.items():
        monkeypatch.setenv(key, value)
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    for secret in ("hunter2", "tok-123", "pw-456", "key-789", "pw-000", "s3-111"):
        assert secret not in out
    assert "request_timeout_ms: 30000" in out  # not a secret: shown
    assert "miner:***@db.example" in out


def test_log_level_is_applied(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("log_level: ERROR\n")
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    root.handlers.clear()
    try:
        assert main(["-c", str(cfg), "config", "show"]) == 0
        assert root.level == logging.ERROR
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
