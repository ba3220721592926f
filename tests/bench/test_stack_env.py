"""What the benchmark stack's settings take from the ``--env`` it gives the workers: the workers and this
process (its topics, its embedded servers, its searches) see the same settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.stack import StackConfig, stack_settings
from workers.settings import Settings


def test_env_entries_reach_this_process_and_the_workers_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINDSTREAM_RECALL__MAX_BATCH", "32")  # this process's environment, under the stack's
    monkeypatch.setenv("MINDSTREAM_MILVUS__INDEX_TYPE", "FLAT")  # ... which the stack's own choice overrides
    env = {
        "MINDSTREAM_KAFKA__CLICKS_RETENTION_MS": "1728000",
        "MINDSTREAM_KAFKA__CLICKS_RETENTION_BYTES": "-1",
        "MINDSTREAM_MILVUS__EMBEDDED_CONFIG": '{"rocksmq.retentionTimeInMinutes": 30}',
        "MINDSTREAM_REFRESH__INTERVAL_S": "120",  # cfg.env over the stack's choice (refresh_interval_s)
        "MINDSTREAM_RECALL__METRICS_PORT": "19999",
    }
    settings = stack_settings(StackConfig(env=env, refresh_interval_s=10.0, train_batches=7), tmp_path, "tok")
    assert (settings.kafka.clicks_retention_ms, settings.kafka.clicks_retention_bytes) == (1_728_000, -1)
    assert settings.milvus.embedded_config == {"rocksmq.retentionTimeInMinutes": 30}
    assert settings.milvus.index_type == "HNSW" and settings.recall.max_batch == 32
    assert settings.refresh.interval_s == 120.0 and settings.refresh.train_batches == 7
    assert settings.recall.metrics_port == 19999 and settings.data.dataset == "synthetic"
    assert settings.http.read_token is not None and settings.http.read_token.get_secret_value() == "tok"
    assert settings.state_dir == (tmp_path / "state").resolve()
    assert Settings.from_env(settings.to_env()) == settings  # what the workers load


def test_ports_are_free_ones_unless_the_env_fixes_them(tmp_path: Path) -> None:
    defaults = Settings.from_env({})
    picked = stack_settings(StackConfig(), tmp_path, "t")
    assert picked.kafka.embedded_port != defaults.kafka.embedded_port  # beside a running `mindstream up`
    assert picked.http.port != defaults.http.port and picked.milvus.embedded_port != defaults.milvus.embedded_port
    fixed = stack_settings(StackConfig(env={"MINDSTREAM_HTTP__PORT": "18080"}), tmp_path, "t")
    assert fixed.http.port == 18080
