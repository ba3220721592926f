"""Kafka's metrics in the compose stack: the JMX exporter agent of ``docker-compose.yml`` with
``ops/kafka/jmx-exporter.yml``, run for real in an Apache Kafka broker of the version compose runs.

The agent jar is the artifact compose's one-shot ``kafka-jmx-agent`` fetches (Maven, by its coordinates),
checked against the SHA-256 pinned there; the broker is the embedded one (``workers.infra.kafka_broker``)
with the agent added to its JVM as ``KAFKA_OPTS`` adds it in the image. Then every ``kafka_*`` series the
alert rules and the Grafana dashboard use must be in the scrape.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
import types
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer

from tests.fixtures_milvus import free_port
from tests.required_tools import missing_tool
from workers.infra.kafka_broker import KafkaCluster
from workers.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CONFIG = ROOT / "ops" / "kafka" / "jmx-exporter.yml"
RULES = ROOT / "ops" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "mindstream.json"
KAFKA_SERIES = re.compile(r"\bkafka_[a-z0-9_]+\b")
DEADLINE_S = 90.0


def _agent_coordinates() -> tuple[str, str]:
    env = yaml.safe_load(COMPOSE.read_text())["services"]["kafka-jmx-agent"]["environment"]
    return str(env["JMX_AGENT"]), str(env["JMX_AGENT_SHA256"])


@pytest.fixture(scope="module")
def agent_jar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent as compose's one-shot gets it: Maven by coordinates, then the pinned SHA-256."""
    mvn = shutil.which("mvn")
    if mvn is None:
        missing_tool("java", "Maven not on PATH (CI installs it with Java for the embedded broker)")
    artifact, sha256 = _agent_coordinates()
    out = tmp_path_factory.mktemp("jmx-agent")
    proc = subprocess.run(
        [
            mvn,
            "-B",
            "-q",
            "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy",
            f"-Dartifact={artifact}",
            f"-DoutputDirectory={out}",
            "-Dmdep.stripVersion=true",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    jar = out / "jmx_prometheus_javaagent.jar"
    assert hashlib.sha256(jar.read_bytes()).hexdigest() == sha256, "the SHA-256 pinned in compose is wrong"
    return jar


@pytest.fixture(scope="module")
def broker_metrics(agent_jar: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(metrics URL, bootstrap) of a broker of compose's Kafka version with the agent in its JVM."""
    port = free_port()
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka-jmx"), version=KafkaSettings().embedded_version)
    node = cluster.members[0]
    plain_java = node.java

    def java_with_agent(self: object, main: str, *args: str, heap_mb: int) -> list[str]:
        command = plain_java(main, *args, heap_mb=heap_mb)
        if main == "kafka.Kafka":  # the broker only: the storage tool is a second JVM (compose empties it there)
            command.insert(command.index("-cp"), f"-javaagent:{agent_jar}=127.0.0.1:{port}:{CONFIG}")
        return command

    node.java = types.MethodType(java_with_agent, node)  # type: ignore[method-assign]
    with cluster:
        yield f"http://127.0.0.1:{port}/metrics", cluster.bootstrap


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        body: bytes = resp.read()
    return body.decode()


def _wait_for(url: str, needed: set[str]) -> str:
    """The scrape once it has every series name in ``needed`` (names appear as the broker starts up)."""
    deadline = time.monotonic() + DEADLINE_S
    text = ""
    while time.monotonic() < deadline:
        text = _scrape(url)
        if needed <= _names(text):
            return text
        time.sleep(0.5)
    pytest.fail(f"missing after {DEADLINE_S} s: {sorted(needed - _names(text))}")


def _names(text: str) -> set[str]:
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def _used_series() -> set[str]:
    rules = RULES.read_text()
    exprs = " ".join(t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", []))
    return set(KAFKA_SERIES.findall(rules)) | set(KAFKA_SERIES.findall(exprs))


def test_alerts_and_dashboard_read_kafka_series() -> None:
    used = _used_series()
    assert "kafka_server_replicamanager_underreplicatedpartitions" in used
    assert any(name.endswith("_total") for name in used), "the dashboard shows a broker rate"


def test_the_agent_exports_what_alerts_and_dashboard_use(broker_metrics: tuple[str, str]) -> None:
    url, bootstrap = broker_metrics
    topic = f"jmx-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        producer.produce(topic, value=f"m{i}".encode())
    assert producer.flush(30) == 0
    text = _wait_for(url, _used_series() | {"kafka_controller_kafkacontroller_activecontrollercount"})
    assert re.search(rf'^kafka_server_brokertopicmetrics_messagesin_total\{{.*topic="{topic}".*\}} 10\.0$', text, re.M)
    assert re.search(r"^kafka_controller_kafkacontroller_activecontrollercount(\{[^}]*\})? 1\.0$", text, re.M)
    assert re.search(r"^kafka_server_replicamanager_underreplicatedpartitions(\{[^}]*\})? 0\.0$", text, re.M)
    assert "jvm_memory_used_bytes" in _names(text), "the agent's JVM metrics"
