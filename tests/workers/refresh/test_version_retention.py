"""Version retention against the real embedded Milvus: model directories beyond ``keep_versions``
go, the live one and the rollback target stay, and rollback (then another round) still works."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from model.checkpoint import open_checkpoint
from model.config import MindConfig, TrainConfig
from model.data.types import Sequences
from model.evaluate import recommend
from model.export import UserTower
from model.train import Trainer, train
from schemas.messages import ClickEvent
from workers.infra.vector_store import MilvusSearcher, VectorStore
from workers.ingest.state_reader import StateReader
from workers.ingest.state_store import PartitionStore
from workers.refresh.worker import RefreshWorker
from workers.settings import EvalSettings, MilvusSettings, RefreshSettings, Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIND = MindConfig(dim=8, k_max=2, maxlen=6)
TRAIN = TrainConfig(batch_size=32, negatives=16, lr=0.02, seed=5)


def _feed(settings: Settings, rng: np.random.Generator, round_: int) -> None:
    store = PartitionStore.open(settings.state_dir, "clicks", 0)
    events = [
        ClickEvent(event_id=f"r{round_}-{n}", user_id=1000 + n % 20, item_id=int(rng.integers(1, 41)), ts=n)
        for n in range(200)
    ]
    store.apply(events, "clicks", 0, last_offset=200 * round_ + 199)
    store.close()


def test_old_versions_go_live_and_rollback_target_stay(tmp_path: Path, milvus_uri: str) -> None:
    rng = np.random.default_rng(0)
    seqs = Sequences.from_lists(
        list(range(1, 61)), [[int(x) for x in rng.integers(1, 41, 10)] for _ in range(60)], item_count=41
    )
    train(Trainer(seqs, MIND, TRAIN), batches=60, checkpoint_dir=tmp_path / "base")
    settings = Settings(
        state_dir=tmp_path / "state",
        mind=MIND,
        train=TRAIN,
        eval=EvalSettings(top_n=5),
        milvus=MilvusSettings(alias=f"t_{uuid.uuid4().hex[:10]}", index_type="FLAT"),
        refresh=RefreshSettings(
            train_batches=30,
            replay_users=20,
            grace_period_s=0,
            keep_previous=1,
            keep_versions=1,
            probe_items=5,
            publication="full",  # versions as collections
        ),
    )
    alias = settings.milvus.alias
    with (
        VectorStore(milvus_uri, settings.milvus) as store,
        StateReader(settings.state_dir, "clicks") as reader,
    ):
        worker = RefreshWorker(settings, store, reader, replay=seqs)
        worker.bootstrap(open_checkpoint(tmp_path / "base", "latest"))
        pruned: list[str] = []
        for round_ in range(4):  # v2 .. v5
            _feed(settings, rng, round_)
            report = worker.run_round()
            assert report is not None and report.published is not None and report.published.swapped, report
            pruned += report.pruned
        assert store.resolve_alias(alias) == f"{alias}_v5"
        held = {worker.registry.version_of(name) for name in store.list_collections(alias + "_v")}
        assert held == {"v3", "v4", "v5"}, "live, the rollback target and the one past keep_previous"
        assert worker.registry.versions() == ["v3", "v4", "v5"], "every directory Milvus still serves stays"
        assert pruned == ["v1", "v2"]

        # The next round drops v3's collection, then its directory (beyond keep_versions, not held).
        _feed(settings, rng, 4)
        report = worker.run_round()
        assert report is not None and report.pruned == ["v3"] and report.dropped == [f"{alias}_v3"], report
        assert worker.registry.versions() == ["v4", "v5", "v6"]

        # Rollback to v5 (the superseded collection), serve from it, then round again from it.
        target, previous = worker.rollback()
        assert (target, previous) == (f"{alias}_v5", f"{alias}_v6")
        v5 = worker.registry.checkpoint("v5")
        recs = recommend(
            UserTower(v5.load_net(), "v5", vocab=v5.vocab()), MilvusSearcher(store, alias), [np.array([1, 2, 3])], 5
        )
        assert len(recs[0]) == 5
        _feed(settings, rng, 5)
        report = worker.run_round()
        assert report is not None and report.published is not None and report.published.swapped, report
        assert store.resolve_alias(alias) == f"{alias}_v7"
        assert open_checkpoint(settings.models_dir, "v7").manifest.parent == "v5"
        assert {"v5", "v7"} <= set(worker.registry.versions()), "the trained-from version and the new live stay"
        worker.close()
