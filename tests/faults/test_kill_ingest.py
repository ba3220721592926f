"""``kill -9`` of the ingest worker at seeded random points while clicks stream in: after a final
restart, every produced ``event_id`` is in the state exactly once and none is missing."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from schemas.codec import encode
from schemas.messages import ClickEvent
from tests.background import Background
from tests.faults.conftest import Names, fault_settings, kill_points, wait_until
from workers.infra.kafka import ensure_topics, make_producer
from workers.ingest.state_reader import Cursor, StateReader
from workers.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

KILLS = kill_points(seed=11, n=5, low=0.05, high=1.2)


def _more_than(reader: StateReader, count: int) -> Callable[[], bool]:
    return lambda: reader.event_count() > count


def test_ingest_kill_9_five_times_under_load_applies_every_event_exactly_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = fault_settings(tmp_path / "state", Names(), bootstrap=kafka_bootstrap)
    topic = settings.kafka.clicks_topic
    conf = settings.kafka.client_config()
    ensure_topics(conf, [topic, settings.kafka.clicks_dlq_topic], partitions=2)

    produced: list[str] = []
    feeding = True

    def feed() -> None:  # ~2,000 events/s until the kills are over, every tenth one sent twice
        producer = make_producer(conf)
        n = 0
        while feeding:
            for _ in range(200):
                event = ClickEvent(event_id=f"ev-{n}", user_id=n % 97 + 1, item_id=n % 1000 + 1, ts=n)
                producer.produce(topic, encode(event), key=event.kafka_key())
                if n % 10 == 0:
                    producer.produce(topic, encode(event), key=event.kafka_key())
                produced.append(event.event_id)
                n += 1
            producer.poll(0)
            time.sleep(0.1)
        assert producer.flush(10) == 0, "clicks never delivered"  # raised in the test by feeder.join

    # the worker as every stack starts it (no Milvus: ingest never searches); closing it stops what is left
    stack = Stack(settings, [], logs_dir=tmp_path, needs_milvus=False, wait_ready=False)
    feeder = Background(feed, "click feed")
    reader = StateReader(tmp_path / "state", topic)
    try:
        stack.start()
        feeder.start()
        for n, delay in enumerate(KILLS):
            if n:
                stack.restart("ingest", wait_ready=False)
            else:
                stack.start_worker("ingest", wait_ready=False)
            pid = stack.pids["ingest"]
            before = reader.event_count()
            # the worker is applying batches again (assigned, consuming) ...
            wait_until(_more_than(reader, before), 30, "the restarted worker to apply a batch", watch=[feeder])
            time.sleep(delay)  # ... then the kill lands at a seeded random point of its batch loop
            assert stack.pids.get("ingest") == pid, stack.log_tail("ingest")
            assert stack.kill("ingest") == -9
            assert feeder.alive(), "the kill must land while clicks are still produced"
        # clicks go on arriving while the worker is down, so the final restart has a backlog to apply
        # (without it, a worker that had caught up at the last kill would leave nothing to prove)
        backlog = len(produced) + 1000
        wait_until(lambda: len(produced) >= backlog, 30, "clicks produced while the worker is down", watch=[feeder])
        feeding = False
        feeder.join(30)
        total = len(produced)
        assert 0 < reader.event_count() < total, "the final restart must have a backlog to apply"

        stack.restart("ingest", wait_ready=False)
        wait_until(lambda: reader.event_count() >= total, 60, f"{total} events applied ({stack.log_tail('ingest')})")
        # a clean stop finishes the batch in hand and commits: whatever it redelivered is in the state now
        assert stack.stop_worker("ingest") == 0, stack.log_tail("ingest")
        events, _ = reader.events_since(Cursor())
        ids = [e.event_id for e in events]
        assert len(ids) == len(set(ids)) == total, "an event was applied twice or got lost"
        assert set(ids) == set(produced)
    finally:
        feeding = False
        reader.close()
        stack.close()
