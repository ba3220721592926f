"""What the benchmark stack's own process takes from the ``--env`` it gives the workers."""

from __future__ import annotations

from bench.stack import section_env
from workers.settings import KafkaSettings, MilvusSettings


def test_kafka_entries_reach_the_topics_this_process_creates() -> None:
    env = {
        "MINDSTREAM_KAFKA__CLICKS_RETENTION_MS": "1728000",
        "MINDSTREAM_KAFKA__CLICKS_RETENTION_BYTES": "-1",
        "MINDSTREAM_REFRESH__INTERVAL_S": "120",
    }
    fields = section_env(env, "kafka")
    assert fields == {"clicks_retention_ms": "1728000", "clicks_retention_bytes": "-1"}
    kafka = KafkaSettings.model_validate({**fields, "bootstrap_servers": "127.0.0.1:1"})
    assert (kafka.clicks_retention_ms, kafka.clicks_retention_bytes) == (1_728_000, -1)


def test_milvus_embedded_config_is_parsed_from_json() -> None:
    env = {
        "MINDSTREAM_MILVUS__EMBEDDED_CONFIG": '{"rocksmq.retentionTimeInMinutes": 30}',
        "MINDSTREAM_MILVUS__EMBEDDED_SEARCH_NICE": "0",
        "MINDSTREAM_KAFKA__CLICKS_RETENTION_MS": "60000",
    }
    milvus = MilvusSettings.model_validate(section_env(env, "milvus"))
    assert milvus.embedded_config == {"rocksmq.retentionTimeInMinutes": 30}
    assert milvus.embedded_search_nice == 0
