"""The ingest worker against the real embedded broker: dead letters, conservation, kill -9 safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from prometheus_client import CollectorRegistry

from schemas.dlq import DeadLetter
from schemas.headers import get_header
from tests.background import Background
from workers.infra.kafka import ensure_topics, make_admin, make_producer
from workers.ingest.metrics import IngestMetrics
from workers.ingest.state_reader import Cursor, StateReader
from workers.ingest.worker import BatchOutcome, IngestWorker
from workers.settings import ENV_PREFIX, KafkaSettings, Settings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]  # the repository (tests/workers/ingest/ -> root)
SESSION_MS = 6000


def _click(n: int) -> tuple[bytes, bytes]:
    user = n % 97 + 1
    body = {"event_id": f"ev-{n}", "user_id": user, "item_id": n % 1000 + 1, "ts": 1_700_000_000_000 + n}
    return str(user).encode(), json.dumps(body).encode()


MALFORMED: list[tuple[bytes | None, bytes | None, str]] = [
    (b"1", b'{"event_id": "x1", "user_id": ', "malformed JSON"),
    (b"2", b"\xff\xfe\xfa not utf-8", "not UTF-8"),
    (b"3", b'{"event_id": "x3", "user_id": "3", "item_id": 4, "ts": 5}', "user_id"),
    (b"4", b'{"event_id": "x4", "user_id": 0, "item_id": 4, "ts": 5}', "user_id"),
    (b"5", b'{"event_id": "x5", "user_id": 5, "ts": 5}', "item_id"),
    (None, None, "empty"),
]


def _read_all(conf: dict[str, str | int], topic: str, n: int, partitions: int) -> list[Message]:
    consumer = Consumer({**conf, "group.id": "reader", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    got: list[Message] = []
    deadline = time.monotonic() + 15
    while len(got) < n and time.monotonic() < deadline:
        got.extend(m for m in consumer.consume(n - len(got), 0.5) if m.error() is None)
    consumer.close()
    return got


def _worker(
    conf: dict[str, str | int],
    topic: str,
    state_dir: Path,
    registry: CollectorRegistry,
    *,
    batch_size: int = 128,
    batch_timeout_s: float = 0.2,
    stats_interval_ms: int = 200,
) -> IngestWorker:
    return IngestWorker(
        conf,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        group_id=f"{topic}-ingest",
        session_timeout_ms=SESSION_MS,
        state_dir=state_dir,
        batch_size=batch_size,
        batch_timeout_s=batch_timeout_s,
        dlq_flush_timeout_s=10.0,
        stats_interval_ms=stats_interval_ms,
        metrics=IngestMetrics(registry),
    )


def test_malformed_clicks_are_dead_lettered_and_counts_are_conserved(
    kafka_settings: KafkaSettings, topic_name: str, tmp_path: Path
) -> None:
    conf = kafka_settings.client_config()
    ensure_topics(conf, [topic_name, f"{topic_name}.dlq"], partitions=2)
    producer = make_producer(conf)
    for n in range(500):
        key, value = _click(n)
        producer.produce(topic_name, key=key, value=value)
    for n in range(0, 50, 5):  # ten re-sent events: duplicates, not new clicks
        key, value = _click(n)
        producer.produce(topic_name, key=key, value=value)
    for bad_key, bad_value, _ in MALFORMED:
        producer.produce(topic_name, key=bad_key, value=bad_value, headers=[("trace", b"t-" + (bad_key or b"none"))])
    assert producer.flush(10) == 0
    expected = 500 + 10 + len(MALFORMED)

    registry = CollectorRegistry()
    worker = _worker(conf, topic_name, tmp_path, registry)
    totals = [BatchOutcome()]
    deadline = time.monotonic() + 30
    try:
        while sum(o.consumed for o in totals) < expected and time.monotonic() < deadline:
            totals.append(worker.run_once())
    finally:
        worker.close()
    consumed = sum(o.consumed for o in totals)
    assert consumed == expected
    assert sum(o.valid for o in totals) == 510
    assert sum(o.applied for o in totals) == 500
    assert sum(o.duplicates for o in totals) == 10
    assert sum(o.dead_lettered for o in totals) == len(MALFORMED)
    sample = registry.get_sample_value
    assert sample("mindstream_clicks_consumed_total") == consumed
    assert sample("mindstream_ingest_events_applied_total") == 500
    assert sample("mindstream_ingest_duplicates_total") == 10
    assert sample("mindstream_clicks_invalid_total") == len(MALFORMED)
    assert sample("mindstream_dlq_messages_total", {"reason": "invalid_field"}) == 3
    assert sample("mindstream_ingest_batch_size_count") == len([o for o in totals if o.consumed])

    with StateReader(tmp_path, topic_name) as reader:
        assert reader.event_count() == 500
        assert reader.history(1, 3) == [292, 389, 486]  # user 1 clicked n = 0, 97, ..., 291, 388, 485

    letters = _read_all(conf, f"{topic_name}.dlq", len(MALFORMED), partitions=2)
    assert len(letters) == len(MALFORMED)
    by_key = {m.key(): m for m in letters}
    for bad_key, bad_value, reason in MALFORMED:
        msg = by_key[bad_key]
        assert msg.value() == bad_value
        letter = DeadLetter.from_headers(msg.headers())
        assert letter is not None and letter.topic == topic_name
        assert letter.reason.startswith(reason) or reason in letter.reason, letter.reason
        assert get_header(msg.headers(), "trace") == "t-" + (bad_key or b"none").decode()


def _start(conf: dict[str, str | int], topic: str, state_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python -m workers.ingest.worker`` configured only by its settings' environment."""
    settings = Settings.from_env(
        {
            "MINDSTREAM_KAFKA__BOOTSTRAP_SERVERS": str(conf["bootstrap.servers"]),
            "MINDSTREAM_STATE_DIR": str(state_dir),
            "MINDSTREAM_KAFKA__CLICKS_TOPIC": topic,
            "MINDSTREAM_KAFKA__CLICKS_DLQ_TOPIC": f"{topic}.dlq",
            "MINDSTREAM_KAFKA__INGEST_GROUP": f"{topic}-ingest",
            "MINDSTREAM_KAFKA__SESSION_TIMEOUT_MS": str(SESSION_MS),
            "MINDSTREAM_INGEST__BATCH_SIZE": "500",
            "MINDSTREAM_INGEST__BATCH_TIMEOUT_S": "0.1",
            "MINDSTREAM_INGEST__DLQ_FLUSH_TIMEOUT_S": "10",
            "MINDSTREAM_INGEST__STATS_INTERVAL_MS": "0",
        }
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)} | settings.to_env()
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "workers.ingest.worker"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
        )


