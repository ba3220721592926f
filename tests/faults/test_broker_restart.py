"""The embedded broker killed (``kill -9``) and restarted on its own storage while an ingest worker runs.
Apache Kafka keeps its log: topics, messages (also those produced while the worker was stopped and never
consumed) and committed offsets survive; the worker reconnects by itself, and every event is applied
exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.codec import encode
from schemas.messages import ClickEvent
from tests.faults.conftest import Names, Worker, wait_until, worker_env
from workers.infra.kafka import ensure_topics, make_admin, make_producer
from workers.infra.kafka_broker import KafkaCluster
from workers.ingest.state_reader import Cursor, StateReader

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaCluster]:
    with KafkaCluster(tmp_path / "kafka") as broker:
        yield broker


def _produce(bootstrap: str, topic: str, first: int, n: int) -> None:
    producer = make_producer({"bootstrap.servers": bootstrap})
    for i in range(first, first + n):
        event = ClickEvent(event_id=f"ev-{i}", user_id=i % 31 + 1, item_id=i % 500 + 1, ts=i)
        producer.produce(topic, encode(event), key=event.kafka_key())
    assert producer.flush(30) == 0


def test_broker_kill_9_keeps_its_log_and_ingest_reconnects_applying_each_event_once(
    own_broker: KafkaCluster, tmp_path: Path, workers: list[Worker]
) -> None:
    names = Names()
    env = worker_env(tmp_path / "state", names, bootstrap=own_broker.bootstrap)
    topic, dlq = env["MINDSTREAM_KAFKA__CLICKS_TOPIC"], env["MINDSTREAM_KAFKA__CLICKS_DLQ_TOPIC"]
    conf = {"bootstrap.servers": own_broker.bootstrap}
    ensure_topics(conf, [topic, dlq], partitions=2)
    worker = Worker.cli("ingest", env, tmp_path / "ingest.log").start()
    workers.append(worker)
    with StateReader(tmp_path / "state", topic) as reader:
        _produce(own_broker.bootstrap, topic, 0, 400)
        wait_until(lambda: reader.event_count() == 400, 60, f"the first 400 events ({worker.tail()})")

        own_broker.kill(1)  # kill -9 while the worker is connected and polling
        own_broker.restart(1)  # same storage, same ports
        worker.assert_alive()
        assert len(make_admin(conf).list_topics(timeout=10).topics[topic].partitions) == 2  # the topic survived
        _produce(own_broker.bootstrap, topic, 400, 400)
        wait_until(lambda: reader.event_count() == 800, 90, f"the 400 events after the restart ({worker.tail()})")

        assert worker.stop() == 0, worker.tail()
        _produce(own_broker.bootstrap, topic, 800, 200)  # acknowledged, never consumed before the next kill
        own_broker.kill(1)
        own_broker.restart(1)
        worker.start()
        wait_until(lambda: reader.event_count() == 1000, 90, f"the clicks produced while it was down ({worker.tail()})")
        assert worker.stop() == 0, worker.tail()
        events, _ = reader.events_since(Cursor())
        assert sorted(int(e.event_id[3:]) for e in events) == list(range(1000)), "lost or duplicated events"
