"""The embedded Apache Kafka broker and the client factories against it."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.admin import ConfigResource

from workers.infra.kafka import ensure_topics, make_admin, make_consumer, make_producer
from workers.infra.kafka_broker import BrokerError, KafkaCluster, NodePorts, open_kafka
from workers.infra.kafka_dist import JavaMissing, resolve_kafka
from workers.infra.ports import free_port
from workers.infra.topics import stack_topics
from workers.settings import KafkaSettings

pytestmark = pytest.mark.integration


def _consume(consumer: Consumer, n: int, timeout: float = 20.0) -> list[Message]:
    """Read ``n`` messages (the first call also waits for the group join)."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        for msg in consumer.consume(n - len(got), timeout=0.5):
            error = msg.error()
            assert error is None or error.code() == KafkaError._PARTITION_EOF, error
            if error is None:
                got.append(msg)
    assert len(got) == n, f"got {len(got)} of {n} messages"
    return got


def _produce(conf: dict[str, str | int], topic: str, n: int, start: int = 0) -> None:
    producer = make_producer(conf)
    for i in range(start, start + n):
        producer.produce(
            topic,
            key=str(i).encode(),
            value=f"v{i}".encode(),
            headers=[("seq", str(i).encode()), ("dup", b"a"), ("dup", b"b")],
        )
    assert producer.flush(10) == 0


