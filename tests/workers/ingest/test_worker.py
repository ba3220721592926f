"""The ingest worker against the real embedded broker: dead letters, conservation, kill -9 safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from prometheus_client import CollectorRegistry

from schemas.dlq import DeadLetter
from schemas.headers import get_header
from workers.infra.generations import ClickTopic, parse_generation
from workers.infra.kafka import ensure_topics, make_admin, make_producer
from workers.ingest.metrics import IngestMetrics
from workers.ingest.state_reader import Cursor, StateReader
from workers.ingest.worker import BatchOutcome, IngestWorker
from workers.settings import KafkaSettings

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
    generation_s: float | None = None,
    generation_retire_s: float = 60.0,
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
        generation_s=generation_s,
        generation_retire_s=generation_retire_s,
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
    command = [sys.executable, "-m", "workers.ingest.worker", "--bootstrap", str(conf["bootstrap.servers"])]
    command += ["--state-dir", str(state_dir), "--topic", topic, "--dlq-topic", f"{topic}.dlq"]
    command += ["--group", f"{topic}-ingest", "--session-timeout-ms", str(SESSION_MS)]
    command += ["--batch-size", "500", "--batch-timeout-s", "0.1", "--dlq-flush-timeout-s", "10"]
    command += ["--stats-interval-ms", "0"]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))


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
        assert producer.flush(10) == 0

    log = tmp_path / "worker.log"
    state = tmp_path / "state"
    feeder = threading.Thread(target=produce)
    first = _start(conf, topic_name, state, log)
    feeder.start()
    reader = StateReader(state, topic_name)
    try:
        seen = _wait_count(reader, 3000, 20, first)
        producing = feeder.is_alive()
        first.send_signal(signal.SIGKILL)
        first.wait(5)
        feeder.join(30)
        assert producing and 3000 <= seen < total, f"killed after {seen} events"
        second = _start(conf, topic_name, state, log)
        try:
            assert _wait_count(reader, total, 40, second) == total, log.read_text()[-3000:]
            time.sleep(0.5)  # nothing more trickles in
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0, log.read_text()[-3000:]
        events, _ = reader.events_since(Cursor())
        assert len(events) == total
        assert {e.event_id for e in events} == {f"ev-{n}" for n in range(total)}
    finally:
        reader.close()


def _gen_worker(conf: dict[str, str | int], topic: str, state_dir: Path, period_s: float) -> IngestWorker:
    return _worker(
        conf,
        topic,
        state_dir,
        CollectorRegistry(),
        batch_size=64,
        batch_timeout_s=0.1,
        stats_interval_ms=0,
        generation_s=period_s,
        generation_retire_s=0.5,
    )


def _listed(conf: dict[str, str | int], topic: str) -> set[int]:
    topics = make_admin(conf).list_topics(timeout=10).topics
    return {g for t in topics if (g := parse_generation(topic, t)) is not None}


def test_click_generations_are_applied_once_then_deleted_across_a_restart(
    kafka_settings: KafkaSettings, topic_name: str, tmp_path: Path
) -> None:
    """Clicks written to rotating generations (the embedded broker's mode) and to the topic itself all
    land in the topic's state file exactly once; drained generations are deleted; a restarted worker
    resumes each generation from the state file (nothing re-applied)."""
    period_s = 1.0
    conf = kafka_settings.client_config()
    ensure_topics(conf, [topic_name, f"{topic_name}.dlq"])
    target = ClickTopic(conf, topic_name, period_s)
    producer = make_producer(conf, target.producer_overrides())
    used: set[str] = set()

    def send(first: int, last: int) -> None:
        for n in range(first, last):
            key, value = _click(n)
            topic = target()
            used.add(topic)
            producer.produce(topic, key=key, value=value)
            if n % 50 == 49:
                assert producer.flush(10) == 0
                time.sleep(0.2)  # ~4 generations per 800 clicks
        assert producer.flush(10) == 0

    def run_until(worker: IngestWorker, count: int, retired: int) -> list[BatchOutcome]:
        outcomes = []
        deadline = time.monotonic() + 60
        with StateReader(tmp_path, topic_name) as reader:
            while (
                reader.event_count() < count or worker.generations_retired < retired
            ) and time.monotonic() < deadline:
                outcomes.append(worker.run_once())
            assert reader.event_count() == count, "clicks of some generation were not applied"
        assert worker.generations_retired >= retired, "drained generations were never retired"
        return outcomes

    worker = _gen_worker(conf, topic_name, tmp_path, period_s)
    try:
        send(0, 800)
        for n in range(800, 820):  # a producer that writes to the topic itself is still read
            key, value = _click(n)
            producer.produce(topic_name, key=key, value=value)
        assert producer.flush(10) == 0
        first = run_until(worker, 820, retired=2)
    finally:
        worker.close()
    assert len(used) >= 3, "the clicks did not span generations"
    assert sum(o.applied for o in first) == 820 and sum(o.duplicates for o in first) == 0
    send(820, 1000)  # while no worker runs
    worker = _gen_worker(conf, topic_name, tmp_path, period_s)
    try:
        second = run_until(worker, 1000, retired=1)
        time.sleep(period_s + 1.0)  # every generation used is over, drained and past its retirement
        deadline = time.monotonic() + 20
        while (
            _listed(conf, topic_name) & {parse_generation(topic_name, t) for t in used} and time.monotonic() < deadline
        ):
            second.append(worker.run_once())
    finally:
        worker.close()
    assert sum(o.applied for o in second) == 180
    assert sum(o.duplicates for o in second) == 0, "a restarted worker re-read what it had applied"
    leftover = _listed(conf, topic_name) & {parse_generation(topic_name, t) for t in used}
    assert not leftover, f"generations never deleted: {sorted(leftover)}"
    with StateReader(tmp_path, topic_name) as reader:
        assert reader.history(1, 2) == [874, 971]  # user 1 clicked n = ..., 873, 970 (through generations)
    assert sorted(p.name for p in (tmp_path / "ingest").glob("*.sqlite")) == [f"{topic_name}-p0.sqlite"]
