"""Churn: items not clicked for ``item_ttl_s`` leave the next published version, and once enough rows
expired the table is compacted to the items still alive (real embedded Milvus).

The refresh code's wall clock is moved forward past the TTL instead of sleeping through a short one: a
TTL of seconds raced the round itself (an item clicked at the round's start could expire before its
publish)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import workers.refresh.publish
import workers.refresh.worker
from model.checkpoint import open_checkpoint
from model.config import MindConfig, TrainConfig
from model.data.types import Sequences
from model.export import item_table
from model.train import Trainer, train
from schemas.messages import ClickEvent
from workers.infra.vector_store import VectorStore
from workers.ingest.state_reader import StateReader
from workers.ingest.state_store import PartitionStore
from workers.refresh.worker import RefreshWorker
from workers.settings import EvalSettings, MilvusSettings, RefreshSettings, Settings

pytestmark = pytest.mark.integration

MIND = MindConfig(dim=8, k_max=2, maxlen=6)
TRAIN = TrainConfig(batch_size=32, negatives=16, lr=0.02, seed=5)
TTL_S = 600.0  # far longer than a round: only the clock's jump expires anything
NEW = [10**15 + 1, 10**15 + 2]


class _Later:
    """The ``time`` module as the refresh code sees it, with ``time()`` ``offset_s`` later."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def time(self) -> float:
        return time.time() + self.offset_s

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def test_expired_items_leave_the_next_version_and_the_table_is_compacted(
    tmp_path: Path, milvus_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Later()
    monkeypatch.setattr(workers.refresh.worker, "time", clock)
    monkeypatch.setattr(workers.refresh.publish, "time", clock)
    rng = np.random.default_rng(0)
    seqs = [[int(c * 10 + rng.integers(1, 11)) for _ in range(rng.integers(8, 16))] for c in rng.integers(0, 4, 80)]
    data = Sequences.from_lists(list(range(1, 81)), seqs, item_count=41)
    train(Trainer(data, MIND, TRAIN), batches=50, checkpoint_dir=tmp_path / "base")
    base = open_checkpoint(tmp_path / "base", "latest")
    settings = Settings(
        state_dir=tmp_path / "state",
        mind=MIND,
        train=TRAIN,
        eval=EvalSettings(top_n=5),
        milvus=MilvusSettings(uri=milvus_uri, alias=f"ttl_{uuid.uuid4().hex[:10]}", index_type="FLAT"),
        refresh=RefreshSettings(
            train_batches=30,
            replay_users=40,
            grace_period_s=0,
            probe_items=5,
            item_ttl_s=TTL_S,
            compact_share=0.25,
            publication="full",  # the compaction of a new epoch (a delta withdraws: test_delta.py)
        ),
    )
    with VectorStore(milvus_uri, settings.milvus) as store, StateReader(settings.state_dir, "clicks") as reader:
        worker = RefreshWorker(settings, store, reader, replay=data)
        worker.bootstrap(base)
        alias = settings.milvus.alias
        assert store.count(f"{alias}_v1") == 40  # the base's items count as seen when it was trained

        clock.offset_s = TTL_S + 60  # everything the base knew is now past the TTL ...
        clicked = [*range(1, 11), *NEW]  # ... except what these users click now
        events, ts = [], 0
        for user in range(1000, 1020):
            for _ in range(10):
                ts += 1
                item = clicked[int(rng.integers(0, len(clicked)))]
                events.append(ClickEvent(event_id=f"e{ts}", user_id=user, item_id=item, ts=ts))
        part = PartitionStore.open(settings.state_dir, "clicks", 0)
        part.apply(events, "clicks", 0, last_offset=len(events) - 1)
        part.close()
        alive = {e.item_id for e in events}

        report = worker.run_round()
        assert report is not None and report.error is None and report.published is not None, report
        v2 = open_checkpoint(settings.models_dir, "v2")
        vocab = v2.vocab()
        assert set(vocab.ids[1:].tolist()) == alive  # compacted: 30 expired rows reclaimed
        assert v2.manifest.item_count == len(alive) + 1
        assert store.count(f"{alias}_v2") == len(alive)
        found = store.search(f"{alias}_v2", item_table(v2.load_net())[1:], top_k=50, strong=True)
        assert {int(i) for row in found.ids for i in row if i} <= alive  # expired items are not recallable