def _wait_count(reader: StateReader, at_least: int, timeout: float, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        assert proc.poll() is None, "worker died"
        count = reader.event_count()
        if count >= at_least:
            return count
        time.sleep(0.05)
    return count


def test_kill_9_mid_stream_then_restart_applies_every_event_exactly_once(
    kafka_settings: KafkaSettings, topic_name: str, tmp_path: Path
) -> None:
    conf = kafka_settings.client_config()
    ensure_topics(conf, [topic_name, f"{topic_name}.dlq"], partitions=2)
    total = 20_000

    def produce() -> None:
        producer = make_producer(conf)
        for n in range(total):
            key, value = _click(n)
            producer.produce(topic_name, key=key, value=value)
            if n % 10 == 0:  # every tenth event is re-sent once
                producer.produce(topic_name, key=key, value=value)
            if n % 500 == 499:
                producer.poll(0)
                time.sleep(0.15)  # ~6 s of production: the kill lands while it goes on
        assert producer.flush(10) == 0, "clicks never delivered"  # raised in the test by feeder.join

    log = tmp_path / "worker.log"
    state = tmp_path / "state"
    feeder = Background(produce, "click producer")
    first = _start(conf, topic_name, state, log)
    feeder.start()
    reader = StateReader(state, topic_name)
    try:
        seen = _wait_count(reader, 3000, 20, first)
        feeder.check()
        producing = feeder.alive()
        first.send_signal(signal.SIGKILL)
        first.wait(5)
        feeder.join(30)
        assert producing and 3000 <= seen < total, f"killed after {seen} events"
        second = _start(conf, topic_name, state, log)
        try:
            assert _wait_count(reader, total, 40, second) == total, log.read_text()[-3000:]
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0, log.read_text()[-3000:]
        # after the clean stop (the batch in hand finished and committed) nothing more can trickle in
        events, _ = reader.events_since(Cursor())
        assert len(events) == total
        assert {e.event_id for e in events} == {f"ev-{n}" for n in range(total)}
    finally:
        reader.close()


def _apply_all(worker: IngestWorker, reader: StateReader, count: int) -> list[BatchOutcome]:
    outcomes: list[BatchOutcome] = []
    deadline = time.monotonic() + 60
    while reader.event_count() < count and time.monotonic() < deadline:
        outcomes.append(worker.run_once())
    assert reader.event_count() == count, f"{reader.event_count()} of {count} events applied"
    return outcomes


def test_a_recreated_topic_is_read_from_its_start_not_from_the_stored_offset(
    kafka_settings: KafkaSettings, topic_name: str, tmp_path: Path
) -> None:
    """The state file says offset 99 was applied; the topic is deleted and created again (offsets restart
    at 0): the worker sees its stored position beyond the log end and reads the new log from its start."""
    conf = kafka_settings.client_config()
    ensure_topics(conf, [topic_name, f"{topic_name}.dlq"])
    producer = make_producer(conf)

    def send(first: int, last: int) -> None:
        for n in range(first, last):
            key, value = _click(n)
            producer.produce(topic_name, key=key, value=value)
        assert producer.flush(10) == 0

    send(0, 100)
    with StateReader(tmp_path, topic_name) as reader:
        worker = _worker(conf, topic_name, tmp_path, CollectorRegistry(), stats_interval_ms=0)
        try:
            _apply_all(worker, reader, 100)
        finally:
            worker.close()
        admin = make_admin(conf)
        admin.delete_topics([topic_name], operation_timeout=10)[topic_name].result(10)
        deadline = time.monotonic() + 30
        while topic_name in admin.list_topics(timeout=5).topics and time.monotonic() < deadline:
            time.sleep(0.2)
        created: list[str] = []
        while not created and time.monotonic() < deadline:  # the broker may still be finishing the delete
            try:
                created = ensure_topics(conf, [topic_name])
            except Exception:
                time.sleep(0.5)
        assert created == [topic_name]
        send(100, 150)
        worker = _worker(conf, topic_name, tmp_path, CollectorRegistry(), stats_interval_ms=0)
        try:
            outcomes = _apply_all(worker, reader, 150)
        finally:
            worker.close()
    assert sum(o.applied for o in outcomes) == 50 and sum(o.duplicates for o in outcomes) == 0
