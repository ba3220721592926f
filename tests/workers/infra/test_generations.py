"""Topic generations on the real embedded broker: request and private reply topics rotate, drained ones
are deleted, and no request goes unanswered across the rotations (the engine is a stub: this is about
the Kafka path, not the search)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry

from schemas.messages import RecallReply, RecallRequest
from workers.infra.generations import (
    GenerationSource,
    generation_of,
    generation_topic,
    parse_generation,
)
from workers.infra.kafka import ensure_topics, make_admin, make_producer
from workers.infra.tansu import EmbeddedBroker, free_port
from workers.recall.client import RecallClient
from workers.recall.metrics import RecallMetrics
from workers.recall.worker import RecallWorker
from workers.runtime import StopFlag
from workers.settings import KafkaSettings, RecallSettings

pytestmark = [pytest.mark.integration]
PERIOD_S = 2.0


class _EchoEngine:
    """Answers each request with its first history as the items (what was asked is what comes back)."""

    live = None

    def warm_up(self) -> str | None:
        return None

    def answer(self, requests: Sequence[RecallRequest], started: float | None = None) -> list[RecallReply]:
        return [
            RecallReply(
                items=[list(h) for h in r.hist_item or []],
                scores=[[1.0] * len(h) for h in r.hist_item or []],
                model_version="v1",
                collection="stub",
                took_ms=0.0,
            )
            for r in requests
        ]


def test_names() -> None:
    assert generation_of(41.0, 20.0) == 2
    assert generation_topic("recall.requests", 7) == "recall.requests.g7"
    assert parse_generation("recall.requests", "recall.requests.g7") == 7
    assert parse_generation("recall.requests", "recall.requests") is None
    assert parse_generation("recall.requests", "recall.requests.abc.g7") is None


def test_requests_and_replies_rotate_without_a_lost_reply(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        requests_topic=f"gen-req-{tag}",
        replies_topic=f"gen-rep-{tag}",
        recall_group=f"gen-{tag}",
        topic_generation_s=PERIOD_S,
        generation_grace_s=0.5,
    )
    recall = RecallSettings(client_timeout_s=2.0)
    conf = kafka.client_config()
    ensure_topics(conf, [kafka.requests_topic, kafka.replies_topic])
    source = GenerationSource(
        conf,
        kafka.requests_topic,
        period_s=PERIOD_S,
        grace_s=kafka.generation_grace_s,
        serve_s=recall.client_timeout_s,
        group_id=kafka.recall_group,
        session_timeout_ms=3000,
        tick_s=0.2,
    )
    worker = RecallWorker(
        conf,
        _EchoEngine(),  # type: ignore[arg-type]
        requests_topic=kafka.requests_topic,
        replies_topic=kafka.replies_topic,
        group_id=kafka.recall_group,
        session_timeout_ms=3000,
        max_batch=16,
        max_wait_ms=0,
        reply_timeout_s=recall.client_timeout_s,
        metrics=RecallMetrics(CollectorRegistry()),
        generations=source,
        drop_late_after_ms=250,
    )
    stop = StopFlag()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    answered = 0
    try:
        with RecallClient(kafka, recall) as client:
            topics_seen = {client.reply_topic}
            began = time.monotonic()
            i = 0
            while time.monotonic() - began < 4 * PERIOD_S + recall.client_timeout_s:
                reply = client.recall(hist_item=[[i + 1]], top_k=1)  # raises on a timeout or an error reply
                assert reply.items == [[i + 1]]
                answered += 1
                topics_seen.add(client.reply_topic)
                i += 1
                time.sleep(0.02)
            assert len(topics_seen) >= 3  # the private reply topic rotated
            assert client.retired_topics >= 1  # ... and old generations were deleted
        assert source.retired >= 1  # drained request generations deleted by the consumer side
        listed = make_admin(conf).list_topics(timeout=10).topics
        left = [t for t in listed if parse_generation(kafka.requests_topic, t) is not None]
        assert len(left) <= 4  # current, next, and at most the ones still inside their serving window
        assert not [t for t in listed if t.startswith(f"{kafka.replies_topic}.")]  # close() deleted them all
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
    assert answered > 50


def test_a_retired_generation_frees_the_brokers_memory(tmp_path: Path) -> None:
    """DeleteTopics is what frees the embedded broker's memory: fill one generation, drain it, see RSS fall."""
    with EmbeddedBroker("127.0.0.1", free_port(), log_path=tmp_path / "tansu.log") as broker:
        assert broker.pid is not None
        process = psutil.Process(broker.pid)
        conf = {"bootstrap.servers": broker.bootstrap}
        source = GenerationSource(
            conf, "mem", period_s=1.0, grace_s=0.2, serve_s=0.2, group_id="mem", session_timeout_ms=3000, tick_s=0.1
        )
        try:
            gen = min(source.live)
            producer = make_producer(conf, {"compression.type": "none"})
            for i in range(40_000):
                producer.produce(generation_topic("mem", gen), b"%d" % i + b"x" * 1000)
                producer.poll(0)
            assert producer.flush(30) == 0
            full = process.memory_info().rss
            deadline = time.monotonic() + 60
            while gen in source.live and time.monotonic() < deadline:
                source.poll(0.05)
                source.maintain()
            assert gen not in source.live and source.retired >= 1
            time.sleep(0.5)
            emptied = process.memory_info().rss
            assert emptied < full - 20 * 2**20  # ~40 MB stored; most of it given back
        finally:
            source.close()
