"""The ingest worker on the Redis backend (``state.backend = "redis"``): ``kill -9`` of the worker and of
redis-server while clicks stream in (the worker holds its batch while the server is down); after a final
restart every produced ``event_id`` is in the state exactly once, and a reader with no access to the
worker's directory sees the users' histories."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas.codec import encode
from schemas.messages import ClickEvent
from tests.background import Background
from tests.faults.conftest import Names, Worker, kill_points, wait_until, worker_env
from tests.workers.ingest.test_history_store_contract import require_redis_server
from workers.infra.kafka import ensure_topics, make_producer
from workers.infra.redis_server import RedisServer
from workers.ingest.redis_reader import RedisStateReader
from workers.ingest.state_reader import Cursor
from workers.settings import KafkaSettings, StateSettings

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

KILLS = kill_points(seed=31, n=3, low=0.05, high=1.0)
USERS = 97


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    try:
        yield server
    finally:
        server.stop()


def _more_than(reader: RedisStateReader, count: int) -> Callable[[], bool]:
    return lambda: reader.event_count() > count


def test_ingest_on_redis_survives_kill_9_of_worker_and_store(
    kafka_bootstrap: str, tmp_path: Path, workers: list[Worker], redis_server: RedisServer
) -> None:
    names = Names()
    env = worker_env(tmp_path / "ingest-state", names, bootstrap=kafka_bootstrap)
    env |= {
        "MINDSTREAM_STATE__BACKEND": "redis",
        "MINDSTREAM_STATE__REDIS_URL": redis_server.url,
        "MINDSTREAM_STATE__REDIS_TIMEOUT_S": "2",
        "MINDSTREAM_INGEST__RETRY_BACKOFF_S": "0.2",
    }
    topic = env["MINDSTREAM_KAFKA__CLICKS_TOPIC"]
    conf = KafkaSettings(bootstrap_servers=kafka_bootstrap).client_config()
    ensure_topics(conf, [topic, env["MINDSTREAM_KAFKA__CLICKS_DLQ_TOPIC"]], partitions=2)

    produced: list[ClickEvent] = []
    feeding = True

    def feed() -> None:  # ~2,000 events/s until the kills are over, every tenth one sent twice
        producer = make_producer(conf)
        n = 0
        while feeding:
            for _ in range(200):
                event = ClickEvent(event_id=f"ev-{n}", user_id=n % USERS + 1, item_id=n % 1000 + 1, ts=n)
                producer.produce(topic, encode(event), key=event.kafka_key())
                if n % 10 == 0:
                    producer.produce(topic, encode(event), key=event.kafka_key())
                produced.append(event)
                n += 1
            producer.poll(0)
            time.sleep(0.1)
        assert producer.flush(10) == 0, "clicks never delivered"

    worker = Worker.cli("ingest", env, tmp_path / "ingest.log")
    workers.append(worker)
    feeder = Background(feed, "click feed")
    reader = RedisStateReader(redis_server.url, topic, StateSettings().redis_timeout_s)
    try:
        feeder.start()
        for delay in KILLS:
            worker.start()
            before = reader.event_count()
            wait_until(_more_than(reader, before), 30, "the restarted worker to apply a batch", watch=[feeder])
            time.sleep(delay)
            worker.assert_alive()
            worker.kill9()
            assert feeder.alive(), "the kill must land while clicks are still produced"
        # the store itself: kill -9 of redis-server under a running worker, which holds its batch and
        # retries until the server is back (its append-only file replayed), then goes on
        worker.start()
        before = reader.event_count()
        wait_until(_more_than(reader, before), 30, "the worker to apply a batch before the store dies", watch=[feeder])
        time.sleep(KILLS[0])
        applied_before_store_kill = reader.event_count()
        redis_server.kill()
        wait_until(
            lambda: "state store unavailable; batch held" in worker.log_text(), 30, "the worker to hold its batch"
        )
        worker.assert_alive()
        redis_server.start()
        assert reader.event_count() >= applied_before_store_kill  # acknowledged batches survived the kill
        after_store_kill = reader.event_count()
        wait_until(_more_than(reader, after_store_kill), 30, "the same worker to apply again", watch=[feeder])
        assert "state store unavailable; batch held" in worker.log_text()
        worker.kill9()
        backlog = len(produced) + 1000
        wait_until(lambda: len(produced) >= backlog, 30, "clicks produced while the worker is down", watch=[feeder])
        feeding = False
        feeder.join(30)
        total = len(produced)
        assert 0 < reader.event_count() < total, "the final restart must have a backlog to apply"

        worker.start()
        wait_until(lambda: reader.event_count() >= total, 60, f"{total} events applied ({worker.tail()})")
        assert worker.stop() == 0, worker.tail()
        events, _ = reader.events_since(Cursor())
        ids = [e.event_id for e in events]
        assert len(ids) == len(set(ids)) == total, "an event was applied twice or got lost"
        assert set(ids) == {e.event_id for e in produced}
        for user in (1, 50, USERS):  # histories: newest last by event time, as produced
            expected = [e.item_id for e in produced if e.user_id == user][-10:]
            assert reader.history(user, 10) == expected
    finally:
        feeding = False
        reader.close()
