"""Generated bad input against real workers on the real embedded broker (and Milvus for recall).

One hypothesis-generated dataset per test (:func:`tests.fuzz.generate`), produced in one go: the
workers must survive it, account for every message, and answer or dead-letter each bad one. Which
messages are bad is decided by the independent oracle (``tests.fuzz.oracle``), not by the codec the
workers use; the codec only supplies the expected reason text of a message both call bad.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from schemas.codec import DecodeError, decode_click, decode_reply, decode_request, encode
from schemas.dlq import DLQ_HEADERS, DLQ_OFFSET, DLQ_REASON, DeadLetter
from schemas.headers import CORRELATION_ID, REPLY_TO, get_header
from schemas.messages import ClickEvent, ErrorCode, ErrorReply, RecallReply
from workers.infra.kafka import Conf, ensure_topics, make_producer
from workers.infra.vector_store import VectorStore
from workers.ingest.metrics import IngestMetrics
from workers.ingest.state_reader import Cursor, StateReader
from workers.ingest.worker import IngestWorker
from workers.recall.client import RecallClient
from workers.recall.engine import RecallEngine
from workers.recall.live_model import LiveModel
from workers.recall.metrics import RecallMetrics
from workers.recall.worker import RecallWorker
from workers.refresh.registry import ModelRegistry
from workers.runtime import StopFlag
from workers.settings import KafkaSettings, MilvusSettings, RecallSettings

from ..workers.model_fixtures import exact_recall, publish_tiny
from . import bad_clicks, bad_requests, clicks, generate, huge_array_click, oracle, requests, simple_clicks

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CLICKS = 300
REQUESTS = 120
RESENT = 15
PARTITIONS = 2

HeaderList = list[tuple[str, bytes | None]]


@dataclass(frozen=True)
class Sent:
    key: bytes | None
    value: bytes | None
    headers: HeaderList | None


header_lists = st.none() | st.lists(
    st.tuples(
        st.sampled_from(["trace", "ünïcode", DLQ_REASON, DLQ_OFFSET]), st.none() | st.binary(min_size=1, max_size=16)
    ),
    max_size=3,
)
good_clicks = st.builds(
    lambda event, headers: Sent(event.kafka_key(), encode(event), headers),
    simple_clicks | clicks,
    header_lists,
)
bad_click_messages = st.builds(
    Sent, st.none() | st.binary(min_size=1, max_size=12), bad_clicks | huge_array_click() | st.none(), header_lists
)


def _reader(conf: Conf, topic: str, partitions: int) -> Consumer:
    consumer = Consumer({**conf, "group.id": f"reader-{uuid.uuid4().hex}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    return consumer


def _drain(consumer: Consumer, n: int, timeout: float = 20.0, settle: float = 1.0) -> list[Message]:
    """At least ``n`` messages if they come within ``timeout``, plus whatever arrives ``settle`` s later."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(m for m in consumer.consume(max(n - len(got), 1), 0.2) if m.error() is None)
    quiet = time.monotonic() + settle
    while time.monotonic() < quiet:
        got.extend(m for m in consumer.consume(100, 0.2) if m.error() is None)
    consumer.close()
    return got


def _produce_all(conf: Conf, topic: str, sent: list[Sent]) -> list[tuple[int, int]]:
    """Produce ``sent`` in order; the (partition, offset) each landed at."""
    placed: list[tuple[int, int] | None] = [None] * len(sent)
    failures: list[str] = []

    def delivered(index: int) -> Callable[[KafkaError | None, Message], None]:
        def callback(error: KafkaError | None, msg: Message) -> None:
            if error is not None:
                failures.append(str(error))
            else:
                placed[index] = (msg.partition() or 0, msg.offset() or 0)

        return callback

    producer = make_producer(conf)
    for index, message in enumerate(sent):
        producer.produce(
            topic, key=message.key, value=message.value, headers=message.headers, on_delivery=delivered(index)
        )
        producer.poll(0)
    assert producer.flush(30) == 0 and not failures, failures
    assert all(p is not None for p in placed)
    return [p for p in placed if p is not None]


