"""The streaming core end to end on the real embedded broker and Milvus: clicks -> ingest -> refresh
(train, shadow, verify, swap) -> recall over Kafka. Brand-new items become recallable, and recall
load keeps answering, error-free, through several swaps, each reply exactly the answer of the model
version it names."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from model.checkpoint import Checkpoint, open_checkpoint
from model.config import MindConfig, TrainConfig
from model.data.types import Sequences
from model.train import Trainer, train
from schemas.codec import encode
from schemas.messages import ClickEvent, RecallReply
from tests.workers.model_fixtures import exact_recall_of
from workers.infra.kafka import ensure_topics, make_producer
from workers.infra.vector_store import VectorStore
from workers.ingest.metrics import IngestMetrics
from workers.ingest.state_reader import StateReader
from workers.ingest.worker import IngestWorker
from workers.recall.client import RecallClient
from workers.recall.metrics import RecallMetrics
from workers.recall.worker import build_worker
from workers.refresh.generations import Generations
from workers.refresh.metrics import RefreshMetrics
from workers.refresh.registry import ModelRegistry
from workers.refresh.worker import RefreshWorker
from workers.runtime import StopFlag
from workers.settings import (
    EvalSettings,
    KafkaSettings,
    MilvusSettings,
    RecallSettings,
    RefreshSettings,
    Settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIND = MindConfig(dim=8, k_max=2, maxlen=6)
TRAIN = TrainConfig(batch_size=32, negatives=16, lr=0.02, seed=5)
NEW_ITEMS = range(41, 46)
LOAD_HISTORIES = [[1, 2, 3, 4], [11, 12, 13]]


def _base(root: Path) -> tuple[Checkpoint, Sequences]:
    """A tiny model trained on items 1..40 in 4 clusters of 10 (each user clicks in one cluster)."""
    rng = np.random.default_rng(0)
    seqs = [[int(c * 10 + rng.integers(1, 11)) for _ in range(rng.integers(8, 16))] for c in rng.integers(0, 4, 80)]
    data = Sequences.from_lists(list(range(1, 81)), seqs, item_count=41)
    train(Trainer(data, MIND, TRAIN), batches=150, checkpoint_dir=root)
    return open_checkpoint(root, "latest"), data


@dataclass
class Stack:
    settings: Settings
    store: VectorStore
    client: RecallClient
    stop: StopFlag
    threads: list[threading.Thread] = field(default_factory=list)

    def produce(self, events: list[ClickEvent]) -> None:
        producer = make_producer(self.settings.kafka.client_config())
        for e in events:
            producer.produce(self.settings.kafka.clicks_topic, encode(e), key=e.kafka_key())
        producer.flush(10)

    def live(self) -> str | None:
        """The version readers use now: announced on the live collection (a delta), else its own."""
        collection = self.store.resolve_alias(self.settings.milvus.alias)
        if collection is None:
            return None
        announced = Generations.load(self.store, collection).version
        return announced or ModelRegistry(self.settings.models_dir, self.settings.milvus.alias).version_of(collection)

    def wait_for_live(self, version: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.live() == version:
                return
            time.sleep(0.3)
        raise AssertionError(f"{version} never went live (live: {self.live()})")


@pytest.fixture
def stack(tmp_path: Path, kafka_bootstrap: str, milvus_uri: str) -> Iterator[Stack]:
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        state_dir=tmp_path / "state",
        mind=MIND,
        train=TRAIN,
        eval=EvalSettings(top_n=10),
        milvus=MilvusSettings(uri=milvus_uri, alias=f"e2e_{suffix}", index_type="FLAT"),
        kafka=KafkaSettings(
            bootstrap_servers=kafka_bootstrap,
            clicks_topic=f"clicks-{suffix}",
            clicks_dlq_topic=f"clicks-dlq-{suffix}",
            requests_topic=f"requests-{suffix}",
            replies_topic=f"replies-{suffix}",
            ingest_group=f"ingest-{suffix}",
            recall_group=f"recall-{suffix}",
        ),
        refresh=RefreshSettings(
            interval_s=1.0,
            train_batches=150,
            replay_users=40,
            grace_period_s=0,
            probe_items=5,
            poll_s=0.2,
            delta_threshold=0.0,  # every moved row written: a reply must equal its version's exact answer
        ),
        recall=RecallSettings(alias_check_s=0.2, client_timeout_s=10.0),
    )
    kafka = settings.kafka
    conf = kafka.client_config()
    ensure_topics(conf, [kafka.clicks_topic, kafka.clicks_dlq_topic, kafka.requests_topic, kafka.replies_topic])
    base, data = _base(tmp_path / "base")
    stop = StopFlag()
    store, refresh_store, recall_store = (VectorStore(milvus_uri, settings.milvus) for _ in range(3))
    refresh = RefreshWorker(
        settings,
        refresh_store,
        StateReader(settings.state_dir, kafka.clicks_topic),
        replay=data,
        metrics=RefreshMetrics(CollectorRegistry()),
    )
    refresh.bootstrap(base)
    ingest = IngestWorker(
        conf,
        topic=kafka.clicks_topic,
        dlq_topic=kafka.clicks_dlq_topic,
        group_id=kafka.ingest_group,
        session_timeout_ms=kafka.session_timeout_ms,
        state_dir=settings.state_dir,
        batch_size=500,
        batch_timeout_s=0.1,
        dlq_flush_timeout_s=10,
        stats_interval_ms=0,
        metrics=IngestMetrics(CollectorRegistry()),
    )
    recall = build_worker(
        settings,
        conf,
        recall_store,
        StateReader(settings.state_dir, kafka.clicks_topic),
        RecallMetrics(CollectorRegistry()),
    )
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in (ingest, refresh, recall)]
    for t in threads:
        t.start()
    client = RecallClient(kafka, settings.recall)
    try:
        yield Stack(settings, store, client, stop, threads)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        client.close()
        refresh.close()
        for s in (store, refresh_store, recall_store):
            s.close()


def _cluster_zero_clicks(first_user: int, users: int, start_ts: int, rng: np.random.Generator) -> list[ClickEvent]:
    """Users living in cluster 0 (items 1..10) who also click brand-new items 41..45."""
    events = []
    ts = start_ts
    for user in range(first_user, first_user + users):
        for _ in range(12):
            ts += 1
            item = int(rng.choice(NEW_ITEMS)) if rng.random() < 0.5 else int(rng.integers(1, 11))
            events.append(ClickEvent(event_id=f"e-{user}-{ts}", user_id=user, item_id=item, ts=ts))
    return events


def test_new_items_become_recallable_and_load_survives_deltas(stack: Stack) -> None:
    epoch = f"{stack.settings.milvus.alias}_v1"  # deltas: every version is published into this collection
    stack.wait_for_live("v1")
    assert stack.client.recall(hist_item=[[1, 2, 3]], top_k=5).model_version == "v1"

    replies: list[RecallReply] = []
    errors: list[str] = []
    load_stop = threading.Event()

    def load() -> None:  # steady recall load through every swap below
        while not load_stop.is_set():
            try:
                replies.append(stack.client.recall(hist_item=LOAD_HISTORIES, top_k=10))
            except Exception as exc:
                errors.append(repr(exc))
            time.sleep(0.02)

    def replied_by(version: str) -> bool:
        return any(r.model_version == version for r in list(replies))

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    rng = np.random.default_rng(1)

    # Swap 1: clicks involving brand-new items -> refresh -> v2 serves them to users near them.
    stack.produce(_cluster_zero_clicks(1000, 30, 0, rng))
    stack.wait_for_live("v2")
    deadline = time.monotonic() + 15  # the recall worker picks the swap up within alias_check_s + a load
    reply = stack.client.recall(user_ids=[1000], top_k=10)  # history streamed through ingest
    while reply.model_version != "v2" and time.monotonic() < deadline:
        time.sleep(0.2)
        reply = stack.client.recall(user_ids=[1000], top_k=10)
    assert reply.model_version == "v2" and reply.collection == epoch and reply.generation >= 1
    assert set(reply.items[0]) & set(NEW_ITEMS), reply.items
    by_hist = stack.client.recall(hist_item=[[1, 2, 41, 42]], top_k=10)
    assert set(by_hist.items[0]) & set(NEW_ITEMS)

    # Swaps 2 and 3, under the same load.
    for n, first_user in ((3, 2000), (4, 3000)):
        stack.produce(_cluster_zero_clicks(first_user, 10, n * 10_000, rng))
        stack.wait_for_live(f"v{n}")
    deadline = time.monotonic() + 30  # the load has been answered by the last version
    while not replied_by("v4") and time.monotonic() < deadline and loader.is_alive():
        time.sleep(0.1)
    load_stop.set()
    loader.join(timeout=30)

    assert not errors, errors[:5]
    assert len(replies) > 20
    assert all(len(r.items) == 2 and all(r.items) for r in replies), "an empty reply"
    assert all(r.collection == epoch for r in replies), "a reply names a foreign collection"
    seen = [r.model_version for r in replies]
    assert {"v1", "v4"} <= set(seen)
    assert seen == sorted(seen, key=lambda v: int(v[1:])), "versions went backwards"
    # Never mixed: every reply is exactly the answer of the version it names (user tower and item
    # vectors of that one checkpoint, brute force in numpy: FLAT search is exact).
    exact = {
        version: exact_recall_of(open_checkpoint(stack.settings.models_dir, version), LOAD_HISTORIES, 10)
        for version in set(seen)
    }
    wrong = [(r.model_version, r.items) for r in replies if r.items != exact[r.model_version]]
    assert not wrong, f"{len(wrong)} of {len(replies)} replies differ from their version's exact answer: {wrong[:2]}"
