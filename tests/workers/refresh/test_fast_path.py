"""The fast path against the real embedded Milvus: new items recallable without a major round, a
crash before the announce leaves the live (version, generation) intact and the next step completes
it, and under recall load through fast-path steps, a major swap and a rollback every reply is
exactly the answer of the (version, generation) it names."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from model.checkpoint import Checkpoint, open_checkpoint
from model.config import MindConfig, TrainConfig
from model.data.types import Sequences
from model.export import UserTower
from model.metrics import merge_interests
from model.train import Trainer, train
from schemas.messages import ClickEvent, RecallReply, RecallRequest
from tests.background import Background
from tests.waiting import wait_until
from workers.infra.vector_store import VectorStore
from workers.ingest.state_reader import Cursor, StateReader
from workers.ingest.state_store import PartitionStore
from workers.recall.engine import RecallEngine
from workers.recall.live_model import LiveModel
from workers.refresh.fast_path import FastPath
from workers.refresh.generations import Generations
from workers.refresh.metrics import RefreshMetrics
from workers.refresh.registry import ModelRegistry
from workers.refresh.worker import RefreshWorker
from workers.settings import EvalSettings, MilvusSettings, RefreshSettings, Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIND = MindConfig(dim=8, k_max=2, maxlen=6)
TRAIN = TrainConfig(batch_size=32, negatives=16, lr=0.02, seed=5)
NEW = [10**13 + 1, 10**13 + 2]
HISTORY = [1, 2, 3, NEW[0]]  # cluster 0 plus a new item


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Sequences]:
    """One trained base for the module (each test bootstraps its own alias from it; nothing writes it)."""
    rng = np.random.default_rng(0)
    seqs = [[int(c * 10 + rng.integers(1, 11)) for _ in range(rng.integers(8, 16))] for c in rng.integers(0, 4, 80)]
    data = Sequences.from_lists(list(range(1, 81)), seqs, item_count=41)
    root = tmp_path_factory.mktemp("base")
    train(Trainer(data, MIND, TRAIN), batches=100, checkpoint_dir=root)
    return open_checkpoint(root, "latest"), data


@pytest.fixture
def settings(tmp_path: Path, milvus_uri: str) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        mind=MIND,
        train=TRAIN,
        eval=EvalSettings(top_n=5),
        milvus=MilvusSettings(uri=milvus_uri, alias=f"fp_{uuid.uuid4().hex[:10]}", index_type="FLAT"),
        refresh=RefreshSettings(train_batches=30, replay_users=20, grace_period_s=0, probe_items=5, publication="full"),
    )


def _write_clicks(settings: Settings, first_user: int, items: list[int], seed: int, first_offset: int = 0) -> None:
    rng = np.random.default_rng(seed)
    events, ts = [], first_offset
    for user in range(first_user, first_user + 10):
        for _ in range(8):
            ts += 1
            item = int(rng.choice(items)) if rng.random() < 0.5 else int(rng.integers(1, 11))
            events.append(ClickEvent(event_id=f"e{first_user}-{ts}", user_id=user, item_id=item, ts=ts))
    part = PartitionStore.open(settings.state_dir, "clicks", 0)
    part.apply(events, "clicks", 0, last_offset=first_offset + len(events) - 1)
    part.close()


def _exact(store: VectorStore, settings: Settings, reply: RecallReply, top_k: int) -> list[int]:
    """Brute force over the rows of the reply's collection up to its generation, with its version's tower."""
    rows = store.client.query(
        reply.collection,
        filter=store.visible_at(reply.collection, reply.generation),
        output_fields=["item_id", "vector"],
        consistency_level="Strong",
    )
    ids = np.array([int(r["item_id"]) for r in rows], dtype=np.int64)
    vectors = np.array([r["vector"] for r in rows], dtype=np.float32)
    ckpt = open_checkpoint(settings.models_dir, reply.model_version)
    interests = UserTower(ckpt.load_net(), reply.model_version, vocab=ckpt.vocab()).interests([HISTORY])
    scores = interests @ vectors.T
    order = np.argsort(-scores, axis=2, kind="stable")[:, :, :top_k]
    merged = merge_interests(ids[order], np.take_along_axis(scores, order, axis=2), top_k)
    return merged[0].tolist()


def _engine(settings: Settings, store: VectorStore) -> RecallEngine:
    live = LiveModel(store, ModelRegistry(settings.models_dir, settings.milvus.alias), check_every_s=0.05)
    return RecallEngine(live, store, None)


def _ask(engine: RecallEngine, top_k: int = 42) -> RecallReply:
    reply = engine.answer([RecallRequest(hist_item=[HISTORY], top_k=top_k)])[0]
    assert isinstance(reply, RecallReply), reply
    return reply


def test_new_items_recallable_after_a_fast_path_step(
    settings: Settings, base: tuple[Checkpoint, Sequences], milvus_uri: str
) -> None:
    with VectorStore(milvus_uri, settings.milvus) as store, StateReader(settings.state_dir, "clicks") as reader:
        RefreshWorker(settings, store, reader).bootstrap(base[0])
        engine = _engine(settings, store)
        before = _ask(engine)
        assert (before.model_version, before.generation) == ("v1", 0)
        assert not set(NEW) & set(before.items[0])

        _write_clicks(settings, 1000, NEW, seed=1)
        report = FastPath(settings, store, reader, cursor=Cursor()).step()
        assert report is not None and report.generation == 1 and sorted(report.added) == NEW
        assert Generations.load(store, f"{settings.milvus.alias}_v1").generation == 1
        assert store.count(f"{settings.milvus.alias}_v1") == 40 + len(NEW)  # added to the live collection

        after = _ask(engine)
        assert (after.model_version, after.generation) == ("v1", 1)  # no major round
        assert set(NEW) <= set(after.items[0])  # 42 of 42 items: both new ones are recallable
        assert after.items[0] == _exact(store, settings, after, 42)


def test_crash_before_announce_leaves_live_intact_and_the_next_step_completes_it(
    settings: Settings, base: tuple[Checkpoint, Sequences], milvus_uri: str
) -> None:
    def crash() -> None:
        raise SystemExit("killed between insert and announce")

    alias = settings.milvus.alias
    with VectorStore(milvus_uri, settings.milvus) as store, StateReader(settings.state_dir, "clicks") as reader:
        RefreshWorker(settings, store, reader).bootstrap(base[0])
        engine = _engine(settings, store)
        _write_clicks(settings, 1000, NEW, seed=1)
        with pytest.raises(SystemExit):
            FastPath(settings, store, reader, cursor=Cursor(), before_announce=crash).step()
        assert store.count(f"{alias}_v1") == 40 + len(NEW)  # the orphan rows exist ...
        reply = _ask(engine)
        assert (reply.model_version, reply.generation) == ("v1", 0)  # ... but live is (v1, 0)
        assert not set(NEW) & set(reply.items[0]) and len(reply.items[0]) == 40

        report = FastPath(settings, store, reader, cursor=Cursor()).step()  # a restarted worker
        assert report is not None and report.generation == 1
        assert store.count(f"{alias}_v1") == 40 + len(NEW)  # orphans replaced, nothing duplicated
        after = _ask(engine)
        assert (after.model_version, after.generation) == ("v1", 1) and set(NEW) <= set(after.items[0])


def test_replies_never_mix_versions_or_generations_through_steps_swap_and_rollback(
    settings: Settings, base: tuple[Checkpoint, Sequences], milvus_uri: str
) -> None:
    alias = settings.milvus.alias
    with VectorStore(milvus_uri, settings.milvus) as store, StateReader(settings.state_dir, "clicks") as reader:
        worker = RefreshWorker(settings, store, reader, replay=base[1])
        worker.bootstrap(base[0])
        registry = CollectorRegistry()
        fast = FastPath(settings, store, reader, cursor=Cursor(), metrics=RefreshMetrics(registry))
        engine = _engine(settings, store)
        replies: list[RecallReply] = []
        loading = True

        def load() -> None:
            while loading:
                replies.append(_ask(engine, top_k=10))

        def answered_by(key: tuple[str, int], after: int = 0) -> Callable[[], RecallReply | None]:
            """The load's first reply from ``key`` (version, generation) among its replies from ``after`` on."""
            return lambda: next((r for r in replies[after:] if (r.model_version, r.generation) == key), None)

        loader = Background(load, "recall load").start()
        try:  # each state is answered by the load before the next one begins
            wait_until(answered_by(("v1", 0)), 30, "the load answered by (v1, 0)", watch=[loader])
            _write_clicks(settings, 1000, NEW[:1], seed=1)
            assert fast.step() is not None
            wait_until(answered_by(("v1", 1)), 30, "the load answered by (v1, 1)", watch=[loader])
            _write_clicks(settings, 2000, NEW[1:], seed=2, first_offset=1000)
            assert fast.step() is not None
            wait_until(answered_by(("v1", 2)), 30, "the load answered by (v1, 2)", watch=[loader])
            report = worker.run_round()  # both items embedded by the major version
            assert report is not None and report.published is not None and report.published.swapped
            wait_until(answered_by(("v2", 0)), 30, "the load answered by (v2, 0)", watch=[loader])
            _write_clicks(settings, 3000, [10**13 + 3], seed=3, first_offset=2000)
            assert fast.step() is not None
            wait_until(answered_by(("v2", 1)), 30, "the load answered by (v2, 1)", watch=[loader])
            target, _ = worker.rollback()  # back to (v1, 2)
            assert target == f"{alias}_v1"
            # the engine picks the rollback up within its check interval
            rolled = wait_until(answered_by(("v1", 2), len(replies)), 30, "the rollback answering", watch=[loader])
            assert rolled is not None and rolled.collection == store.resolve_alias(alias) == target  # the alias
        finally:
            loading = False
        loader.join(30)  # raises what the load thread raised (a failed _ask, a hang)
        again = fast.step()  # v1 never knew the third item: it is added to the rolled-back version too
        assert again is not None and again.added == [10**13 + 3] and again.version == "v1"
        counted = registry.get_sample_value("mindstream_freshness_new_item_seconds_count")
        assert counted == 3, f"{counted} new-item freshness samples for 3 items (one per item, not per version)"
        seen = {(r.model_version, r.generation) for r in replies}
        assert seen == {("v1", 0), ("v1", 1), ("v1", 2), ("v2", 0), ("v2", 1)}, seen
        exact = {
            key: _exact(store, settings, next(r for r in replies if (r.model_version, r.generation) == key), 10)
            for key in seen
        }
        wrong = [
            (r.model_version, r.generation) for r in replies if r.items[0] != exact[(r.model_version, r.generation)]
        ]
        assert not wrong, f"{len(wrong)} of {len(replies)} replies differ from their (version, generation): {wrong[:3]}"
        assert all(r.collection == f"{alias}_{r.model_version}" for r in replies), "a reply named another collection"