def _kept(headers: Any) -> list[tuple[str, bytes | None]]:
    """Headers other than the dead-letter ones, empty values as None (the wire does not tell them apart)."""
    return [(k, v or None) for k, v in (headers or []) if k not in DLQ_HEADERS]


class _Runner:
    """A worker's ``run(stop)`` in a thread; remembers an exception instead of losing it."""

    def __init__(self, run: Callable[[StopFlag], None]) -> None:
        self.stop = StopFlag()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._main, args=(run,), daemon=True)
        self.thread.start()

    def _main(self, run: Callable[[StopFlag], None]) -> None:
        try:
            run(self.stop)
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive() and self.errors == []


def test_ingest_dead_letters_every_bad_click_and_conserves_counts(
    kafka_settings: KafkaSettings, topic_name: str, tmp_path: Path
) -> None:
    dataset = generate(st.one_of(good_clicks, bad_click_messages), CLICKS, seed_=11)
    good = [s for s in dataset if oracle.valid_click(s.value)]
    sent = dataset + good[:RESENT]  # re-sent events: duplicates, not new clicks
    assert len(dataset) >= CLICKS * 0.9 and len(good) >= RESENT
    assert sum(not oracle.valid_click(s.value) for s in sent) >= CLICKS // 3

    conf = kafka_settings.client_config()
    dlq = f"{topic_name}.dlq"
    ensure_topics(conf, [topic_name, dlq], partitions=PARTITIONS)
    placed = _produce_all(conf, topic_name, sent)

    registry = CollectorRegistry()
    worker = IngestWorker(
        conf,
        topic=topic_name,
        dlq_topic=dlq,
        group_id=f"{topic_name}-ingest",
        session_timeout_ms=6000,
        state_dir=tmp_path,
        batch_size=64,
        batch_timeout_s=0.2,
        dlq_flush_timeout_s=10.0,
        stats_interval_ms=0,
        metrics=IngestMetrics(registry),
    )
    runner = _Runner(worker.run)

    def sample(name: str) -> float:
        return registry.get_sample_value(name) or 0.0

    deadline = time.monotonic() + 45
    while sample("mindstream_clicks_consumed_total") < len(sent) and time.monotonic() < deadline:
        assert runner.thread.is_alive(), runner.errors
        time.sleep(0.1)
    assert runner.thread.is_alive() and runner.errors == []  # 0 crashes
    runner.finish()

    expected_dead: dict[tuple[int, int], tuple[Sent, str]] = {}
    expected_ids: set[tuple[int, str]] = set()
    valid = 0
    for message, where in zip(sent, placed, strict=True):
        if oracle.valid_click(message.value):
            valid += 1
            expected_ids.add((where[0], json.loads(message.value or b"")["event_id"]))
        else:
            result = _decoded(message.value)
            reason = result.reason if isinstance(result, DecodeError) else "(the codec accepted a bad click)"
            expected_dead[where] = (message, reason)
    consumed = sample("mindstream_clicks_consumed_total")
    assert consumed == len(sent)
    assert sample("mindstream_clicks_valid_total") == valid
    assert sample("mindstream_clicks_invalid_total") == len(expected_dead)
    assert consumed == sample("mindstream_clicks_valid_total") + sample("mindstream_clicks_invalid_total")
    applied, duplicates = sample("mindstream_ingest_events_applied_total"), sample("mindstream_ingest_duplicates_total")
    assert applied == len(expected_ids) and applied + duplicates == valid and duplicates >= RESENT
    with StateReader(tmp_path, topic_name) as reader:
        assert reader.event_count() == applied
        events, _ = reader.events_since(Cursor())
    assert {e.event_id for e in events} == {event_id for _, event_id in expected_ids}

    letters = _drain(_reader(conf, dlq, PARTITIONS), len(expected_dead))
    assert len(letters) == len(expected_dead)
    seen = set()
    for msg in letters:
        letter = DeadLetter.from_headers(msg.headers())
        assert letter is not None and letter.topic == topic_name
        original, reason = expected_dead[(letter.partition, letter.offset)]
        seen.add((letter.partition, letter.offset))
        assert letter.reason == reason
        assert msg.value() == original.value or (not msg.value() and not original.value)
        assert (msg.key() or None) == (original.key or None)
        assert _kept(msg.headers()) == _kept(original.headers)
    assert seen == set(expected_dead)


