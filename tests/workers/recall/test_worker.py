"""The recall worker and client against the real embedded broker and the real embedded Milvus.

One worker serves the whole module (tests run in file order; the swap test comes last).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from prometheus_client import CollectorRegistry

from model.checkpoint import save_checkpoint
from model.config import MindConfig
from model.export import UserTower, item_table
from model.metrics import merge_interests
from model.net import MindNet
from schemas.codec import decode_reply
from schemas.headers import CORRELATION_ID, DEADLINE_MS, REPLY_TO, get_header
from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from workers.infra.kafka import ensure_topics, make_admin, make_producer
from workers.infra.vector_store import VectorStore
from workers.recall.client import RecallClient, RecallError
from workers.recall.engine import RecallEngine
from workers.recall.live_model import LiveModel
from workers.recall.metrics import RecallMetrics
from workers.recall.worker import RecallWorker
from workers.refresh.registry import ModelRegistry
from workers.runtime import StopFlag
from workers.settings import KafkaSettings, MilvusSettings, RecallSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CFG = MindConfig(dim=8, k_max=2, maxlen=5)
ALIAS_CHECK_S = 0.3
HISTORIES = [[3, 17, 42], [100, 101, 102, 103, 104, 105, 106], [7]]


@dataclass
class Env:
    kafka: KafkaSettings
    recall: RecallSettings
    store: VectorStore
    alias: str
    root: Path
    nets: dict[str, MindNet]
    client: RecallClient
    metrics: RecallMetrics


def publish(env_store: VectorStore, root: Path, alias: str, item_count: int, seed: int) -> tuple[str, MindNet]:
    """Checkpoint a tiny untrained MIND as the next version, fill ``<alias>_v<N>``, point the alias."""
    paddle.seed(seed)
    net = MindNet(CFG, item_count, seed=seed)
    version = save_checkpoint(
        root, net, None, parent=None, step=0, data_fingerprint="test", train={}, metrics={}
    ).manifest.version
    name = f"{alias}_{version}"
    table = item_table(net)
    env_store.create_collection(name, CFG.dim)
    env_store.build_index(name)  # FLAT before insert and no flush: ~3 s instead of ~7 s to publish
    env_store.insert(name, np.arange(1, item_count, dtype=np.int64), table[1:], model_version=version)
    env_store.load(name)
    assert env_store.count(name) == item_count - 1  # Strong: every row visible before the swap
    env_store.point_alias(alias, name)
    return version, net


def exact(net: MindNet, histories: list[list[int]], top_k: int) -> list[list[int]]:
    """Brute-force numpy search of every interest + the reference merge."""
    interests = UserTower(net, "x").interests(histories)  # [B, K, dim]
    table = item_table(net)[1:]
    scores = interests @ table.T  # [B, K, items]
    order = np.argsort(-scores, axis=2, kind="stable")[:, :, :top_k]
    ids = order + 1
    return [m.tolist() for m in merge_interests(ids, np.take_along_axis(scores, order, axis=2), top_k)]


@pytest.fixture(scope="module")
def env(kafka_bootstrap: str, milvus_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tag = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        requests_topic=f"recall-req-{tag}",
        replies_topic=f"recall-rep-{tag}",
        recall_group=f"recall-{tag}",
    )
    recall = RecallSettings(alias_check_s=ALIAS_CHECK_S, max_wait_ms=2.0, client_timeout_s=10.0)
    conf = kafka.client_config()
    ensure_topics(conf, [kafka.requests_topic, kafka.replies_topic])
    alias, root = f"recall_{tag}", tmp_path_factory.mktemp("models")
    store = VectorStore(milvus_uri, MilvusSettings(index_type="FLAT", alias=alias))
    version, net = publish(store, root, alias, 200, seed=1)
    live = LiveModel(store, ModelRegistry(root, alias), check_every_s=ALIAS_CHECK_S)
    metrics = RecallMetrics(CollectorRegistry())
    worker = RecallWorker(
        conf,
        RecallEngine(live, store),
        requests_topic=kafka.requests_topic,
        replies_topic=kafka.replies_topic,
        group_id=kafka.recall_group,
        session_timeout_ms=3000,
        max_batch=recall.max_batch,
        max_wait_ms=recall.max_wait_ms,
        reply_timeout_s=recall.client_timeout_s,
        metrics=metrics,
    )
    stop = StopFlag()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    client = RecallClient(kafka, recall)
    try:
        yield Env(kafka, recall, store, alias, root, {version: net}, client, metrics)
    finally:
        client.close()
        stop.set()
        thread.join(15)
        assert not thread.is_alive()
        store.close()


def test_recall_returns_the_exact_merged_top_k(env: Env) -> None:
    reply = env.client.recall(hist_item=HISTORIES, top_k=10)
    assert (reply.model_version, reply.collection) == ("v1", f"{env.alias}_v1")
    assert reply.items == exact(env.nets["v1"], HISTORIES, 10)
    assert all(len(i) == 10 for i in reply.items)
    assert all(s == sorted(s, reverse=True) for s in reply.scores)
    # only the last maxlen clicks matter; ids the model does not know are ignored
    tail = env.client.recall(hist_item=[[150, 151, *HISTORIES[1][-CFG.maxlen :]], [9999]], top_k=10)
    assert tail.items == [reply.items[1], []]


def test_concurrent_requests_with_different_top_k(env: Env) -> None:
    futures = [env.client.request(RecallRequest(hist_item=[[i, i + 1]], top_k=i)) for i in range(1, 30)]
    for i, future in enumerate(futures, start=1):
        reply = future.result(15)
        assert isinstance(reply, RecallReply)
        assert reply.items == exact(env.nets["v1"], [[i, i + 1]], i)


def _raw_reader(env: Env, topic: str, *, from_end: bool = False) -> Consumer:
    consumer = Consumer({**env.kafka.client_config(), "group.id": f"raw-{uuid.uuid4().hex}"})
    start = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1] if from_end else 0
    consumer.assign([TopicPartition(topic, 0, start)])
    return consumer


def _collect(consumer: Consumer, n: int) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        got.extend(m for m in consumer.consume(n - len(got), 0.2) if m.error() is None)
    return got


BAD = {
    "malformed": (b'{"hist_item": [[1, 2]', ErrorCode.BAD_REQUEST, "malformed JSON"),
    "not-utf8": (b"\xff\xfe", ErrorCode.BAD_REQUEST, "UTF-8"),
    "string-ids": (b'{"hist_item": [["1"]]}', ErrorCode.BAD_REQUEST, "hist_item"),
    "string-top-k": (b'{"hist_item": [[1]], "top_k": "5"}', ErrorCode.BAD_REQUEST, "top_k"),
    "top-k-0": (b'{"hist_item": [[1]], "top_k": 0}', ErrorCode.BAD_REQUEST, "top_k"),
    "top-k-5000": (b'{"hist_item": [[1]], "top_k": 5000}', ErrorCode.BAD_REQUEST, "top_k"),
    "too-many-users": (json.dumps({"hist_item": [[1]] * 257}).encode(), ErrorCode.TOO_LARGE, "hist_item"),
    "both-sources": (b'{"hist_item": [[1]], "user_ids": [1]}', ErrorCode.BAD_REQUEST, "exactly one"),
    "user-ids-no-history": (b'{"user_ids": [1]}', ErrorCode.BAD_REQUEST, "hist_item"),
}


def test_bad_requests_get_error_replies_and_the_worker_survives(env: Env) -> None:
    topic = f"{env.kafka.replies_topic}.raw"
    ensure_topics(env.kafka.client_config(), [topic])
    reader, default_reader = _raw_reader(env, topic), _raw_reader(env, env.kafka.replies_topic)
    producer = make_producer(env.kafka.client_config())
    for cid, (body, _, _) in BAD.items():
        producer.produce(env.kafka.requests_topic, value=body, headers=[(CORRELATION_ID, cid), (REPLY_TO, topic)])
    # no correlation id, no reply_to: answered on the default replies topic, without the header
    producer.produce(env.kafka.requests_topic, value=b"nope")
    producer.produce(env.kafka.requests_topic, value=b'{"hist_item": [[1]]}', headers=[(REPLY_TO, "bad topic!")])
    producer.flush(10)
    del producer
    replies = {get_header(m.headers(), CORRELATION_ID): decode_reply(m.value()) for m in _collect(reader, len(BAD))}
    assert set(replies) == set(BAD)
    for cid, (_, code, reason) in BAD.items():
        reply = replies[cid]
        assert isinstance(reply, ErrorReply) and reply.code is code, cid
        assert reason in reply.message, (cid, reply.message)
    defaults = _collect(default_reader, 2)
    assert [get_header(m.headers(), CORRELATION_ID) for m in defaults] == [None, None]
    errors = [decode_reply(m.value()) for m in defaults]
    assert all(isinstance(e, ErrorReply) and e.code is ErrorCode.BAD_REQUEST for e in errors)
    reader.close()
    default_reader.close()
    with pytest.raises(RecallError) as info:
        env.client.recall(user_ids=[1])
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert env.client.recall(hist_item=[[5]], top_k=3).items == exact(env.nets["v1"], [[5]], 3)
    assert env.metrics.requests.labels(status="bad_request")._value.get() >= len(BAD) + 2


def _topics(env: Env) -> set[str]:
    return set(make_admin(env.kafka.client_config()).list_topics(timeout=10).topics)


def test_refused_or_missing_reply_topics_are_answered_on_the_replies_topic_and_never_created(env: Env) -> None:
    """A worker never creates a topic by replying into it (on this auto-creating broker every bogus name
    would become a topic) nor writes into the stack's own topics: such requests get a bad_request reply on
    the default replies topic, echoing their correlation id, and their offsets advance."""
    missing = f"{env.kafka.replies_topic}.new-{uuid.uuid4().hex[:8]}"
    cases = {
        "missing": (missing, "does not exist"),
        "stack": (env.kafka.requests_topic, "internal or stack topic"),
        "internal": ("__consumer_offsets", "internal or stack topic"),
        "elsewhere": ("someone.elses.topic", "recall.reply_to_allowed"),
        "newline": (f"{env.kafka.replies_topic}\n", "not a Kafka topic name"),
    }
    default_reader = _raw_reader(env, env.kafka.replies_topic, from_end=True)
    producer = make_producer(env.kafka.client_config())
    for cid, (topic, _) in cases.items():
        headers = [(CORRELATION_ID, cid), (REPLY_TO, topic)]
        producer.produce(env.kafka.requests_topic, value=b'{"hist_item": [[5]], "top_k": 3}', headers=headers)
    assert producer.flush(10) == 0
    try:
        replies = {get_header(m.headers(), CORRELATION_ID): m for m in _collect(default_reader, len(cases))}
    finally:
        default_reader.close()
    assert set(replies) == set(cases)
    for cid, (_, reason) in cases.items():
        reply = decode_reply(replies[cid].value())
        assert isinstance(reply, ErrorReply) and reply.code is ErrorCode.BAD_REQUEST, cid
        assert reason in reply.message, (cid, reply.message)
    assert missing not in _topics(env)
    assert env.client.recall(hist_item=[[5]], top_k=3).items == exact(env.nets["v1"], [[5]], 3)


def test_a_reply_topic_created_just_before_the_request_gets_its_reply(env: Env) -> None:
    """The worker's list of topics is read again when a request names one it does not know."""
    topic = f"{env.kafka.replies_topic}.late-{uuid.uuid4().hex[:8]}"
    ensure_topics(env.kafka.client_config(), [topic])
    reader = _raw_reader(env, topic)
    producer = make_producer(env.kafka.client_config())
    headers = [(CORRELATION_ID, "late"), (REPLY_TO, topic)]
    producer.produce(env.kafka.requests_topic, value=b'{"hist_item": [[5]], "top_k": 3}', headers=headers)
    assert producer.flush(10) == 0
    try:
        (msg,) = _collect(reader, 1)
    finally:
        reader.close()
    reply = decode_reply(msg.value())
    assert get_header(msg.headers(), CORRELATION_ID) == "late"
    assert isinstance(reply, RecallReply) and reply.items == exact(env.nets["v1"], [[5]], 3)


