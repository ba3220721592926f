"""Valid but hostile input on the wire, against running workers (real subprocesses) on the real broker and
Milvus: each case is one message produced by a plain client, followed by ordinary traffic that must be
answered. The promise (docs/operations.md, "Hostile input"): a message is load, never an outage: it gets
an error reply or a dead letter, the worker's process id never changes, ordinary requests are answered
and ordinary clicks applied within 5 s after it, exactly once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from schemas.codec import decode_reply, encode
from schemas.dlq import DLQ_TRUNCATED, DeadLetter
from schemas.headers import CORRELATION_ID, REPLY_TO, get_header
from schemas.messages import ClickEvent, ErrorCode, ErrorReply, RecallReply, RecallRequest
from tests.faults.conftest import Names, Worker, publish_live, save_v1, wait_until, worker_env
from tests.workers.model_fixtures import exact_recall
from workers.infra.kafka import Conf, ensure_topics, make_admin, make_producer
from workers.infra.vector_store import VectorStore
from workers.ingest.state_reader import Cursor, StateReader
from workers.recall.client import RecallClient
from workers.refresh.registry import ModelRegistry
from workers.settings import KafkaSettings, MilvusSettings, RecallSettings

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

ITEMS = 60
ANSWER_S = 5.0  # the goal: ordinary traffic served within this long after any one hostile message
HISTORY = [[1, 2, 3]]


@dataclass
class Stack:
    kafka: KafkaSettings
    conf: Conf
    hostile_replies: str
    recall: Worker
    ingest: Worker
    pids: tuple[int, int]
    client: RecallClient
    producer: Producer
    state: Path
    expected: list[list[int]]
    clicks_sent: list[str]

    def ordinary_recall_answers(self) -> None:
        reply = self.client.recall(hist_item=HISTORY, top_k=5, timeout=ANSWER_S)
        assert reply.items == self.expected

    def ordinary_clicks_apply(self, n: int = 5, timeout: float = ANSWER_S) -> None:
        first = len(self.clicks_sent)
        for i in range(first, first + n):
            event = ClickEvent(event_id=f"ok-{i}", user_id=i % 7 + 1, item_id=i % 50 + 1, ts=1_000 + i)
            self.producer.produce(self.kafka.clicks_topic, encode(event), key=event.kafka_key())
            self.clicks_sent.append(event.event_id)
        assert self.producer.flush(10) == 0
        wanted = set(self.clicks_sent)
        wait_until(lambda: wanted <= self.applied_ids(), timeout, "ordinary clicks applied")

    def applied_ids(self) -> set[str]:
        return set(self.applied_list())

    def applied_list(self) -> list[str]:
        with StateReader(self.state, self.kafka.clicks_topic) as reader:
            events, _ = reader.events_since(Cursor())
        return [e.event_id for e in events]


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, milvus_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("hostile")
    names = Names()
    state = root / "state"
    env = worker_env(state, names, bootstrap=kafka_bootstrap, milvus_uri=milvus_uri)
    env["MINDSTREAM_RECALL__CLIENT_TIMEOUT_S"] = str(ANSWER_S)
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        clicks_topic=env["MINDSTREAM_KAFKA__CLICKS_TOPIC"],
        clicks_dlq_topic=env["MINDSTREAM_KAFKA__CLICKS_DLQ_TOPIC"],
        requests_topic=env["MINDSTREAM_KAFKA__REQUESTS_TOPIC"],
        replies_topic=env["MINDSTREAM_KAFKA__REPLIES_TOPIC"],
    )
    conf = kafka.client_config()
    hostile_replies = f"{kafka.replies_topic}.hostile"
    topics = [kafka.clicks_topic, kafka.clicks_dlq_topic, kafka.requests_topic, kafka.replies_topic, hostile_replies]
    ensure_topics(conf, topics)
    registry = ModelRegistry(state / "models", names.alias)
    _, net = save_v1(registry.root, ITEMS, seed=4)
    with VectorStore(milvus_uri, MilvusSettings(index_type="FLAT")) as store:
        publish_live(store, registry, net, "v1")
    recall = Worker.cli("recall", env, root / "recall.log").start()
    ingest = Worker.cli("ingest", env, root / "ingest.log").start()
    client = RecallClient(kafka, RecallSettings(client_timeout_s=60))
    try:
        client.recall(hist_item=HISTORY, top_k=5, timeout=60)  # the worker is up and answering
        stack = Stack(
            kafka,
            conf,
            hostile_replies,
            recall,
            ingest,
            (recall.pid, ingest.pid),
            client,
            make_producer(conf),
            state,
            exact_recall(net, HISTORY, 5),
            [],
        )
        stack.ordinary_clicks_apply(timeout=60)  # the ingest worker is up and applying
        yield stack
        stack.recall.assert_alive()
        stack.ingest.assert_alive()
        assert (stack.recall.pid, stack.ingest.pid) == stack.pids
        applied = stack.applied_list()
        assert sorted(applied) == sorted(stack.clicks_sent)  # every ordinary click once, nothing else
        assert "Traceback" not in recall.log_text() + ingest.log_text()
    finally:
        client.close()
        for worker in (recall, ingest):
            worker.stop()


def _reader(conf: Conf, topic: str) -> Consumer:
    consumer = Consumer({**conf, "group.id": f"raw-{uuid.uuid4().hex}", "enable.auto.commit": False})
    end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    consumer.assign([TopicPartition(topic, 0, end)])
    return consumer


def _first(consumer: Consumer, match: Callable[[Message], bool], timeout: float = 30) -> Message:
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(10, 0.2):
                if msg.error() is None and match(msg):
                    return msg
    finally:
        consumer.close()
    raise AssertionError("no matching message")


def _request(stack: Stack, body: bytes, headers: list[tuple[str, str | bytes | None]]) -> None:
    stack.producer.produce(stack.kafka.requests_topic, value=body, headers=headers)
    assert stack.producer.flush(10) == 0


def _error_on(stack: Stack, topic: str, cid: str | None, send: Callable[[], None]) -> ErrorReply:
    """Send, then the error reply that answers it on ``topic`` (by correlation id, or the first
    error without one)."""
    reader = _reader(stack.conf, topic)
    send()
    msg = _first(reader, lambda m: get_header(m.headers(), CORRELATION_ID) == cid)
    reply = decode_reply(msg.value())
    assert isinstance(reply, ErrorReply), reply
    return reply


def _hist(users: int, top_k: int, **extra: object) -> bytes:
    """A schema-valid request body: ``users`` short histories."""
    body = {"hist_item": [[1 + u % 50, 2 + u % 40] for u in range(users)], "top_k": top_k, **extra}
    return json.dumps(body).encode()


def test_a_correlation_id_of_900_kb_is_refused_not_echoed(stack: Stack) -> None:
    huge = "c" * 900_000
    reply = _error_on(
        stack,
        stack.kafka.replies_topic,
        None,
        lambda: _request(stack, _hist(1, 5), [(CORRELATION_ID, huge), (REPLY_TO, stack.hostile_replies)]),
    )
    assert reply.code is ErrorCode.BAD_REQUEST and "900000 bytes" in reply.message
    stack.ordinary_recall_answers()


def test_a_valid_request_whose_reply_cannot_fit_gets_too_large(stack: Stack) -> None:
    """256 users x top_k 400: a schema-valid body of a few KB whose reply would be ~8 MB."""
    reply = _error_on(
        stack,
        stack.hostile_replies,
        "big",
        lambda: _request(stack, _hist(256, 400), [(CORRELATION_ID, "big"), (REPLY_TO, stack.hostile_replies)]),
    )
    assert reply.code is ErrorCode.TOO_LARGE
    stack.ordinary_recall_answers()


def test_the_costliest_diverse_request_is_refused_by_the_budget_or_answered(stack: Stack) -> None:
    """256 users x top_k 1000 with diversity: once ~9 s of merge work per request."""
    reader = _reader(stack.conf, stack.hostile_replies)
    body = _hist(256, 1000, diversity=1.0)
    _request(stack, body, [(CORRELATION_ID, "diverse"), (REPLY_TO, stack.hostile_replies)])
    msg = _first(reader, lambda m: get_header(m.headers(), CORRELATION_ID) == "diverse")
    reply = decode_reply(msg.value())
    assert isinstance(reply, ErrorReply) and reply.code is ErrorCode.TOO_LARGE, reply
    stack.ordinary_recall_answers()


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("clicks", "stack topic"),
        ("__consumer_offsets", "internal"),
        ("missing", "does not exist"),
        ("elsewhere", "reply_to_allowed"),
        ("newline", "not a Kafka topic name"),
        ("not-utf8", "not a Kafka topic name"),
    ],
)
def test_a_refused_reply_to_is_answered_on_the_replies_topic(stack: Stack, target: str, reason: str) -> None:
    names: dict[str, str | bytes] = {
        "clicks": stack.kafka.clicks_topic,
        "__consumer_offsets": "__consumer_offsets",
        "missing": f"{stack.kafka.replies_topic}.nobody-{uuid.uuid4().hex[:6]}",
        "elsewhere": "another.teams.topic",
        "newline": f"{stack.kafka.replies_topic}\n",
        "not-utf8": b"\xff\xfe",
    }
    reply_to = names[target]
    cid = f"refused-{target}"
    reply = _error_on(
        stack,
        stack.kafka.replies_topic,
        cid,
        lambda: _request(stack, _hist(1, 5), [(CORRELATION_ID, cid), (REPLY_TO, reply_to)]),
    )
    assert reply.code is ErrorCode.BAD_REQUEST and reason in reply.message, reply.message
    if isinstance(reply_to, str) and target == "missing":
        assert reply_to not in make_admin(stack.conf).list_topics(timeout=10).topics
    stack.ordinary_recall_answers()


def test_a_click_of_almost_a_megabyte_is_dead_lettered_cut_and_clicks_go_on(stack: Stack) -> None:
    reader = _reader(stack.conf, stack.kafka.clicks_dlq_topic)
    junk = b"\x00" * 999_950  # what a default producer accepts; the letter with its headers would not fit
    stack.producer.produce(stack.kafka.clicks_topic, value=junk, key=b"9")
    assert stack.producer.flush(10) == 0
    letter = _first(reader, lambda m: True)
    assert DeadLetter.from_headers(letter.headers()) is not None
    assert int(get_header(letter.headers(), DLQ_TRUNCATED) or 0) > len(junk)
    stack.ordinary_clicks_apply()


def test_a_click_with_a_flood_of_headers_is_applied_once(stack: Stack) -> None:
    """Headers are not part of a click: 2,000 of them (~400 KB, names repeated) change nothing."""
    event = ClickEvent(event_id=f"hdr-{uuid.uuid4().hex[:6]}", user_id=3, item_id=4, ts=5)
    headers: list[tuple[str, str | bytes | None]] = [(f"h{i % 50}", b"v" * 200) for i in range(2_000)]
    stack.producer.produce(stack.kafka.clicks_topic, encode(event), key=event.kafka_key(), headers=headers)
    stack.clicks_sent.append(event.event_id)
    stack.ordinary_clicks_apply()


def test_workers_kept_their_process_and_answer_after_every_case(stack: Stack) -> None:
    stack.recall.assert_alive()
    stack.ingest.assert_alive()
    assert (stack.recall.pid, stack.ingest.pid) == stack.pids
    replies = [stack.client.request(RecallRequest(hist_item=HISTORY, top_k=5)) for _ in range(10)]
    assert all(isinstance(f.result(ANSWER_S), RecallReply) for f in replies)
