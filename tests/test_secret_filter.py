"""The log filter the ``avminer`` command puts on its handlers: no secret of the settings gets through."""

from __future__ import annotations

import logging

from avminer.config import SecretFilter, load_settings

SECRETS = {
    "AVMINER_KAFKA__SASL_PLAIN_PASSWORD": "sasl-pw-1",
    "AVMINER_KAFKA__SSL_PASSWORD": "key-pw-2",
    "AVMINER_KAFKA__EXTRA": "{sasl_oauth_token_provider: tok-3, jaas: {user: u, password: nested-pw-4}, "
                            "request_timeout_ms: 30000}",
    "AVMINER_SINKS__S3__SECRET_ACCESS_KEY": "s3-secret-5",
    "AVMINER_SINKS__CATALOG_URL": "postgresql://miner:url-pw-6@db/avminer",
}


def record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("kafka.admin.client", logging.DEBUG, __file__, 1, msg, args, exc_info)


def test_every_secret_is_masked_in_messages_arguments_and_exception_text() -> None:
    secrets = SecretFilter(load_settings(environ=SECRETS))
    config = {"sasl_plain_password": "sasl-pw-1", "ssl_password": "key-pw-2", "request_timeout_ms": 30000}
    rec = record("Starting KafkaAdminClient with configuration: %s", config)
    assert secrets.filter(rec)
    assert rec.getMessage() == ("Starting KafkaAdminClient with configuration: {'sasl_plain_password': '***', "
                                "'ssl_password': '***', 'request_timeout_ms': 30000}")
    rec = record("extra %s %s %s", "tok-3", "nested-pw-4", "s3-secret-5")
    secrets.filter(rec)
    assert rec.getMessage() == "extra *** *** ***"
    try:
        raise RuntimeError("cannot connect to postgresql://miner:url-pw-6@db/avminer with key-pw-2")
    except RuntimeError as err:
        rec = record("catalog down", exc=err)
    secrets.filter(rec)
    text = logging.Formatter().format(rec)
    assert "url-pw-6" not in text and "key-pw-2" not in text
    assert "postgresql://miner:***@db/avminer with ***" in text


def test_a_record_without_secrets_is_left_as_it_is() -> None:
    secrets = SecretFilter(load_settings(environ=SECRETS))
    rec = record("joined group %s with %d partitions", "g-1", 4)
    assert secrets.filter(rec)
    assert (rec.msg, rec.args) == ("joined group %s with %d partitions", ("g-1", 4))
