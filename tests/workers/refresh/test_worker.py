"""The refresh worker against the real embedded Milvus: bootstrap, incremental round with brand-new
items, swap, nothing-new rounds, orphan clean-up, quality gate and rollback."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from model.checkpoint import Checkpoint, open_checkpoint
from model.config import MindConfig, TrainConfig
from model.data.types import HeldOut, Sequences
from model.evaluate import recommend
from model.export import UserTower
from model.net import MindNet
from model.train import Trainer, train
from schemas.messages import ClickEvent
from workers.infra.vector_store import MilvusSearcher, VectorStore
from workers.ingest.state_reader import StateReader
from workers.ingest.state_store import PartitionStore
from workers.refresh.metrics import RefreshMetrics
from workers.refresh.publish import VerifyError
from workers.refresh.state import RefreshState
from workers.refresh.worker import RefreshWorker
from workers.settings import EvalSettings, MilvusSettings, RefreshSettings, Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIND = MindConfig(dim=8, k_max=2, maxlen=6)
TRAIN = TrainConfig(batch_size=32, negatives=16, lr=0.02, seed=5)


def _cluster_seqs(rng: np.random.Generator, users: int = 80) -> Sequences:
    """Items 1..40 in 4 clusters of 10; each user clicks inside one cluster."""
    seqs = [[int(c * 10 + rng.integers(1, 11)) for _ in range(rng.integers(8, 16))] for c in rng.integers(0, 4, users)]
    return Sequences.from_lists(list(range(1, users + 1)), seqs, item_count=41)


@pytest.fixture
def base(tmp_path: Path) -> tuple[Checkpoint, Sequences]:
    seqs = _cluster_seqs(np.random.default_rng(0))
    train(Trainer(seqs, MIND, TRAIN), batches=150, checkpoint_dir=tmp_path / "base")
    return open_checkpoint(tmp_path / "base", "latest"), seqs


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        mind=MIND,
        train=TRAIN,
        eval=EvalSettings(top_n=5),  # 40 items: top-50 would find everything
        milvus=MilvusSettings(alias=f"t_{uuid.uuid4().hex[:10]}", index_type="FLAT"),
        refresh=RefreshSettings(
            train_batches=150,
            replay_users=40,
            grace_period_s=0,
            keep_previous=1,
            probe_items=5,
            publication="full",  # every round a new epoch: the swap path (deltas: test_delta.py)
        ),
    )


def _click(event_id: str, user: int, item: int, ts: int, segment: str | None = None) -> ClickEvent:
    return ClickEvent(event_id=event_id, user_id=user, item_id=item, ts=ts, segment=segment)


def test_refresh_round_learns_new_items_and_swaps(
    settings: Settings, base: tuple[Checkpoint, Sequences], milvus_uri: str
) -> None:
    base_ckpt, seqs = base
    metrics = RefreshMetrics(CollectorRegistry())
    with (
        VectorStore(milvus_uri, settings.milvus) as store,
        StateReader(settings.state_dir, "clicks") as reader,
    ):
        worker = RefreshWorker(settings, store, reader, replay=seqs, metrics=metrics)
        alias = settings.milvus.alias
        worker.bootstrap(base_ckpt)
        assert store.resolve_alias(alias) == f"{alias}_v1"
        assert worker.run_round() is None  # nothing new -> nothing built

        # 30 new users live in cluster 0 (items 1..10) and also click brand-new items 41..45.
        rng = np.random.default_rng(1)
        events, ts = [], 0
        for user in range(1000, 1030):
            for _ in range(12):
                ts += 1
                item = int(rng.integers(41, 46)) if rng.random() < 0.5 else int(rng.integers(1, 11))
                events.append(_click(f"e{ts}", user, item, ts, segment="eu-west" if item > 40 else None))
        store_p0 = PartitionStore.open(settings.state_dir, "clicks", 0)
        store_p0.apply(events, "clicks", 0, last_offset=len(events) - 1)
        store_p0.close()

        report = worker.run_round()
        assert report is not None and report.error is None, report
        assert report.published is not None and report.published.swapped
        assert report.events == 360 and report.users == 30
        assert store.resolve_alias(alias) == f"{alias}_v2"
        assert store.count(f"{alias}_v2") == 45  # the table grew: 40 old + 5 new items
        assert store.count(f"{alias}_v2", segment="x_" + b"eu-west".hex()) == 5  # the segment's partition
        assert set(report.published.phases) >= {"export", "insert", "index", "verify", "swap"}
        assert metrics.swaps._value.get() == 1  # type: ignore[attr-defined]

        v2 = open_checkpoint(settings.models_dir, "v2")
        assert v2.manifest.parent == "v1" and v2.manifest.item_count == 46
        tower = UserTower(v2.load_net(), "v2")
        recs = recommend(tower, MilvusSearcher(store, alias), [np.array([1, 2, 3, 41, 42, 43])], 10)
        assert set(recs[0].tolist()) & {41, 42, 43, 44, 45}

        assert worker.run_round() is None  # the cursor moved past those events

        # A shadow left by a crashed round is an orphan: the next round drops it.
        store.create_collection(f"{alias}_v99", MIND.dim)
        worker.request()
        before_forced = store.resolve_alias(alias)
        forced = worker.run_round(force=worker.due(RefreshState.load(worker.state_path))[1])
        assert forced is not None and f"{alias}_v99" in forced.dropped
        assert not store.has_collection(f"{alias}_v99")
        assert forced.published is not None and forced.published.swapped, forced
        newest = store.resolve_alias(alias)
        assert before_forced == f"{alias}_v2" and newest is not None and newest != before_forced

        # Rollback: the alias goes back to the collection live before the last swap (read from Milvus
        # above, not from the worker), and the newer one is kept, superseded, for a roll forward.
        target, previous = worker.rollback()
        assert (target, previous) == (before_forced, newest)
        assert store.resolve_alias(alias) == before_forced
        assert store.has_collection(newest) and store.count(newest) == store.count(before_forced)
        superseded = {s.collection for s in RefreshState.load(worker.state_path).superseded}
        assert newest in superseded and before_forced not in superseded, superseded
        worker.close()


def test_quality_gate_keeps_live(settings: Settings, base: tuple[Checkpoint, Sequences], milvus_uri: str) -> None:
    base_ckpt, seqs = base
    held = HeldOut(
        seqs.user_ids,
        [seqs.sequence(i)[:-2] for i in range(seqs.num_users)],
        [seqs.sequence(i)[-2:] for i in range(seqs.num_users)],
    )
    with (
        VectorStore(milvus_uri, settings.milvus) as store,
        StateReader(settings.state_dir, "clicks") as reader,
    ):
        worker = RefreshWorker(settings, store, reader, replay=seqs, quality=held)
        worker.bootstrap(base_ckpt)
        # an untrained model is far worse than the live one: the gate must refuse it
        from model.checkpoint import save_checkpoint

        bad = save_checkpoint(
            settings.models_dir,
            MindNet(MIND, 41, seed=9),
            None,
            parent="v1",
            step=0,
            data_fingerprint="x",
            train={},
            metrics={},
        )
        state = RefreshState.load(worker.state_path)
        with pytest.raises(VerifyError, match="quality gate"):
            worker.publisher.publish(bad, state, quality=held)
        alias = settings.milvus.alias
        assert store.resolve_alias(alias) == f"{alias}_v1"
        assert worker.publisher.cleanup(state) == [f"{alias}_v2"]
        worker.close()


def test_a_backlog_is_taken_in_capped_slices_even_when_histories_run_ahead(
    settings: Settings, base: tuple[Checkpoint, Sequences], milvus_uri: str
) -> None:
    """With ``max_events_per_round`` a round reads a slice, but it trains on the touched users' whole
    recent histories, which may hold brand-new items from later in the backlog (the id space must
    grow to them, or the round fails)."""
    settings = settings.model_copy(
        update={"refresh": settings.refresh.model_copy(update={"max_events_per_round": 100, "train_batches": 40})}
    )
    base_ckpt, seqs = base
    with (
        VectorStore(milvus_uri, settings.milvus) as store,
        StateReader(settings.state_dir, "clicks") as reader,
    ):
        worker = RefreshWorker(settings, store, reader, replay=seqs)
        worker.bootstrap(base_ckpt)
        events, ts = [], 0
        for phase_items in ((1, 11), (41, 46)):  # old items first; brand-new ones only at the end
            for user in range(1000, 1015):
                for _ in range(8):
                    ts += 1
                    events.append(_click(f"e{ts}", user, int(np.random.default_rng(ts).integers(*phase_items)), ts))
        writer = PartitionStore.open(settings.state_dir, "clicks", 0)
        writer.apply(events, "clicks", 0, last_offset=len(events) - 1)
        writer.close()

        slices = []
        while (report := worker.run_round()) is not None:
            assert report.error is None and report.published is not None and report.published.swapped, report
            slices.append(report.events)
        assert slices == [100, 100, 40]
        assert RefreshState.load(worker.state_path).events_seen == 240
        live = store.resolve_alias(settings.milvus.alias)
        assert live is not None and store.count(live) == 45, "the table grew to the new items 41..45"
        worker.close()


def test_a_round_adds_at_most_max_new_items_and_the_rest_wait_in_order(
    settings: Settings, base: tuple[Checkpoint, Sequences], milvus_uri: str
) -> None:
    """``max_new_items_per_round`` 2 and five new items: each round's table grows by two at most (from its
    clicks, oldest first, or from the touched users' histories), the clicks after the cut wait for the next
    round, and after three rounds every click is taken and every item is in (none lost)."""
    settings = settings.model_copy(
        update={"refresh": settings.refresh.model_copy(update={"max_new_items_per_round": 2, "train_batches": 40})}
    )
    base_ckpt, seqs = base
    registry = CollectorRegistry()
    events, ts = [], 0
    for new_item in range(41, 46):  # a wave of users per new item, each also clicking known items
        for user in range(new_item * 100, new_item * 100 + 3):
            for item in (1, 2, 3, new_item, 4):
                ts += 1
                events.append(_click(f"e{ts}", user, item, ts))
    with (
        VectorStore(milvus_uri, settings.milvus) as store,
        StateReader(settings.state_dir, "clicks") as reader,
    ):
        worker = RefreshWorker(settings, store, reader, replay=seqs, metrics=RefreshMetrics(registry))
        worker.bootstrap(base_ckpt)
        writer = PartitionStore.open(settings.state_dir, "clicks", 0)
        writer.apply(events, "clicks", 0, last_offset=len(events) - 1)
        writer.close()

        reports = []
        versions = [base_ckpt.vocab()]  # each live version's vocabulary (older model directories are pruned)
        while (report := worker.run_round()) is not None:
            assert report.error is None and report.published is not None and report.published.swapped, report
            reports.append(report)
            live_ckpt = worker.live_checkpoint()
            assert live_ckpt is not None
            versions.append(live_ckpt.vocab())
        assert [v.items for v in versions] == [40, 42, 44, 45]
        assert [v.ids[41:].tolist() for v in versions[1:]] == [[41, 42], [41, 42, 43, 44], [41, 42, 43, 44, 45]]
        assert [r.events for r in reports] == [33, 30, 12]  # each round stops before its third new item
        assert [r.deferred_items for r in reports] == [3, 1, 0]
        assert RefreshState.load(worker.state_path).events_seen == len(events)
        assert registry.get_sample_value("mindstream_refresh_new_items_deferred_total", {"path": "round"}) == 4
        live = store.resolve_alias(settings.milvus.alias)
        assert live is not None and store.count(live) == 45
        worker.close()
