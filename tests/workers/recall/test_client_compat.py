"""The shipped client follows the compatibility policy (docs/wire-protocol.md) on the real broker: it
sends only the fields the caller set (an older worker accepts them), and it reads a newer worker's reply,
unknown fields and unknown error codes included."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from schemas.codec import CORRELATION_ID, REPLY_TO, get_header
from schemas.messages import ErrorCode, RecallFilters, RecallReply
from workers.infra.kafka import close_producer, ensure_topics, make_consumer, make_producer
from workers.recall.client import RecallClient, RecallError
from workers.settings import KafkaSettings, RecallSettings

pytestmark = pytest.mark.integration

Answer = Callable[[dict[str, object]], dict[str, object]]


@contextmanager
def newer_worker(kafka: KafkaSettings, answer: Answer, bodies: list[dict[str, object]]) -> Iterator[None]:
    """A stand-in for a worker of a later release: reads each request (kept in ``bodies``) and replies
    with ``answer(body)``."""
    conf = kafka.client_config()
    consumer = make_consumer(conf, f"{kafka.requests_topic}-w", session_timeout_ms=6000)
    consumer.subscribe([kafka.requests_topic])
    producer = make_producer(conf, {"linger.ms": 0})
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            msg = consumer.poll(0.1)
            if msg is None or msg.error() is not None:
                continue
            body = json.loads(msg.value() or b"null")
            bodies.append(body)
            headers = msg.headers()
            producer.produce(
                get_header(headers, REPLY_TO) or "",
                value=json.dumps(answer(body)).encode(),
                headers=[(CORRELATION_ID, get_header(headers, CORRELATION_ID))],
            )
            producer.flush(5)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        consumer.close()
        close_producer(producer, 1)


def _kafka(kafka_settings: KafkaSettings, topic_name: str) -> KafkaSettings:
    names = {"requests_topic": f"{topic_name}-req", "replies_topic": f"{topic_name}-rep"}
    kafka = kafka_settings.model_copy(update=names)
    ensure_topics(kafka.client_config(), [kafka.requests_topic])
    return kafka


def _reply(body: dict[str, object]) -> dict[str, object]:
    users = body.get("user_ids") or body.get("hist_item") or []
    assert isinstance(users, list)
    return {
        "schema_version": 1,
        "items": [[11, 12]] * len(users),
        "scores": [[0.9, 0.8]] * len(users),
        "model_version": "v9",
        "generation": 3,
        "collection": "mindstream_items_v9",
        "took_ms": 1.5,
        "source": ["model"] * len(users),
        "explain": {"why": "a field this client has never heard of"},
        "cache_hit": False,
    }


def _wait_ready(client: RecallClient) -> None:
    """The stand-in's consumer group joins in a few seconds: retry a first request until answered."""
    deadline = time.monotonic() + 30
    while True:
        try:
            client.recall(user_ids=[1], timeout=2.0)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def test_the_client_reads_a_newer_workers_reply(kafka_settings: KafkaSettings, topic_name: str) -> None:
    kafka = _kafka(kafka_settings, topic_name)
    bodies: list[dict[str, object]] = []
    with newer_worker(kafka, _reply, bodies), RecallClient(kafka, RecallSettings(client_timeout_s=10)) as client:
        _wait_ready(client)
        reply = client.recall(user_ids=[1, 2], top_k=2)
        assert isinstance(reply, RecallReply)
        assert reply.items == [[11, 12], [11, 12]] and reply.source == ["model", "model"] and reply.generation == 3
        filters = RecallFilters(exclude_categories=["Horror"], exclude_items=[5])
        client.recall(hist_item=[[3, 4]], exclude_seen=True, filters=filters, fallback="popular", diversity=0.1)
    plain, full = bodies[-2], bodies[-1]
    # Fields the caller left unset are not sent: a worker older than the additions accepts the body.
    assert set(plain) == {"schema_version", "hist_item", "user_ids", "top_k", "diversity"}
    assert full["exclude_seen"] is True and full["fallback"] == "popular" and full["diversity"] == 0.1
    assert full["filters"] == {
        "include_segments": None,
        "exclude_segments": None,
        "include_categories": None,
        "exclude_categories": ["Horror"],
        "exclude_items": [5],
    }


def test_the_client_reads_an_unknown_error_code(kafka_settings: KafkaSettings, topic_name: str) -> None:
    kafka = _kafka(kafka_settings, topic_name)
    answers = iter([_reply, lambda _: {"code": "throttled", "message": "slow down", "retry_after_ms": 50}])
    current = [next(answers)]

    def answer(body: dict[str, object]) -> dict[str, object]:
        return current[0](body)

    with newer_worker(kafka, answer, []), RecallClient(kafka, RecallSettings(client_timeout_s=10)) as client:
        _wait_ready(client)
        current[0] = next(answers)
        with pytest.raises(RecallError) as info:
            client.recall(user_ids=[1])
    assert info.value.code is ErrorCode.INTERNAL and str(info.value) == "internal: throttled: slow down"
