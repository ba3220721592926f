"""The embedded broker (a separate Tansu on its own port) killed and restarted while an ingest worker
runs. Tansu keeps everything in memory, so the restart loses topics, messages and committed offsets;
the ingest state (SQLite) keeps everything applied before. The worker reconnects by itself and
applies what is produced after the restart, every event exactly once. (Production Kafka keeps its
data: there a broker restart is only a reconnect.)"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.codec import encode
from schemas.messages import ClickEvent
from tests.faults.conftest import Names, Worker, wait_until, worker_env
from workers.infra.kafka import ensure_topics, make_admin, make_producer
from workers.infra.tansu import EmbeddedBroker, free_port
from workers.ingest.state_reader import Cursor, StateReader

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker("127.0.0.1", free_port(), log_path=tmp_path / "tansu.log") as broker:
        yield broker


def _produce(bootstrap: str, topic: str, first: int, n: int) -> None:
    producer = make_producer({"bootstrap.servers": bootstrap})
    for i in range(first, first + n):
        event = ClickEvent(event_id=f"ev-{i}", user_id=i % 31 + 1, item_id=i % 500 + 1, ts=i)
        producer.produce(topic, encode(event), key=event.kafka_key())
    assert producer.flush(10) == 0


def test_broker_restart_loses_its_log_keeps_the_state_and_ingest_reconnects(
    own_broker: EmbeddedBroker, tmp_path: Path, workers: list[Worker]
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

        pid = own_broker.pid
        assert pid is not None  # never os.kill(0): that is our own process group
        os.kill(pid, signal.SIGKILL)
        own_broker.stop()
        time.sleep(1.0)  # the worker notices: its connections fail, it keeps retrying
        own_broker.start()  # same port, empty memory storage
        worker.assert_alive()

        # not preserved: the topics (with their messages) and the group's committed offsets
        assert topic not in make_admin(conf).list_topics(timeout=5).topics
        ensure_topics(conf, [topic, dlq], partitions=2)  # what `mindstream ingest` does at start
        # preserved: everything applied before the restart
        assert reader.event_count() == 400

        time.sleep(3 * 2.0)  # let the consumer rejoin the new (empty) group before the new log grows
        _produce(own_broker.bootstrap, topic, 400, 400)
        wait_until(lambda: reader.event_count() == 800, 60, f"the 400 events after the restart ({worker.tail()})")
        time.sleep(0.5)
        worker.assert_alive()  # the process started before the restart never exited: it reconnected itself
        assert worker.stop() == 0, worker.tail()
        events, _ = reader.events_since(Cursor())
        assert sorted(int(e.event_id[3:]) for e in events) == list(range(800)), "lost or duplicated events"
