"""The embedded Milvus server's milvus.yaml overrides (``MilvusSettings.embedded_config``): written as given,
refused when unknown or managed by the server itself (no server is started here)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from pydantic import ValidationError

from workers.infra.milvus_config import EMBEDDED_LIMITS, EmbeddedConfig, yaml_value
from workers.settings import MilvusSettings, Settings


def _written(tmp_path: Path, overrides: Mapping[str, bool | int | float | str]) -> str:
    config = EmbeddedConfig(tmp_path, 19999, "127.0.0.1", session_ttl_s=10, overrides=overrides)
    config.resolve_storage()  # as the server does before writing: the data dir (else the working directory)
    assert Path(config.base_data_dir) == tmp_path.resolve()
    config.resolve_all_listen_ports()
    try:
        config.write_config()
    finally:
        for _, sock in config.listen_ports.values():
            if sock is not None:
                sock.close()
    return (Path(config.base_data_dir) / "configs" / "milvus.yaml").read_text(encoding="utf-8")


def test_overrides_are_written_over_the_shipped_limits(tmp_path: Path) -> None:
    overrides = {
        "queryNode.scheduler.maxReadConcurrentRatio": 2,
        "dataCoord.compaction.enableAutoCompaction": False,
        "rocksmq.retentionTimeInMinutes": 45,  # one of the shipped limits: the operator's value wins
    }
    text = _written(tmp_path, overrides)
    assert yaml_value(text, "queryNode.scheduler.maxReadConcurrentRatio") == "2"
    assert yaml_value(text, "dataCoord.compaction.enableAutoCompaction") == "false"
    assert yaml_value(text, "rocksmq.retentionTimeInMinutes") == "45"
    for key, value in EMBEDDED_LIMITS.items():  # the other limits stay
        if key not in overrides:
            assert yaml_value(text, key) == str(value), key


def test_no_overrides_write_the_shipped_limits(tmp_path: Path) -> None:
    text = _written(tmp_path, {})
    assert all(yaml_value(text, key) == str(value) for key, value in EMBEDDED_LIMITS.items())


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("queryNode.scheduler.maxReadConcurentRatio", "not in this milvus package's milvus.yaml"),  # misspelt
        ("proxy.port", "set by the embedded server itself"),
        ("queryNode.ip", "set by the embedded server itself"),
    ],
)
def test_a_key_that_would_be_ignored_or_break_the_server_is_refused(tmp_path: Path, key: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as err:
        EmbeddedConfig(tmp_path, 19999, "127.0.0.1", session_ttl_s=10, overrides={key: 1})
    assert key in str(err.value)


@pytest.mark.parametrize("value", [{"bad": 1}, {"a..b": 1}, {"a.b": [1]}, {"a.b": {"c": 1}}])
def test_the_setting_refuses_what_is_not_a_dotted_key_with_a_scalar(value: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="embedded_config"):
        MilvusSettings.model_validate({"embedded_config": value})


@pytest.fixture
def env_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MINDSTREAM_MILVUS__EMBEDDED_CONFIG", '{"queryNode.scheduler.cpuRatio": 20, "x.y": true}')
    yield


@pytest.mark.usefixtures("env_config")
def test_the_environment_takes_json() -> None:
    assert Settings().milvus.embedded_config == {"queryNode.scheduler.cpuRatio": 20, "x.y": True}


def test_the_rendered_config_puts_on_loopback_all_it_can(tmp_path: Path) -> None:
    """Every component advertises 127.0.0.1, the embedded etcd listens there (client and peer), and the
    message queue is the in-process rocksmq (no broker to listen): what Milvus 2.3 binds on every
    interface whatever its config says (gRPC and metrics) is checked on a running server."""
    text = _written(tmp_path, {})
    for component in ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode"):
        assert yaml_value(text, f"{component}.ip") == "127.0.0.1", component
    assert (yaml_value(text, "etcd.endpoints") or "").startswith("localhost:")
    assert yaml_value(text, "etcd.use.embed") == "true"
    assert yaml_value(text, "rocksmq.path")  # rocksmq: no pulsar, kafka or nats server of its own
    etcd = (tmp_path / "configs" / "embed-etcd.yaml").read_text(encoding="utf-8")
    urls = {key: yaml_value(etcd, key) for key in ("listen-client-urls", "listen-peer-urls")}
    assert all(url is not None and url.startswith("http://127.0.0.1:") for url in urls.values()), urls
