"""Delta publication: the diff (pure) and rounds written into the live collection of the real embedded Milvus:
what is written, the stated version guarantee, withdrawal, rollback and repair after a crashed write."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from model.checkpoint import Checkpoint, open_checkpoint
from model.data.types import Sequences
from model.export import item_table
from model.train import Trainer, train
from tests.workers.ingest.test_history_store_contract import require_redis_server
from workers.infra.redis_server import RedisServer
from workers.infra.row_keys import OPEN
from workers.infra.vector_store import Rows, VectorStore
from workers.ingest.history_store import open_reader, open_writer
from workers.ingest.state_reader import StateReader
from workers.recall.live_model import LiveModel
from workers.refresh.delta import diff
from workers.refresh.generations import Generations
from workers.refresh.live_writer import FAST_PATH_SLOTS, DeltaUnderWay, LiveWriter, NoRollback, Published
from workers.refresh.publish import VerifyError
from workers.refresh.worker import RefreshWorker
from workers.settings import EvalSettings, MilvusSettings, RefreshSettings, Settings, StateSettings

from .test_worker import MIND, TRAIN, _click, _cluster_seqs

THRESHOLD = 0.1
ROUND_THRESHOLD = 0.3  # the tiny model moves most rows by 10-50% in a round: some are written, some not


def _published(ids: list[int], vectors: np.ndarray, segments: list[str] | None = None) -> Published:
    segs = segments or ["all"] * len(ids)
    by: dict[str, Rows] = {}
    for s in sorted(set(segs)):
        at = [i for i, x in enumerate(segs) if x == s]
        by[s] = Rows.of(np.array(ids)[at], vectors[at], "v1", 0)
    return Published.of(3, by, vectors.shape[1])


def test_diff_writes_new_moved_and_moved_segment_items_and_withdraws_expired_ones() -> None:
    old = np.eye(6, 4, dtype=np.float32)[:6] + 1.0  # six published items 10..60, norm ~2.2
    table = _published([10, 20, 30, 40, 50, 60], old)
    new_ids = np.array([10, 20, 30, 40, 70])  # 50 expired (the vocabulary holds it), 60 unknown to it
    vectors = np.vstack([old[0], old[1] * 1.05, old[2] * 1.5, old[3], np.ones(4)]).astype(np.float32)
    partitions = np.array(["all", "all", "all", "eu", "all"], dtype=object)
    known = np.array([True, True, True, True, True, False])  # per published item: 60 came by the fast path
    delta = diff(table, new_ids, vectors, partitions, THRESHOLD, known)
    assert new_ids[delta.write].tolist() == [30, 40, 70]  # 20 moved 5% < 10%: kept; 40 changed segment
    assert delta.withdrawn.tolist() == [50] and delta.new_items == 1
    assert diff(table, new_ids, vectors, partitions, 0.0, known).write.tolist() == [1, 2, 3, 4]


def test_drift_is_measured_against_the_published_row_so_it_cannot_build_up() -> None:
    row = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    table = _published([7], row)
    drifted = row.copy()
    for _ in range(3):  # three rounds of 4% each: the third passes 10% against what is published
        drifted = drifted + np.array([[0.0, 0.04, 0.0, 0.0]], dtype=np.float32)
        written = diff(table, np.array([7]), drifted, np.array(["all"], dtype=object), THRESHOLD, np.array([True]))
    assert written.write.tolist() == [0]


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
        eval=EvalSettings(top_n=5),
        milvus=MilvusSettings(alias=f"d_{uuid.uuid4().hex[:10]}", index_type="FLAT"),
        refresh=RefreshSettings(
            train_batches=20, replay_users=40, probe_items=5, delta_threshold=ROUND_THRESHOLD, quality_users=0
        ),
    )


def _feed(settings: Settings, first: int, offset: int, new_items: range) -> int:
    """30 users in cluster 0 who also click ``new_items``, into the configured state backend; returns the
    next offset."""
    rng = np.random.default_rng(first)
    events, ts = [], offset
    for user in range(first, first + 30):
        for _ in range(12):
            ts += 1
            item = int(rng.choice(new_items)) if rng.random() < 0.5 else int(rng.integers(1, 11))
            events.append(_click(f"e{ts}", user, item, ts))
    part = open_writer(settings.state, settings.state_dir, "clicks", 0)
    part.apply(events, "clicks", 0, last_offset=offset + len(events) - 1)
    part.close()
    return offset + len(events)


def _visible(store: VectorStore, collection: str, generation: int) -> dict[int, np.ndarray]:
    rows = store.rows_where(collection, store.visible_at(collection, generation))
    return {int(i): v for r in rows.values() for i, v in zip(r.item_ids.tolist(), r.vectors, strict=True)}


def test_a_round_writes_only_what_moved_into_the_live_collection_and_rolls_back_in_one_announcement(
    settings: Settings, base: tuple[Checkpoint, Sequences], milvus_uri: str
) -> None:
    base_ckpt, seqs = base
    alias = settings.milvus.alias
    with VectorStore(milvus_uri, settings.milvus) as store, StateReader(settings.state_dir, "clicks") as reader:
        worker = RefreshWorker(settings, store, reader, replay=seqs)
        worker.bootstrap(base_ckpt)
        epoch = f"{alias}_v1"
        assert store.resolve_alias(alias) == epoch and store.is_keyed(epoch)
        before = _visible(store, epoch, 0)
        live = LiveModel(store, worker.registry, check_every_s=0.0)
        assert live.current() is not None

        _feed(settings, 1000, 0, range(41, 46))
        report = worker.run_round()
        assert report is not None and report.error is None and report.published is not None, report
        published = report.published
        assert published.delta and store.resolve_alias(alias) == epoch  # no new collection, no swap
        g = FAST_PATH_SLOTS  # a delta is staged above the generations left to fast-path steps
        assert (published.version, published.generation) == ("v2", g)
        assert Generations.load(store, epoch).version == "v2"
        assert 5 <= published.rows < published.items == 45  # the new items and what moved, not all

        # The stated guarantee: every visible vector is v2's own or within the threshold of it.
        v2 = open_checkpoint(settings.models_dir, "v2")
        table, vocab = item_table(v2.load_net()), v2.vocab()
        visible = _visible(store, epoch, g)
        assert sorted(visible) == sorted(vocab.external(vocab.active_rows(now=0.0, ttl_s=None)).tolist())
        for item, vector in visible.items():
            own = table[vocab.rows(np.array([item]))[0]]
            assert np.linalg.norm(vector - own) <= ROUND_THRESHOLD * np.linalg.norm(vector) * (1 + 1e-5), item
        unchanged = [i for i in before if np.array_equal(visible[i], before[i])]
        assert len(unchanged) == 45 - published.rows  # untouched rows stay bit-identical

        served = live.current(force=True)
        assert served is not None and (served.version, served.generation, served.collection) == ("v2", g, epoch)

        # Rollback: one announcement; readers see v1's rows again; v2's rows are gone.
        target, was = worker.rollback()
        assert (target, was) == (f"{epoch}@v1", f"{epoch}@v2")
        assert _visible(store, epoch, 0).keys() == before.keys()
        assert all(np.array_equal(_visible(store, epoch, 0)[i], before[i]) for i in before)
        assert store.count(epoch) == 40  # rows of generation 1 deleted, the rows they closed reopened
        served = live.current(force=True)
        assert served is not None and (served.version, served.generation) == ("v1", 0)
        with pytest.raises(NoRollback):
            worker.writer.rollback(epoch)  # one level deep; then the alias' previous epoch
        worker.close()


def test_a_write_that_fails_before_its_announcement_is_never_seen_and_is_repaired(
    settings: Settings, base: tuple[Checkpoint, Sequences], milvus_uri: str
) -> None:
    """What a kill -9 between the rows' writes and the announcement leaves: new rows of an unannounced
    generation and closed rows. Readers at the announced generation see exactly what they saw; the next
    write deletes and reopens them first."""
    base_ckpt, seqs = base
    with VectorStore(milvus_uri, settings.milvus) as store, StateReader(settings.state_dir, "clicks") as reader:
        worker = RefreshWorker(settings, store, reader, replay=seqs)
        worker.bootstrap(base_ckpt)
        epoch = f"{settings.milvus.alias}_v1"
        before = _visible(store, epoch, 0)
        paged = store.rows_where(epoch, "item_id > 0", batch=7)  # pages in key order: none lost, none twice
        assert sorted(i for r in paged.values() for i in r.item_ids.tolist()) == sorted(before)
        moved = Rows.of(np.array([1, 2]), np.ones((2, MIND.dim), dtype=np.float32), "v1", 0)

        def crash(generation: int) -> None:
            raise VerifyError("killed here")

        with pytest.raises(VerifyError):
            worker.writer.write(epoch, "v1", {"all": moved}, np.array([3]), crash)
        assert Generations.load(store, epoch).generation == 0
        after = _visible(store, epoch, 0)
        assert after.keys() == before.keys() and all(np.array_equal(after[i], before[i]) for i in before)
        assert store.count(epoch) == 42  # two rows nobody sees

        fresh = LiveWriter(store, MIND.dim)  # a restarted worker
        fresh.write(epoch, "v1", {"all": Rows.of(np.array([99]), np.ones((1, MIND.dim)), "v1", 0)})
        assert store.count(epoch, generation=1) == 41 and store.count(epoch) == 41
        assert not store.rows_where(epoch, f"gen_to > 0 and gen_to < {OPEN}")  # reopened
        assert store.count(epoch, generation=0) == 40
        fresh.write(epoch, "v1", {}, np.array([99]))  # withdrawn: gone from the next generation on
        assert 99 not in _visible(store, epoch, 2) and 99 in _visible(store, epoch, 1)
        worker.close()


def test_the_published_table_applies_writes_in_order_so_an_item_written_twice_counts_once() -> None:
    """The fast path re-embeds an item it added earlier: its first row must not survive in the table a
    delta compares against (a row count one too high failed every delta's verification)."""
    base = _published([1, 2, 3], np.eye(3, 4, dtype=np.float32))
    twice = Rows.of(np.array([9]), np.ones((1, 4)), "v1", 1)
    base.writes.append((np.array([9]), {"all": twice}))  # added (nothing to close)
    again = Rows.of(np.array([9, 2]), np.full((2, 4), 2.0), "v2", 2)
    base.writes.append((np.array([9, 2]), {"all": again}))  # re-embedded, and item 2 rewritten
    merged = base.merged()
    assert merged.item_ids.tolist() == [1, 2, 3, 9] and len(base) == 4
    found, at = merged.find(np.array([2, 9]))
    assert found.all() and (merged.vectors[at] == 2.0).all()


def test_fast_path_steps_go_on_while_a_delta_is_staged_and_its_commit_keeps_one_row_per_item(
    settings: Settings, base: tuple[Checkpoint, Sequences], milvus_uri: str
) -> None:
    """A delta is staged under a reserved generation; fast-path steps announce below it meanwhile (their
    readers never see the staged rows); the commit closes the fast-path row of an item the delta also
    writes, and counts the one it keeps. An item the delta closes is refused to the fast path until then."""
    base_ckpt, seqs = base
    with VectorStore(milvus_uri, settings.milvus) as store, StateReader(settings.state_dir, "clicks") as reader:
        worker = RefreshWorker(settings, store, reader, replay=seqs)
        worker.bootstrap(base_ckpt)
        epoch = f"{settings.milvus.alias}_v1"
        writer = worker.writer
        before = _visible(store, epoch, 0)
        dim = MIND.dim
        table = writer.snapshot(epoch)
        assert len(table) == 40 and table.generation == 0  # the epoch's rows, handed over by the build
        step = {"all": Rows.of(np.array([500]), np.ones((1, dim), dtype=np.float32), "v1", 0)}
        assert writer.write(epoch, "v1", step, items=[500]).generation == 1  # a step after the snapshot
        moved = Rows.of(np.array([1, 500]), np.full((2, dim), 3.0, dtype=np.float32), "v2", 0)  # 1 moved, 500 "new"
        staged = writer.stage(epoch, "v2", {"all": moved}, np.array([2]), table)  # 2 withdrawn
        assert staged.generation == 1 + FAST_PATH_SLOTS and staged.expected == 40  # 40 - 2 + 500 (vs the snapshot)
        assert _visible(store, epoch, 1).keys() == before.keys() | {500}  # nothing staged is seen

        with pytest.raises(DeltaUnderWay):  # the delta closes item 1: the fast path leaves it alone
            writer.write(epoch, "v1", {"all": Rows.of(np.array([1]), np.ones((1, dim)), "v1", 0)}, items=[1])
        step = {"all": Rows.of(np.array([600]), np.ones((1, dim), dtype=np.float32), "v1", 0)}
        assert writer.write(epoch, "v1", step, items=[600]).generation == 2  # a step while the delta is staged
        at_2 = _visible(store, epoch, 2)
        assert at_2.keys() == before.keys() | {500, 600} and np.array_equal(at_2[1], before[1])

        expected: list[int] = []
        written = writer.commit(staged, lambda generation, rows: expected.append(rows))
        assert written.generation == staged.generation and expected == [41]  # + 500's and 600's steps - 500's row
        at_g = _visible(store, epoch, written.generation)
        assert at_g.keys() == (before.keys() - {2}) | {500, 600}
        assert store.count(epoch, generation=written.generation) == 41  # one row per item: 500's step row closed
        assert np.allclose(at_g[500], 3.0) and np.allclose(at_g[1], 3.0) and np.allclose(at_g[600], 1.0)
        assert Generations.load(store, epoch).version == "v2"
        assert len(writer.published(epoch)) == 41  # the writer's table agrees with Milvus

        # a staged delta given up (a failed quality gate): the next write deletes its rows, reopens what it closed
        table = writer.snapshot(epoch)
        gone = writer.stage(
            epoch, "v3", {"all": Rows.of(np.array([3]), np.zeros((1, dim)), "v3", 0)}, np.array([4]), table
        )
        writer.abandon(epoch)
        after = writer.write(epoch, "v2", {"all": Rows.of(np.array([700]), np.ones((1, dim)), "v2", 0)}, items=[700])
        assert after.generation == written.generation + 1 < gone.generation
        assert store.count(epoch) == store.count(epoch, generation=after.generation) + 3  # rows of 1, 2 and 500 closed
        assert _visible(store, epoch, after.generation).keys() == at_g.keys() | {700}
        worker.close()


def test_a_delta_round_reads_its_clicks_from_the_redis_state_backend(
    settings: Settings, base: tuple[Checkpoint, Sequences], milvus_uri: str, tmp_path: Path
) -> None:
    """The refresh worker on ``state.backend = "redis"`` (what a worker on another host reads): the
    round trains on the clicks ingest wrote there, and the delta publishes their new items."""
    require_redis_server()
    with RedisServer(tmp_path / "redis") as server:
        settings = settings.model_copy(update={"state": StateSettings(backend="redis", redis_url=server.url)})
        base_ckpt, seqs = base
        with (
            VectorStore(milvus_uri, settings.milvus) as store,
            open_reader(settings.state, settings.state_dir, "clicks") as reader,
        ):
            worker = RefreshWorker(settings, store, reader, replay=seqs)
            worker.bootstrap(base_ckpt)
            _feed(settings, 1000, 0, range(41, 46))
            assert reader.event_count() == 360
            report = worker.run_round()
            assert report is not None and report.error is None and report.events == 360, report
            assert report.published is not None and report.published.delta
            epoch = f"{settings.milvus.alias}_v1"
            assert set(range(41, 46)) <= set(_visible(store, epoch, report.published.generation))
            assert not (settings.state_dir / "clicks").exists()  # nothing of the state on this host's disk
            worker.close()