def test_expired_requests_are_shed_and_fresh_ones_served(env: Env) -> None:
    topic = f"{env.kafka.replies_topic}.deadline"
    ensure_topics(env.kafka.client_config(), [topic])
    reader = _raw_reader(env, topic)
    producer = make_producer(env.kafka.client_config())
    now_ms = int(time.time() * 1000)
    for cid, deadline in (("stale", now_ms - 60_000), ("fresh", now_ms + 60_000)):
        headers = [(CORRELATION_ID, cid), (REPLY_TO, topic), (DEADLINE_MS, str(deadline))]
        producer.produce(env.kafka.requests_topic, value=b'{"hist_item": [[5]], "top_k": 3}', headers=headers)
    producer.flush(10)
    replies = {get_header(m.headers(), CORRELATION_ID): decode_reply(m.value()) for m in _collect(reader, 2)}
    reader.close()
    stale, fresh = replies["stale"], replies["fresh"]
    assert isinstance(stale, ErrorReply) and stale.code is ErrorCode.TIMEOUT and "not searched" in stale.message
    assert isinstance(fresh, RecallReply) and fresh.items == exact(env.nets["v1"], [[5]], 3)
    assert env.metrics.requests.labels(status="timeout")._value.get() >= 1


def test_client_times_out_without_a_worker(env: Env) -> None:
    lonely = env.kafka.model_copy(update={"requests_topic": f"{env.kafka.requests_topic}.nobody"})
    ensure_topics(env.kafka.client_config(), [lonely.requests_topic])
    with RecallClient(lonely, env.recall) as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.recall(hist_item=[[1]], timeout=0.5)
        # not before its timeout; the upper bound is liveness (the deadline fires), not a speed claim
        assert 0.4 < time.monotonic() - started < 10.0
        assert client.pending() == 0