def _decoded(value: bytes | None) -> ClickEvent | DecodeError:
    try:
        return decode_click(value)
    except DecodeError as exc:
        return exc


# ---------------------------------------------------------------------------------------- recall

BAD_REPLY_TO = ["bad topic!", "x" * 300, "ünï", "a/b", "fine\n"]
# Well-formed names the reply_to policy refuses (recall.reply_to_allowed), with the reason expected.
REFUSED_REPLY_TO = {
    "__consumer_offsets": "reply_to '__consumer_offsets' refused: an internal or stack topic",
    "someone.else": "reply_to 'someone.else' refused: not allowed by recall.reply_to_allowed",
}
MISSING = "missing"  # an allowed name (<replies topic>.<suffix>) of a topic that does not exist
BUDGET = RecallSettings()


@dataclass(frozen=True)
class Request:
    value: bytes | None
    correlation_id: str | None
    reply_to: str | None  # None: no header; "raw": the test's reply topic; MISSING: one nobody made; else as is


reply_tos = st.sampled_from([None, "", *BAD_REPLY_TO, *REFUSED_REPLY_TO, MISSING, *["raw"] * 8])
requests_mix = st.builds(
    Request,
    st.one_of(bad_requests, bad_requests, bad_requests, requests.map(encode), st.none()),
    st.sampled_from(["cid", "cid", "cid", None]),  # made unique below
    reply_tos,
)


def _reply_to(request: Request, raw_topic: str, default_topic: str) -> str | None:
    """The ``reply_to`` header the request is sent with."""
    if request.reply_to == "raw":
        return raw_topic
    if request.reply_to == MISSING:
        return f"{default_topic}.{MISSING}"
    return request.reply_to


def _expected(request: Request, raw_topic: str, default_topic: str) -> tuple[str, ErrorCode | None, str | None]:
    """Where the reply goes, its error code (None: a RecallReply) and its message."""
    reply_to = _reply_to(request, raw_topic, default_topic)
    if reply_to in BAD_REPLY_TO:
        return default_topic, ErrorCode.BAD_REQUEST, "invalid reply_to header: not a Kafka topic name"
    if reply_to in REFUSED_REPLY_TO:
        return default_topic, ErrorCode.BAD_REQUEST, REFUSED_REPLY_TO[reply_to]
    if request.reply_to == MISSING:
        missing = f"reply_to topic {reply_to!r} does not exist (create it before sending requests)"
        return default_topic, ErrorCode.BAD_REQUEST, missing
    topic = reply_to or default_topic
    if not oracle.valid_request(request.value):
        try:
            decode_request(request.value)
        except DecodeError as exc:
            return topic, exc.code, exc.reason
        return topic, ErrorCode.BAD_REQUEST, "(the codec accepted a request the oracle calls invalid)"
    users, top_k, diverse = oracle.request_shape(request.value or b"")
    if diverse and top_k > BUDGET.max_diverse_top_k:
        reason = f"top_k {top_k} with diversity > 0 exceeds recall.max_diverse_top_k {BUDGET.max_diverse_top_k}"
        return topic, ErrorCode.TOO_LARGE, reason
    if users * top_k > BUDGET.max_request_cost:
        reason = f"cost {users * top_k} (users x top_k) exceeds recall.max_request_cost {BUDGET.max_request_cost}"
        return topic, ErrorCode.TOO_LARGE, reason
    if oracle.request_uses_history(request.value or b""):  # the worker has no history source
        return topic, ErrorCode.BAD_REQUEST, "user_ids need a history source: send hist_item"
    return topic, None, None


