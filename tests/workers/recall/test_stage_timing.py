"""Stage times of a recall (``mindstream_recall_stage_seconds{stage}``): the engine's StageTimes and the Kafka
worker's per-stage observations, with fakes that sleep known amounts (pure: no broker, no Milvus)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry, generate_latest
from pymilvus.exceptions import MilvusUnavailableException

from schemas.codec import decode_reply
from schemas.headers import CORRELATION_ID, REPLY_TO
from schemas.messages import ErrorReply, RecallReply, RecallRequest
from tests.workers.recall.test_engine import DictHistory, FakeLive, FakeServed, FakeStore, FakeTower, _table
from workers.infra.vector_store import SearchResult
from workers.recall.engine import RecallEngine, Reply, StageTimes
from workers.recall.metrics import STAGES, RecallMetrics
from workers.recall.worker import RecallWorker

TOWER_S, SEARCH_S, HISTORY_S = 0.02, 0.03, 0.01  # per tower pass, per search, per user's history read
HISTORIES = {7: [3, 4], 8: [5], 9: [12, 1, 6]}


class SleepyTower(FakeTower):
    def interests(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        time.sleep(TOWER_S)
        return super().interests(histories)


class SleepyStore(FakeStore):
    def search(
        self,
        name: str,
        queries: np.ndarray,
        top_k: int,
        *,
        with_versions: bool = True,
        max_generation: int | None = None,
    ) -> SearchResult:
        time.sleep(SEARCH_S)
        return super().search(name, queries, top_k, with_versions=with_versions, max_generation=max_generation)


class SleepyHistory(DictHistory):
    def history(self, user_id: int, maxlen: int) -> list[int]:
        time.sleep(HISTORY_S)
        return super().history(user_id, maxlen)


def sleepy_engine() -> tuple[RecallEngine, SleepyStore]:
    table = _table(1)
    store = SleepyStore({"items_v1": table})
    live = FakeLive(FakeServed("v1", "items_v1", SleepyTower(table)))
    return RecallEngine(live, store, SleepyHistory(HISTORIES)), store


def plain_engine() -> RecallEngine:
    """The same model and data without sleeps, answering without stage timing."""
    table = _table(1)
    return RecallEngine(FakeLive(FakeServed("v1", "items_v1", FakeTower(table))), FakeStore({"items_v1": table}))


def plain_answers(requests: Sequence[RecallRequest]) -> list[dict[str, Any]]:
    engine = plain_engine()
    engine.history = DictHistory(HISTORIES)
    return [_content(r) for r in engine.answer(requests)]


def _content(reply: Reply) -> dict[str, Any]:
    """A reply without its (timing-dependent) ``took_ms``."""
    return reply.model_dump(mode="json", exclude={"took_ms"})


REQUESTS = [
    RecallRequest(hist_item=[[1, 2], [9]], top_k=5),
    RecallRequest(user_ids=[7, 8], top_k=3),
    RecallRequest(hist_item=[[4, 5, 6]], top_k=7, diversity=0.5),
]


def _at_least(seconds: float | None, low: float) -> bool:
    return seconds is not None and seconds >= low


# ------------------------------------------------------------------------------ engine


def test_the_engine_times_each_stage_of_a_batch_and_its_replies_are_unchanged() -> None:
    engine, _ = sleepy_engine()
    stages = StageTimes()
    began = time.perf_counter()
    replies = engine.answer(REQUESTS, stages=stages)
    took = time.perf_counter() - began
    assert [_content(r) for r in replies] == plain_answers(REQUESTS)
    assert all(isinstance(r, RecallReply) for r in replies)
    assert _at_least(stages.history, 2 * HISTORY_S)  # two users read, one request
    assert _at_least(stages.tower, TOWER_S)
    assert _at_least(stages.search, SEARCH_S)
    assert stages.merge is not None and stages.merge >= 0
    assert sum(t for _, t in stages.measured()) <= took  # disjoint intervals inside the call
    assert [name for name, _ in stages.measured()] == ["history", "tower", "search", "merge"]


def test_without_a_history_read_there_is_no_history_stage() -> None:
    engine, _ = sleepy_engine()
    stages = StageTimes()
    engine.answer([RecallRequest(hist_item=[[1, 2]], top_k=3)], stages=stages)
    assert stages.history is None
    assert [name for name, _ in stages.measured()] == ["tower", "search", "merge"]


def test_a_batch_without_any_interest_is_not_searched_but_still_merged() -> None:
    engine, store = sleepy_engine()
    stages = StageTimes()
    (reply,) = engine.answer([RecallRequest(hist_item=[[9999]], top_k=3)], stages=stages)
    assert isinstance(reply, RecallReply) and reply.items == [[]]
    assert store.calls == [] and stages.search is None
    assert _at_least(stages.tower, TOWER_S) and stages.merge is not None


def test_a_failed_search_still_counts_its_round_trip() -> None:
    engine, store = sleepy_engine()
    store.fail["items_v1"] = MilvusUnavailableException(message="down")
    stages = StageTimes()
    (reply,) = engine.answer([RecallRequest(hist_item=[[1, 2]], top_k=3)], stages=stages)
    assert isinstance(reply, ErrorReply)
    assert _at_least(stages.search, SEARCH_S) and stages.merge is None


def test_answer_without_stages_gives_the_same_replies() -> None:
    engine, _ = sleepy_engine()
    assert [_content(r) for r in engine.answer(REQUESTS)] == plain_answers(REQUESTS)


# ------------------------------------------------------------------------------ metrics


def _count(registry: CollectorRegistry, stage: str) -> float:
    return registry.get_sample_value("mindstream_recall_stage_seconds_count", {"stage": stage}) or 0.0


def _sum(registry: CollectorRegistry, stage: str) -> float:
    return registry.get_sample_value("mindstream_recall_stage_seconds_sum", {"stage": stage}) or 0.0


def _at_most(registry: CollectorRegistry, stage: str, le: str) -> float:
    value = registry.get_sample_value("mindstream_recall_stage_seconds_bucket", {"stage": stage, "le": le})
    return value or 0.0


def test_every_stage_series_exists_from_the_start() -> None:
    registry = CollectorRegistry()
    RecallMetrics(registry)
    text = generate_latest(registry).decode()
    for stage in STAGES:
        assert f'mindstream_recall_stage_seconds_bucket{{le="0.0005",stage="{stage}"}} 0.0' in text
        assert _count(registry, stage) == 0


def test_observe_engine_observes_only_the_stages_that_ran() -> None:
    registry = CollectorRegistry()
    metrics = RecallMetrics(registry)
    metrics.observe_engine(StageTimes(tower=0.002, search=0.004, merge=0.0001))
    assert {s: _count(registry, s) for s in STAGES} == {s: float(s in ("tower", "search", "merge")) for s in STAGES}
    assert _sum(registry, "search") == pytest.approx(0.004)
    assert _at_most(registry, "merge", "0.0005") == 1 and _at_most(registry, "tower", "0.001") == 0


# ------------------------------------------------------------------------------ Kafka worker

CONSUME_S, FLUSH_S = 0.1, 0.05  # how long the fake consumer fills a batch, how long acks take


class FakeConsumer:
    """Hands out one prepared batch: its first message from ``poll``, the rest after ``CONSUME_S``."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = list(messages)  # a copy: the test still counts what it handed over
        self.stored: list[TopicPartition] = []

    def subscribe(self, topics: list[str]) -> None:
        pass

    def poll(self, timeout: float) -> Message | None:
        return self.messages.pop(0) if self.messages else None

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        time.sleep(CONSUME_S)
        rest, self.messages = self.messages[:num_messages], self.messages[num_messages:]
        return rest

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        self.stored.extend(offsets)

    def commit(self, asynchronous: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


class FakeProducer:
    """Keeps what was produced; ``flush`` takes ``FLUSH_S`` and acknowledges everything."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes, Any]] = []
        self._callbacks: list[Any] = []

    def produce(self, topic: str, value: bytes, headers: Any = None, on_delivery: Any = None) -> None:
        self.produced.append((topic, value, headers))
        self._callbacks.append(on_delivery)

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        time.sleep(FLUSH_S)
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(None, Message(topic="replies"))
        return 0

    def purge(self) -> None:
        pass

    def close(self) -> None:
        pass


def _message(offset: int, body: bytes) -> Message:
    headers = [(CORRELATION_ID, f"c{offset}".encode()), (REPLY_TO, b"recall.replies.test")]
    return Message(topic="recall.requests", partition=0, offset=offset, value=body, headers=headers)


def _worker(
    engine: RecallEngine, registry: CollectorRegistry, consumer: FakeConsumer, producer: FakeProducer
) -> RecallWorker:
    return RecallWorker(
        {},
        engine,
        requests_topic="recall.requests",
        replies_topic="recall.replies",
        group_id="g",
        session_timeout_ms=6000,
        max_batch=16,
        max_wait_ms=200,
        reply_timeout_s=5.0,
        metrics=RecallMetrics(registry),
        producer=cast(Producer, producer),
        consumer=cast(Consumer, consumer),
    )


def test_the_kafka_worker_observes_each_stage_and_replies_as_without_timing() -> None:
    bodies = [r.model_dump_json(exclude_none=True).encode() for r in REQUESTS]
    messages = [_message(i, body) for i, body in enumerate(bodies)] + [_message(len(bodies), b"not json")]
    consumer, producer = FakeConsumer(messages), FakeProducer()
    registry = CollectorRegistry()
    engine, store = sleepy_engine()
    worker = _worker(engine, registry, consumer, producer)
    try:
        began = time.perf_counter()
        assert worker.run_once() == len(messages)
        took = time.perf_counter() - began
        assert worker.run_once() == 0  # idle: nothing observed
    finally:
        worker.close(commit=False)

    replies = [decode_reply(value) for _, value, _ in producer.produced]
    assert [_content(r) for r in replies[:-1]] == plain_answers(REQUESTS)
    assert isinstance(replies[-1], ErrorReply)  # the undecodable request
    assert [h for _, _, h in producer.produced] == [[(CORRELATION_ID, f"c{i}")] for i in range(len(messages))]
    assert [(tp.partition, tp.offset) for tp in consumer.stored] == [(0, len(messages))]

    # wait: one per message (the bad one too); the first waited for the batch to fill
    assert _count(registry, "wait") == len(messages)
    assert _sum(registry, "wait") >= CONSUME_S
    # the engine's stages and the reply: one per micro-batch, each holding its own (injected) time
    assert {s: _count(registry, s) for s in STAGES if s != "wait"} == dict.fromkeys(STAGES[1:], 1.0)
    assert len(store.calls) == 1 and _sum(registry, "search") >= SEARCH_S
    assert _sum(registry, "tower") >= TOWER_S and _sum(registry, "history") >= 2 * HISTORY_S
    assert _sum(registry, "reply") >= FLUSH_S  # produce + wait for the acknowledgements
    # disjoint: the engine's stages and the reply fit in the call (the first wait began before it)
    assert sum(_sum(registry, s) for s in STAGES if s != "wait") <= took


def test_a_batch_with_only_bad_requests_has_wait_and_reply_but_no_engine_stage() -> None:
    consumer, producer = FakeConsumer([_message(0, b"{}"), _message(1, b"[1]")]), FakeProducer()
    registry = CollectorRegistry()
    engine, store = sleepy_engine()
    worker = _worker(engine, registry, consumer, producer)
    try:
        assert worker.run_once() == 2
    finally:
        worker.close(commit=False)
    assert store.calls == []
    assert all(isinstance(decode_reply(value), ErrorReply) for _, value, _ in producer.produced)
    assert (_count(registry, "wait"), _count(registry, "reply")) == (2, 1)
    assert all(_count(registry, s) == 0 for s in ("history", "tower", "search", "merge"))


def test_partition_eof_events_get_no_wait() -> None:
    eof = Message(topic="recall.requests", partition=0, error=KafkaError(KafkaError._PARTITION_EOF))
    consumer = FakeConsumer([_message(0, REQUESTS[0].model_dump_json().encode()), eof])
    registry = CollectorRegistry()
    engine, _ = sleepy_engine()
    worker = _worker(engine, registry, consumer, FakeProducer())
    try:
        assert worker.run_once() == 1
    finally:
        worker.close(commit=False)
    assert _count(registry, "wait") == 1
