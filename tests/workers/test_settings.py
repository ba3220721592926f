"""``KafkaSettings.client_config()`` renders librdkafka's keys; the environment fills nested sections."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from workers.settings import KafkaSettings, Settings


def test_plaintext_defaults() -> None:
    settings = KafkaSettings(bootstrap_servers="k1:9092")
    assert settings.client_config() == {"bootstrap.servers": "k1:9092", "security.protocol": "PLAINTEXT"}
    assert settings.client_config("other:1")["bootstrap.servers"] == "other:1"


def test_no_bootstrap_is_an_error() -> None:
    with pytest.raises(ValueError, match="no bootstrap servers"):
        KafkaSettings().client_config()


def test_sasl_ssl_password_is_secret() -> None:
    settings = KafkaSettings(
        bootstrap_servers="k1:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password=SecretStr("hunter2"),
        ssl_ca_location=Path("/etc/ssl/ca.pem"),
    )
    conf = settings.client_config()
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "svc"
    assert conf["sasl.password"] == "hunter2"
    assert conf["ssl.ca.location"] == "/etc/ssl/ca.pem"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    assert "hunter2" not in settings.model_dump_json()


def test_ssl_locations() -> None:
    settings = KafkaSettings(
        bootstrap_servers="k1:9093",
        security_protocol="SSL",
        ssl_ca_location=Path("/ca.pem"),
        ssl_certificate_location=Path("/client.pem"),
        ssl_key_location=Path("/client.key"),
        ssl_key_password=SecretStr("keypass"),
    )
    conf = settings.client_config()
    assert conf["ssl.certificate.location"] == "/client.pem"
    assert conf["ssl.key.location"] == "/client.key"
    assert conf["ssl.key.password"] == "keypass"
    assert "sasl.mechanism" not in conf
    assert "keypass" not in repr(settings)


@pytest.mark.parametrize("missing", ["sasl_mechanism", "sasl_username", "sasl_password"])
def test_sasl_without_credentials_is_an_error(missing: str) -> None:
    fields: dict[str, object] = {
        "sasl_mechanism": "PLAIN",
        "sasl_username": "svc",
        "sasl_password": "pw",
    }
    del fields[missing]
    settings = KafkaSettings.model_validate(
        {"bootstrap_servers": "k:9092", "security_protocol": "SASL_PLAINTEXT", **fields}
    )
    with pytest.raises(ValueError, match="SASL needs"):
        settings.client_config()


def test_unknown_protocol_and_fields_are_rejected() -> None:
    with pytest.raises(ValidationError):
        KafkaSettings.model_validate({"security_protocol": "KERBEROS"})
    with pytest.raises(ValidationError):
        KafkaSettings.model_validate({"bootstrapservers": "typo:9092"})


def test_environment_fills_the_nested_kafka_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINDSTREAM_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("MINDSTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MINDSTREAM_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("MINDSTREAM_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("MINDSTREAM_KAFKA__SASL_PASSWORD", "from-env")
    monkeypatch.setenv("MINDSTREAM_KAFKA__SESSION_TIMEOUT_MS", "3000")
    monkeypatch.setenv("MINDSTREAM_KAFKA__CLICKS_TOPIC", "clicks.v1")
    kafka = Settings().kafka
    assert kafka.session_timeout_ms == 3000
    assert kafka.clicks_topic == "clicks.v1"
    assert kafka.client_config()["sasl.password"] == "from-env"
    assert kafka.client_config()["bootstrap.servers"] == "k1:9092,k2:9092"
    assert "from-env" not in repr(Settings())


def test_environment_values_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINDSTREAM_KAFKA__SESSION_TIMEOUT_MS", "10")
    with pytest.raises(ValidationError, match="session_timeout_ms"):
        Settings()


def test_interest_count_follows_the_data_set_unless_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mind.k_max`` unset: the multi-interest table's recommendation for the data set (ML-100K 1,
    the AmazonBook slice 4, anything else the field's default); set, it is kept whatever the data set."""
    from model.config import RECOMMENDED_K_MAX, MindConfig

    for name in ("MINDSTREAM_MIND__K_MAX", "MINDSTREAM_DATA__DATASET", "MINDSTREAM_DATA__PATH"):
        monkeypatch.delenv(name, raising=False)
    assert Settings().mind.k_max == RECOMMENDED_K_MAX["ml-100k"] == 1
    monkeypatch.setenv("MINDSTREAM_DATA__DATASET", "amazonbook-demo")
    assert Settings().mind.k_max == RECOMMENDED_K_MAX["amazonbook-demo"] == 4
    monkeypatch.setenv("MINDSTREAM_DATA__DATASET", "synthetic")
    assert Settings().mind.k_max == MindConfig.model_fields["k_max"].default
    monkeypatch.setenv("MINDSTREAM_DATA__DATASET", "amazonbook-demo")
    monkeypatch.setenv("MINDSTREAM_MIND__K_MAX", "2")
    assert Settings().mind.k_max == 2
    monkeypatch.setenv("MINDSTREAM_DATA__DATASET", "ml-100k")
    assert Settings().mind.k_max == 2
    assert Settings(mind=MindConfig(k_max=1), data={"dataset": "amazonbook-demo"}).mind.k_max == 1