def test_recall_answers_every_bad_request_with_an_error_reply(
    kafka_bootstrap: str, milvus_uri: str, tmp_path: Path
) -> None:
    drawn = generate(requests_mix, REQUESTS, seed_=12)
    dataset = [
        Request(r.value, f"c{i}-ü" if r.correlation_id else None, r.reply_to) for i, r in enumerate(drawn, start=1)
    ]
    tag = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        requests_topic=f"fuzz-req-{tag}",
        replies_topic=f"fuzz-rep-{tag}",
        recall_group=f"fuzz-recall-{tag}",
    )
    raw_topic = f"{kafka.replies_topic}.raw"
    conf = kafka.client_config()
    ensure_topics(conf, [kafka.requests_topic, kafka.replies_topic, raw_topic])
    expected = [_expected(r, raw_topic, kafka.replies_topic) for r in dataset]
    assert sum(code is not None for _, code, _ in expected) >= REQUESTS // 2

    alias = f"fuzz_{tag}"
    store = VectorStore(milvus_uri, MilvusSettings(index_type="FLAT", alias=alias))
    runner: _Runner | None = None
    try:
        _, net = publish_tiny(store, tmp_path / "models", alias, 120, seed=5)
        live = LiveModel(store, ModelRegistry(tmp_path / "models", alias), check_every_s=0.5)
        recall = RecallSettings(client_timeout_s=10.0)
        worker = RecallWorker(
            conf,
            RecallEngine(live, store),
            requests_topic=kafka.requests_topic,
            replies_topic=kafka.replies_topic,
            group_id=kafka.recall_group,
            session_timeout_ms=3000,
            max_batch=32,
            max_wait_ms=2.0,
            reply_timeout_s=recall.client_timeout_s,
            metrics=RecallMetrics(CollectorRegistry()),
        )
        runner = _Runner(worker.run)
        producer = make_producer(conf)
        for request in dataset:
            headers: HeaderList = []
            if request.correlation_id is not None:
                headers.append((CORRELATION_ID, request.correlation_id.encode()))
            reply_to = _reply_to(request, raw_topic, kafka.replies_topic)
            if reply_to is not None:
                headers.append((REPLY_TO, reply_to.encode()))
            producer.produce(kafka.requests_topic, value=request.value, headers=headers or None)
        assert producer.flush(10) == 0

        per_topic = {t: sum(1 for e in expected if e[0] == t) for t in (raw_topic, kafka.replies_topic)}
        replies: dict[str, list[Message]] = {
            topic: _drain(_reader(conf, topic, 1), n, timeout=40) for topic, n in per_topic.items()
        }
        assert runner.thread.is_alive() and runner.errors == []  # 0 crashes
        assert {t: len(m) for t, m in replies.items()} == per_topic
        cids = [get_header(m.headers(), CORRELATION_ID) for messages in replies.values() for m in messages]
        assert cids.count(None) == sum(1 for r in dataset if r.correlation_id is None)
        by_cid = {
            get_header(m.headers(), CORRELATION_ID): (topic, decode_reply(m.value()))
            for topic, messages in replies.items()
            for m in messages
        }
        for request, (topic, code, message) in zip(dataset, expected, strict=True):
            if request.correlation_id is None:
                continue
            got_topic, reply = by_cid[request.correlation_id]  # correlation_id echoed
            assert got_topic == topic, request
            if code is None:
                assert isinstance(reply, RecallReply), (request, reply)
            else:
                assert isinstance(reply, ErrorReply) and (reply.code, reply.message) == (code, message), request

        with RecallClient(kafka, recall) as client:  # a good request is still answered afterwards
            history = [[3, 17, 42], [7]]
            reply = client.recall(hist_item=history, top_k=5)
        assert reply.items == exact_recall(net, history, 5)
    finally:
        if runner is not None:
            runner.finish()
        for name in store.list_collections(alias):
            if store.resolve_alias(alias) == name:
                store.drop_alias(alias)
            store.drop_collection(name)
        store.close()
