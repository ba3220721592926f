"""The reply_to policy, the topic check and the produce path's poison handling (pure logic, fake clients)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from schemas.codec import decode_reply
from schemas.messages import ErrorCode, ErrorReply, RecallReply
from workers.infra.kafka import RECORD_OVERHEAD_BYTES, record_bytes
from workers.recall.metrics import RecallMetrics
from workers.recall.replies import KnownTopics, ReplyPolicy
from workers.recall.worker import RecallWorker, _Pending

POLICY = ReplyPolicy.for_stack("replies", ["clicks", "clicks.dlq", "requests", "replies"], None, 16)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("replies", None),
        ("replies.abc123", None),
        ("replies.", "not allowed"),
        ("repliesX", "not allowed"),
        ("replies\n", "not a Kafka topic name"),
        ("replies.a\n", "not a Kafka topic name"),
        ("x" * 250, "not a Kafka topic name"),
        ("", "not a Kafka topic name"),
        ("clicks", "internal or stack topic"),
        ("clicks.dlq", "internal or stack topic"),
        ("requests", "internal or stack topic"),
        ("__consumer_offsets", "internal or stack topic"),
        ("other", "not allowed"),
    ],
)
def test_reply_to_policy_full_matches_allowed_names_and_prefixes(name: str, reason: str | None) -> None:
    refusal = POLICY.refusal(name)
    assert (refusal is None) if reason is None else (refusal is not None and reason in refusal)


def test_an_allow_list_never_opens_the_stack_or_internal_topics() -> None:
    policy = ReplyPolicy.for_stack("replies", ["clicks", "requests"], ["clicks", "__x", "shared", "team."], 16)
    assert policy.refusal("shared") is None and policy.refusal("team.a") is None
    assert policy.refusal("replies") is not None  # not listed any more
    assert "stack topic" in (policy.refusal("clicks") or "")
    assert "internal" in (policy.refusal("__x") or "")


def test_correlation_ids_longer_than_the_limit_are_refused_by_bytes() -> None:
    assert POLICY.correlation_refusal("a" * 16) is None
    assert "17 bytes" in (POLICY.correlation_refusal("a" * 17) or "")
    assert "18 bytes" in (POLICY.correlation_refusal("é" * 9) or "")  # UTF-8 bytes, not characters


def test_record_bytes_counts_key_value_headers_and_framing() -> None:
    assert record_bytes(b"abc") == RECORD_OVERHEAD_BYTES + 3
    assert record_bytes(b"abc", b"k", [("h", "é"), ("n", None)]) == RECORD_OVERHEAD_BYTES + 3 + 1 + (1 + 2 + 8) + 9


def test_known_topics_lists_again_only_for_unknown_names_newer_than_the_last_listing() -> None:
    now = [0.0]
    cluster = {"a"}
    calls: list[float] = []

    def list_topics() -> set[str]:
        calls.append(now[0])
        return set(cluster)

    known = KnownTopics(list_topics, clock=lambda: now[0])
    now[0] = 1.0
    assert known.missing({"a"}, received_at=0.0) == set() and len(calls) == 1
    assert known.missing({"a"}, received_at=5.0) == set() and len(calls) == 1  # known: no listing
    assert known.missing({"b"}, received_at=0.5) == {"b"} and len(calls) == 1  # listed after it arrived
    cluster.add("b")
    assert known.missing({"b"}, received_at=2.0) == set() and len(calls) == 2  # arrived after the listing
    now[0] = 3.0
    assert known.missing({"c", "d"}, received_at=2.5) == {"c", "d"} and len(calls) == 3  # one listing a batch
    assert known.missing({"c"}, received_at=2.9) == {"c"} and len(calls) == 3


def test_known_topics_trusts_the_names_when_no_broker_answers() -> None:
    def down() -> set[str]:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    assert KnownTopics(down).missing({"x"}, received_at=1e18) == set()


class FakeProducer:
    """Refuses produce() with the KafkaError code given per topic; records what it accepted."""

    def __init__(self, refuse: dict[str, int]) -> None:
        self.refuse = refuse
        self.sent: list[tuple[str, bytes, Any]] = []

    def produce(
        self, topic: str, value: bytes, headers: Any = None, on_delivery: Callable[..., None] | None = None
    ) -> None:
        if topic in self.refuse:
            raise KafkaException(KafkaError(self.refuse[topic]))
        self.sent.append((topic, value, headers))

    def flush(self, timeout: float) -> int:
        return 0

    def poll(self, timeout: float) -> int:
        return 0


class FakeConsumer:
    def subscribe(self, topics: list[str]) -> None:
        pass


def _worker(producer: FakeProducer, max_message_bytes: int = 100_000) -> tuple[RecallWorker, RecallMetrics]:
    metrics = RecallMetrics(CollectorRegistry())
    worker = RecallWorker(
        {},
        engine=None,  # type: ignore[arg-type]  # the produce path never calls it
        requests_topic="requests",
        replies_topic="replies",
        group_id="g",
        session_timeout_ms=6000,
        max_batch=8,
        max_wait_ms=0,
        reply_timeout_s=1.0,
        metrics=metrics,
        max_message_bytes=max_message_bytes,
        producer=producer,  # type: ignore[arg-type]
        consumer=FakeConsumer(),  # type: ignore[arg-type]
    )
    return worker, metrics


def _reply(users: int, top_k: int) -> RecallReply:
    items = [[2**62 + i for i in range(top_k)] for _ in range(users)]
    scores = [[0.123456789 for _ in range(top_k)] for _ in range(users)]
    return RecallReply(items=items, scores=scores, model_version="v1", collection="c", took_ms=1.0)


def test_a_reply_too_large_for_a_message_becomes_too_large_naming_the_limit() -> None:
    producer = FakeProducer({})
    worker, metrics = _worker(producer, max_message_bytes=20_000)
    sent = worker._produce(_Pending("replies.me", "cid", reply=_reply(10, 100)))
    assert isinstance(sent, ErrorReply) and sent.code is ErrorCode.TOO_LARGE
    assert "kafka.max_message_bytes 20000" in sent.message
    ((topic, value, headers),) = producer.sent
    assert topic == "replies.me" and headers == [("correlation_id", "cid")]
    assert decode_reply(value) == sent
    assert metrics.undeliverable._value.get() == 0


def test_a_reply_the_producer_refuses_goes_to_the_replies_topic_as_an_error() -> None:
    producer = FakeProducer({"replies.gone": KafkaError._UNKNOWN_TOPIC})
    worker, metrics = _worker(producer)
    sent = worker._produce(_Pending("replies.gone", "cid", reply=_reply(1, 3)))
    assert isinstance(sent, ErrorReply) and sent.code is ErrorCode.BAD_REQUEST and "replies.gone" in sent.message
    assert [(t, h) for t, _, h in producer.sent] == [("replies", [("correlation_id", "cid")])]
    assert metrics.undeliverable._value.get() == 0


def test_a_reply_nothing_accepts_is_counted_and_never_raises() -> None:
    producer = FakeProducer({"replies": KafkaError.MSG_SIZE_TOO_LARGE, "replies.x": KafkaError._UNKNOWN_TOPIC})
    worker, metrics = _worker(producer)
    worker._produce(_Pending("replies", None, reply=_reply(1, 3)))
    worker._produce(_Pending("replies.x", None, reply=_reply(1, 3)))
    assert producer.sent == [] and metrics.undeliverable._value.get() == 2
