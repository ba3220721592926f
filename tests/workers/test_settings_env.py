"""``Settings.to_env``: the environment it renders loads back into the same settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from workers.settings import ENV_PREFIX, Settings


def _load(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_defaults_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _load({}, monkeypatch)
    env = settings.to_env()
    assert env["MINDSTREAM_KAFKA__CLICKS_TOPIC"] == "clicks" and env["MINDSTREAM_MILVUS__URI"] == "null"
    assert all(key.startswith(ENV_PREFIX) for key in env)
    assert _load(env, monkeypatch) == settings


def test_every_kind_of_field_round_trips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = _load({"MINDSTREAM_DATA__DATASET": "synthetic"}, monkeypatch)
    settings = base.model_copy(
        update={
            "state_dir": tmp_path / "state",  # a path
            "log_level": "DEBUG",  # a literal
            "heartbeat_timeout_s": 12.5,  # a float
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": "h:1", "sasl_password": SecretStr("s3")}),
            "milvus": base.milvus.model_copy(update={"embedded_config": {"proxy.timeTickInterval": 100, "a.b": "x"}}),
            "ingest": base.ingest.model_copy(
                update={
                    "dedupe_window": None,  # None over a non-None default
                    "retention": base.ingest.retention.model_copy(update={"enabled": False, "history": 7}),
                }
            ),
            "recall": base.recall.model_copy(update={"reply_to_allowed": ["x.", "y"], "metrics_port": 9999}),
            "http": base.http.model_copy(update={"read_token": SecretStr("r"), "ui_metrics": {"ingest": "u"}}),
            "mind": base.mind.model_copy(update={"dim": 16}),
        }
    )
    env = settings.to_env()
    assert env["MINDSTREAM_INGEST__RETENTION__ENABLED"] == "false"
    assert env["MINDSTREAM_KAFKA__SASL_PASSWORD"] == "s3"  # the worker needs the secret itself
    loaded = _load(env, monkeypatch)
    assert loaded.model_dump() == settings.model_dump()
    assert loaded.kafka.sasl_password is not None and loaded.kafka.sasl_password.get_secret_value() == "s3"
    assert loaded.ingest.dedupe_window is None and loaded.milvus.embedded_config["proxy.timeTickInterval"] == 100
    assert loaded.mind.k_max == settings.mind.k_max  # rendered, not recomputed from the data set


def test_from_env_reads_the_mapping_not_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINDSTREAM_KAFKA__CLICKS_TOPIC", "from-the-process")
    loaded = Settings.from_env({"MINDSTREAM_KAFKA__RECALL_GROUP": "g", "MINDSTREAM_MILVUS__URI": "null"})
    assert loaded.kafka.recall_group == "g" and loaded.kafka.clicks_topic == "clicks" and loaded.milvus.uri is None
    assert Settings().kafka.clicks_topic == "from-the-process"  # the process's environment as before
    assert Settings.from_env(loaded.to_env()) == loaded