def test_swap_is_picked_up_and_never_mixes_versions(env: Env) -> None:
    seen: list[tuple[list[list[int]], RecallReply]] = []
    errors: list[Exception] = []
    done = threading.Event()

    def load() -> None:
        i = 0
        while not done.is_set():
            hist = [[i % 150 + 1, (i * 7) % 150 + 1], [(i * 13) % 150 + 1]]
            try:
                seen.append((hist, env.client.recall(hist_item=hist, top_k=8)))
            except Exception as exc:
                errors.append(exc)
            i += 1

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    wait = time.monotonic() + 20
    while len(seen) < 3 and not errors and time.monotonic() < wait:  # v1 is answering under load
        time.sleep(0.02)
    version, net = publish(env.store, env.root, env.alias, 160, seed=2)
    env.nets[version] = net
    env.store.drop_collection(f"{env.alias}_v1")  # in-flight batches on v1 must retry on v2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (seen and seen[-1][1].model_version == "v2"):
        time.sleep(0.05)
    first_v2 = len(seen)
    while time.monotonic() < deadline and len(seen) < first_v2 + 5:  # a few more replies after the swap
        time.sleep(0.02)
    done.set()
    thread.join(15)
    assert errors == []
    versions = [reply.model_version for _, reply in seen]
    assert versions[0] == "v1" and versions[-1] == "v2"
    assert versions == sorted(versions)  # never back to v1 once v2 answered
    for hist, reply in seen:
        assert reply.collection == f"{env.alias}_{reply.model_version}"
        assert reply.items == exact(env.nets[reply.model_version], hist, 8)