def test_past_its_caps_the_fast_path_leaves_new_items_to_the_round_and_new_segments_to_the_default(
    settings: Settings, base: tuple[Checkpoint, Sequences], milvus_uri: str
) -> None:
    """``fast_path_max_pending`` 2 and ``max_segments`` 1: of three new items the first two seen are added
    (the one of the second segment in the default partition), the third waits for the major round, which
    embeds it, in its segment's partition: nothing is lost, and no partition is created past the cap."""
    settings = settings.model_copy(
        update={"refresh": settings.refresh.model_copy(update={"fast_path_max_pending": 2, "max_segments": 1})}
    )
    alias = settings.milvus.alias
    first, second, third = (10**13 + n for n in (1, 2, 3))
    events, ts = [], 0
    for user, item, segment in [(1000 + n, first, "eu") for n in range(4)] + [
        (1010 + n, item, segment) for n in range(3) for item, segment in ((second, "us"), (third, "eu"))
    ]:
        for known in (1, 2, 3, 4, 5):
            ts += 1
            events.append(ClickEvent(event_id=f"e{ts}", user_id=user, item_id=known, ts=ts))
        ts += 1
        events.append(ClickEvent(event_id=f"e{ts}", user_id=user, item_id=item, ts=ts, segment=segment))
    with VectorStore(milvus_uri, settings.milvus) as store, StateReader(settings.state_dir, "clicks") as reader:
        registry = CollectorRegistry()
        metrics = RefreshMetrics(registry)
        worker = RefreshWorker(settings, store, reader, replay=base[1], metrics=metrics)
        worker.bootstrap(base[0])
        part = PartitionStore.open(settings.state_dir, "clicks", 0)
        part.apply(events, "clicks", 0, last_offset=len(events) - 1)
        part.close()
        fast = FastPath(settings, store, reader, cursor=Cursor(), metrics=metrics)
        report = fast.step()
        assert report is not None and sorted(report.added) == [first, second]
        assert list(fast.pending) == [first, second]
        assert registry.get_sample_value("mindstream_fast_path_pending_items") == 2
        assert registry.get_sample_value("mindstream_refresh_new_items_deferred_total", {"path": "fast_path"}) == 1
        assert sorted(store.list_segments(f"{alias}_v1")) == sorted(["all", "s_eu"])  # no partition for "us"
        assert store.count(f"{alias}_v1", segment="s_eu") == 1

        round_report = worker.run_round()
        assert round_report is not None and round_report.published is not None and round_report.published.swapped
        assert round_report.deferred_items == 0
        assert store.count(f"{alias}_v2") == 43  # the third item too: the round took every click
        assert sorted(store.list_segments(f"{alias}_v2")) == sorted(["all", "s_eu"])
        assert store.count(f"{alias}_v2", segment="s_eu") == 2  # first and third
        assert fast.step() is None and not fast.pending  # v2 knows all three: the places are given back
        assert registry.get_sample_value("mindstream_refresh_segments") == 1
        assert registry.get_sample_value("mindstream_refresh_segments_overflow_total") == 3  # the clicks on "us"
        worker.close()
        fast.close()