def test_jars_come_from_the_cache_without_maven(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The session broker resolved the jars once; a later resolve finds them without asking Maven."""
    first = resolve_kafka(KafkaSettings().embedded_version)
    assert (first.libs / f"kafka_2.13-{first.version}.jar").is_file()
    assert any(p.name.startswith("log4j-slf4j-impl-") for p in first.libs.iterdir()), "no log binding: silent broker"
    java_only = tmp_path / "bin"
    java_only.mkdir()
    (java_only / "java").symlink_to(first.java)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(java_only))  # java, and no mvn
    assert resolve_kafka(first.version).libs == first.libs


def test_missing_java_names_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaMissing) as err:
        resolve_kafka(KafkaSettings().embedded_version, tmp_path / "cache")
    text = str(err.value)
    assert "Java 17+" in text and "openjdk-17-jre-headless maven" in text
    assert "MINDSTREAM_KAFKA__BOOTSTRAP_SERVERS" in text


def test_old_java_is_refused_with_the_same_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "jdk11"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(home))
    with pytest.raises(JavaMissing, match=r"found Java 11 .*openjdk-17-jre-headless"):
        resolve_kafka(KafkaSettings().embedded_version, tmp_path / "cache")


def test_missing_maven_on_first_start_names_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    java = resolve_kafka(KafkaSettings().embedded_version).java
    monkeypatch.delenv("JAVA_HOME", raising=False)
    (tmp_path / "java").symlink_to(java)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaMissing, match="needs Maven"):
        resolve_kafka(KafkaSettings().embedded_version, tmp_path / "empty-cache")


@pytest.mark.slow  # starts brokers of its own
def test_restart_on_the_same_directory_keeps_topics_messages_and_offsets(tmp_path: Path) -> None:
    ports = [NodePorts(free_port(), free_port())]
    cluster = KafkaCluster(tmp_path / "kafka", ports=ports)
    with cluster:
        pid = cluster.pid(1)
        assert pid is not None and cluster.running
        conf: dict[str, str | int] = {"bootstrap.servers": cluster.bootstrap}
        ensure_topics(conf, ["kept"], partitions=2)
        _produce(conf, "kept", 10)
        consumer = make_consumer(conf, "g-kept", session_timeout_ms=6000)
        consumer.subscribe(["kept"])
        msgs = _consume(consumer, 10)
        consumer.commit(offsets=_next_offsets(msgs), asynchronous=False)
        consumer.close()
        _produce(conf, "kept", 5, start=10)  # produced, never consumed before the stop
        assert cluster.started_in_s is not None and cluster.started_in_s < 60  # liveness, not speed
    assert not cluster.running and cluster.pid(1) is None
    assert not Path(f"/proc/{pid}").exists(), "the broker process was not reaped"
    assert "Kafka Server started" in (tmp_path / "kafka" / "logs" / "node-1.log").read_text()
    assert sorted(int(m.value()[1:]) for m in msgs) == list(range(10))
    stale = tmp_path / "kafka" / "node-1" / "tmp" / "liblz4-java-1.so"  # what a kill -9 leaves in java.io.tmpdir
    stale.write_bytes(b"x")
    with KafkaCluster(tmp_path / "kafka", ports=ports) as again:
        assert not stale.exists() and stale.parent.is_dir()  # the node's own tmp dir, emptied at each start
        conf = {"bootstrap.servers": again.bootstrap}
        assert len(make_admin(conf).list_topics(timeout=5).topics["kept"].partitions) == 2
        consumer = make_consumer(conf, "g-kept", session_timeout_ms=6000)
        consumer.subscribe(["kept"])
        rest = _consume(consumer, 5)
        consumer.close()
        assert sorted(m.value() for m in rest) == [f"v{i}".encode() for i in range(10, 15)]
    cluster.stop()  # idempotent


def test_port_in_use_is_refused(kafka_bootstrap: str, tmp_path: Path) -> None:
    host, port = kafka_bootstrap.rsplit(":", 1)
    with pytest.raises(BrokerError, match="already in use"):
        KafkaCluster(tmp_path, host=host, ports=[NodePorts(int(port), free_port())]).start()


def test_open_kafka_uses_configured_servers_without_starting_anything(tmp_path: Path) -> None:
    settings = KafkaSettings(bootstrap_servers="kafka-1:9092,kafka-2:9092")
    with open_kafka(settings, tmp_path) as bootstrap:
        assert bootstrap == "kafka-1:9092,kafka-2:9092"
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # starts brokers of its own
def test_open_kafka_starts_embedded_broker_when_unset(tmp_path: Path) -> None:
    settings = KafkaSettings(embedded_port=free_port(), embedded_controller_port=free_port())
    with open_kafka(settings, tmp_path / "kafka") as bootstrap:
        assert bootstrap == f"127.0.0.1:{settings.embedded_port}"
        assert make_admin(settings.client_config(bootstrap)).list_topics(timeout=5).brokers
    assert (tmp_path / "kafka" / "node-1" / "data" / "meta.properties").is_file()


def test_stack_topics_are_created_with_their_settings(kafka_settings: KafkaSettings, topic_name: str) -> None:
    kafka = kafka_settings.model_copy(
        update={
            "clicks_topic": f"{topic_name}-clicks",
            "clicks_dlq_topic": f"{topic_name}-dlq",
            "requests_topic": f"{topic_name}-req",
            "replies_topic": f"{topic_name}-rep",
            "items_topic": f"{topic_name}-items",
            "items_dlq_topic": f"{topic_name}-items-dlq",
            "clicks_partitions": 3,
        }
    )
    conf = kafka.client_config()
    specs = stack_topics(kafka)
    assert sorted(ensure_topics(conf, specs)) == sorted(s.name for s in specs)
    admin = make_admin(conf)
    assert len(admin.list_topics(timeout=5).topics[kafka.clicks_topic].partitions) == 3
    resources = [ConfigResource("topic", name) for name in (kafka.clicks_topic, kafka.requests_topic)]
    described = {r.name: f.result(10) for r, f in admin.describe_configs(resources).items()}
    assert described[kafka.clicks_topic]["retention.ms"].value == str(kafka.clicks_retention_ms)
    assert described[kafka.clicks_topic]["retention.bytes"].value == str(kafka.clicks_retention_bytes)
    assert described[kafka.requests_topic]["retention.ms"].value == str(kafka.request_retention_ms)
    items = ConfigResource("topic", kafka.items_topic)
    assert admin.describe_configs([items])[items].result(10)["cleanup.policy"].value == "compact"


def test_ensure_topics_is_idempotent(kafka_settings: KafkaSettings, topic_name: str) -> None:
    conf = kafka_settings.client_config()
    other = f"{topic_name}-b"
    assert sorted(ensure_topics(conf, [topic_name, other, topic_name], partitions=2)) == [topic_name, other]
    assert ensure_topics(conf, [topic_name, other], partitions=2) == []
    topics = make_admin(conf).list_topics(timeout=5).topics
    assert len(topics[topic_name].partitions) == 2


def test_hundred_messages_with_headers_round_trip_and_commit(kafka_settings: KafkaSettings, topic_name: str) -> None:
    conf = kafka_settings.client_config()
    ensure_topics(conf, [topic_name])
    _produce(conf, topic_name, 100)
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = make_consumer(conf, group, session_timeout_ms=kafka_settings.session_timeout_ms)
    try:
        consumer.subscribe([topic_name])
        msgs = _consume(consumer, 100)
        assert [m.value() for m in msgs] == [f"v{i}".encode() for i in range(100)]
        assert msgs[7].key() == b"7"
        assert msgs[7].headers() == [("seq", b"7"), ("dup", b"a"), ("dup", b"b")]
        consumer.commit(message=msgs[-1], asynchronous=False)
        committed = consumer.committed([TopicPartition(topic_name, 0)], timeout=5)
        last = msgs[-1].offset()
        assert last is not None and committed[0].offset == last + 1
    finally:
        consumer.close()


def test_restarted_consumer_resumes_after_stored_offset(kafka_settings: KafkaSettings, topic_name: str) -> None:
    """At-least-once as the workers do it: store the offset once the effect is durable; close() commits it."""
    conf = kafka_settings.client_config()
    ensure_topics(conf, [topic_name])
    _produce(conf, topic_name, 10)
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = make_consumer(conf, group, session_timeout_ms=kafka_settings.session_timeout_ms)
    try:
        first.subscribe([topic_name])
        msgs = _consume(first, 10)
        first.store_offsets(message=msgs[5])  # messages 0..5 are "done"; 6..9 are not
    finally:
        first.close()
    _produce(conf, topic_name, 5, start=10)
    second = make_consumer(conf, group, session_timeout_ms=kafka_settings.session_timeout_ms)
    try:
        second.subscribe([topic_name])
        resumed = _consume(second, 9)
        assert [m.value() for m in resumed] == [f"v{i}".encode() for i in range(6, 15)]
    finally:
        second.close()


@pytest.mark.slow  # starts brokers of its own
def test_broker_dies_with_a_killed_parent(tmp_path: Path) -> None:
    """No orphan even when the owning process is SIGKILLed (PR_SET_PDEATHSIG on Linux)."""
    if sys.platform != "linux":
        pytest.skip("parent-death signal is Linux only")
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from workers.infra.kafka_broker import KafkaCluster\n"
        "b = KafkaCluster(Path(sys.argv[1])); b.start()\n"
        "print(b.pid(1), flush=True); time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert Path(f"/proc/{child}").exists()
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child), "the broker outlived its parent"


def _next_offsets(msgs: list[Message]) -> list[TopicPartition]:
    last: dict[int, int] = {}
    for m in msgs:
        last[m.partition() or 0] = max(last.get(m.partition() or 0, -1), m.offset() or 0)
    return [TopicPartition(m.topic() or "", p, o + 1) for p, o in last.items() for m in msgs[:1]]


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a reparented zombie waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
