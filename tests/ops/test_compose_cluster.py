"""``docker-compose.cluster.yml``, merged over ``docker-compose.yml`` as Compose merges them: three KRaft nodes,
replication 3 with min.insync.replicas 2, two replicas of ingest, recall and gateway.

Docker cannot run here: the two files are read (PyYAML, with Compose's ``!override`` / ``!reset`` tags) and
merged by the rules of the Compose specification ("Merge": mappings merge, sequences append, ``command``,
``entrypoint`` and ``healthcheck.test`` are replaced, ports and volumes are unique by target), then checked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.test_compose import _env, _mounts, _resolve
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "docker-compose.yml"
CLUSTER = ROOT / "docker-compose.cluster.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
BROKERS = ("kafka", "kafka-2", "kafka-3")
REPLICATED = {"ingest": 2, "recall": 2, "gateway": 2}
SINGLE = ("refresh", "trainer")
REPLACED = {"command", "entrypoint"}  # and healthcheck.test


class Override:
    """``!override`` (replace the base value) or ``!reset`` (drop it)."""

    def __init__(self, value: Any, reset: bool = False) -> None:
        self.value, self.reset = value, reset


class ComposeLoader(yaml.SafeLoader):
    pass


def _override(loader: ComposeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    return Override(loader.construct_scalar(node))


def _reset(loader: ComposeLoader, node: yaml.Node) -> Override:
    return Override(None, reset=True)


ComposeLoader.add_constructor("!override", _override)
ComposeLoader.add_constructor("!reset", _reset)


def _load(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=ComposeLoader)
    assert isinstance(data, dict)
    return data


def _unique_key(key: str, item: Any) -> str:
    if key == "ports":
        return str(item).rsplit(":", 1)[-1]  # the container port
    if key == "volumes":
        return str(item).split(":")[1]  # the target
    return repr(item)


def merge(base: Any, over: Any, path: tuple[str, ...] = ()) -> Any:
    """Compose's merge of one value of an override file over the base file's."""
    if isinstance(over, Override):
        return None if over.reset else over.value
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            merged = merge(base.get(key), value, (*path, key))
            if merged is None and isinstance(value, Override):
                out.pop(key, None)
            else:
                out[key] = merged
        return out
    if isinstance(base, list) and isinstance(over, list):
        key = path[-1] if path else ""
        if key in REPLACED or path[-2:] == ("healthcheck", "test"):
            return over
        if key in {"ports", "volumes"} and len(path) == 3:
            kept = {_unique_key(key, item): item for item in base}
            kept.update({_unique_key(key, item): item for item in over})
            return list(kept.values())
        return base + over
    return over


def test_merge_follows_compose() -> None:
    base = {"services": {"a": {"ports": ["8000:8000"], "command": ["x"], "dns": ["1"], "env": {"A": 1}}}}
    over = {"services": {"a": {"ports": Override(["8001"]), "command": ["y"], "dns": ["2"], "env": {"B": 2}}}}
    merged = merge(base, over)["services"]["a"]
    assert merged == {"ports": ["8001"], "command": ["y"], "dns": ["1", "2"], "env": {"A": 1, "B": 2}}
    assert "ports" not in merge(base, {"services": {"a": {"ports": Override(None, reset=True)}}})["services"]["a"]
    volumes = merge({"services": {"a": {"volumes": ["v:/x", "w:/y"]}}}, {"services": {"a": {"volumes": ["z:/x"]}}})
    assert volumes["services"]["a"]["volumes"] == ["z:/x", "w:/y"]


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    merged: dict[str, Any] = merge(_load(BASE), _load(CLUSTER))
    return merged


@pytest.fixture(scope="module")
def services(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svc: dict[str, dict[str, Any]] = stack["services"]
    return svc


# ------------------------------------------------------------------------------ Kafka


def test_three_kraft_nodes_one_quorum(services: dict[str, dict[str, Any]]) -> None:
    voters = {f"{i}@{name}:9093" for i, name in enumerate(BROKERS, start=1)}
    cluster_ids, advertised = set(), set()
    for i, name in enumerate(BROKERS, start=1):
        node = services[name]
        env = _env(node)
        assert node["image"] == services["kafka-init"]["image"], name
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller", name
        assert int(env["KAFKA_NODE_ID"]) == i, name
        assert set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == voters, name
        assert f"PLAINTEXT://{name}:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(","), name
        cluster_ids.add(env["CLUSTER_ID"])
        advertised |= {a for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",") if a.startswith("EXTERNAL://")}
        assert node["healthcheck"]["test"], name
        assert node.get("hostname") == name
        data = [src for src, dst in _mounts(node) if dst == "/var/lib/kafka/data"]
        assert len(data) == 1, name
    assert len(cluster_ids) == 1, "one cluster id on every node"
    assert len(advertised) == 3, "each node advertises its own host port"
    data_volumes = {src for n in BROKERS for src, dst in _mounts(services[n]) if dst == "/var/lib/kafka/data"}
    assert len(data_volumes) == 3, "a log directory per node"


def test_replication_three_min_isr_two(services: dict[str, dict[str, Any]]) -> None:
    for name in BROKERS:
        env = _env(services[name])
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == 3, name
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2, name
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 3, name
        assert int(env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == 3, name
        assert int(env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == 2, name
    script = services["kafka-init"]["command"][0]
    assert "--replication-factor 3" in script and "min.insync.replicas=2" in script
    assert set(re.findall(r"--topic\s+(\S+)", script)) == {"clicks", "clicks.dlq", "recall.requests", "recall.replies"}
    deps = services["kafka-init"]["depends_on"]
    assert all(deps[b]["condition"] == "service_healthy" for b in BROKERS)


def test_workers_know_the_cluster(services: dict[str, dict[str, Any]]) -> None:
    for name in (*REPLICATED, *SINGLE):
        env = _env(services[name])
        assert set(env["MINDSTREAM_KAFKA__BOOTSTRAP_SERVERS"].split(",")) == {f"{b}:9092" for b in BROKERS}, name
        assert env["MINDSTREAM_KAFKA__REPLICATION_FACTOR"] == "3", name
        assert env["MINDSTREAM_KAFKA__MIN_INSYNC_REPLICAS"] == "2", name
        assert env["MINDSTREAM_METRICS_HOST"] == "0.0.0.0", name  # kept from the base file
        errors = [err for var in env if var.startswith("MINDSTREAM_") and (err := _resolve(var))]
        assert not errors, errors


def test_settings_parse_the_cluster_values(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _env(services["recall"]).items():
        if key.startswith("MINDSTREAM_") and "${" not in value:
            monkeypatch.setenv(key, value)
    kafka = Settings().kafka
    assert kafka.replication_factor == 3 and kafka.min_insync_replicas == 2


def test_every_broker_is_scraped(services: dict[str, dict[str, Any]]) -> None:
    prom = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "kafka"]
    (sd,) = job["dns_sd_configs"]
    assert set(sd["names"]) == set(BROKERS)
    for name in BROKERS:
        assert f"={sd['port']}:" in _env(services[name])["KAFKA_OPTS"], name


# ------------------------------------------------------------------------------ replicas


def test_replicas(services: dict[str, dict[str, Any]]) -> None:
    for name, count in REPLICATED.items():
        assert services[name].get("deploy", {}).get("replicas") == count, name
    for name in SINGLE:
        assert services[name].get("deploy", {}).get("replicas", 1) == 1, f"{name}: one publisher only"


def test_replicas_publish_no_fixed_host_port(services: dict[str, dict[str, Any]]) -> None:
    """Two containers cannot publish one host port: a replicated service gets free ones (or none)."""
    for name in REPLICATED:
        for port in services[name].get("ports", []):
            parts = str(port).split(":")
            host_port = parts[-2] if len(parts) >= 2 else ""
            assert host_port == "", f"{name}: fixed host port in {port!r}"
    assert services["gateway"]["ports"] == ["127.0.0.1::8000"]


def test_replicas_share_the_state_volume_on_one_host(services: dict[str, dict[str, Any]]) -> None:
    """The state is still one volume (SQLite histories, model files): what the docs must say plainly."""
    for name in (*REPLICATED, *SINGLE):
        assert ("mindstream-state", "/var/lib/mindstream") in list(_mounts(services[name])), name
    header = CLUSTER.read_text().split("\nx-", 1)[0]
    assert "ONE HOST ONLY" in header and "SQLite" in header


def test_volumes_are_declared(stack: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(stack["volumes"])
    for name, service in services.items():
        for source, _ in _mounts(service):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: {source}"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def test_operations_doc_gives_the_command() -> None:
    doc = OPERATIONS.read_text()
    assert "-f docker-compose.yml -f docker-compose.cluster.yml up" in doc
    assert "docker-compose.cluster.yml up" in CLUSTER.read_text()
