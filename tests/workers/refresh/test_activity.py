"""The refresh worker's activity gauge and counter (``mindstream_refresh_activity{activity}``,
``mindstream_refresh_activity_started_total{activity}``) without Milvus or Kafka: a real round (tiny
model, real training) against a fake store, reader and publisher that read the gauges while they
work; a fast-path step against a fake store that reads them while it inserts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import CollectorRegistry

from model.checkpoint import Checkpoint, open_checkpoint
from model.cold_start import FrozenModel
from model.config import MindConfig, TrainConfig
from model.data.types import HeldOut, Sequences
from model.train import Trainer, train
from model.vocab import ItemVocab
from workers.infra.vector_store import ProbeResult, VectorStore
from workers.ingest.state_reader import Cursor, StateReader
from workers.ingest.state_store import ClickColumns, StoredClick
from workers.refresh.fast_path import FastPath, _Live
from workers.refresh.metrics import ACTIVITIES, RefreshMetrics
from workers.refresh.publish import Publisher, PublishReport, VerifyError
from workers.refresh.state import RefreshState
from workers.refresh.worker import RefreshWorker, import_checkpoint
from workers.settings import MilvusSettings, RefreshSettings, Settings

MIND = MindConfig(dim=8, k_max=2, maxlen=6)
TRAIN = TrainConfig(batch_size=16, negatives=8, lr=0.02, seed=5)
NEW_ITEM = 10**13 + 7


def _activity(registry: CollectorRegistry) -> dict[str, tuple[float | None, float | None]]:
    """activity -> (gauge, started counter)."""
    return {
        a: (
            registry.get_sample_value("mindstream_refresh_activity", {"activity": a}),
            registry.get_sample_value("mindstream_refresh_activity_started_total", {"activity": a}),
        )
        for a in ACTIVITIES
    }


def _histories(users: int = 40) -> dict[int, list[int]]:
    """Users 1..``users`` click 8 items each among 1..40, in 4 clusters of 10."""
    rng = np.random.default_rng(0)
    return {u: [int((u % 4) * 10 + rng.integers(1, 11)) for _ in range(8)] for u in range(1, users + 1)}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    hist = _histories()
    seqs = Sequences.from_lists(list(hist), list(hist.values()), item_count=41)
    root = tmp_path_factory.mktemp("base")
    train(Trainer(seqs, MIND, TRAIN), batches=5, checkpoint_dir=root)
    return open_checkpoint(root, "latest")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        mind=MIND,
        train=TRAIN,
        milvus=MilvusSettings(alias=f"t_{uuid.uuid4().hex[:10]}"),
        refresh=RefreshSettings(train_batches=3, replay_users=0, cold_start="co_click", probe_items=2),
    )


def _columns(events: list[StoredClick]) -> ClickColumns:
    return ClickColumns(
        np.array([e.user_id for e in events], dtype=np.int64),
        np.array([e.item_id for e in events], dtype=np.int64),
        np.array([e.ts for e in events], dtype=np.int64),
        tuple((e.item_id, e.segment) for e in events if e.segment is not None),
    )


class FakeReader:
    """The ingest state: the users' histories and, once, the round's or step's clicks."""

    def __init__(self, histories: dict[int, list[int]], events: list[StoredClick]) -> None:
        self.known = histories
        self.events = events

    def events_since(self, cursor: Cursor, limit: int | None = None) -> tuple[list[StoredClick], Cursor]:
        events, self.events = self.events, []
        seen = cursor.positions.get("clicks-p0.sqlite", 0) + len(events)
        return events, Cursor({"clicks-p0.sqlite": seen})

    def columns_since(self, cursor: Cursor, limit: int | None = None) -> tuple[ClickColumns, Cursor]:
        events, cursor = self.events_since(cursor, limit)
        return _columns(events), cursor

    def event_count(self) -> int:
        return len(self.events)

    def histories(self, users: list[int], maxlen: int) -> list[list[int]]:
        return [self.known.get(u, [])[-maxlen:] for u in users]

    def history_arrays(self, users: list[int], maxlen: int) -> list[npt.NDArray[np.int64]]:
        return [np.asarray(h, dtype=np.int64) for h in self.histories(users, maxlen)]


@dataclass
class FakeStore:
    """The live alias and the writes of a fast-path step; ``seen`` holds the gauges at each insert."""

    live: str
    registry: CollectorRegistry | None = None
    seen: list[dict[str, tuple[float | None, float | None]]] = field(default_factory=list)
    props: dict[str, dict[str, str]] = field(default_factory=dict)  # collection properties (announcements)

    def resolve_alias(self, alias: str) -> str | None:
        return self.live

    def properties(self, name: str) -> dict[str, str]:
        return self.props.setdefault(name, {})

    def set_property(self, name: str, key: str, value: str) -> None:
        self.props.setdefault(name, {})[key] = value

    def list_collections(self, prefix: str = "") -> list[str]:
        return [self.live]

    def delete_generations_above(self, collection: str, generation: int) -> None:
        return None

    def is_keyed(self, collection: str) -> bool:
        return False  # rows keyed by item id: nothing to close, every round a new collection

    def write_rows(self, collection: str, rows: Any, segment: str = "all", *, upsert: bool = False) -> int:
        if self.registry is not None:
            self.seen.append(_activity(self.registry))
        return len(rows)

    def probe(self, collection: str, ids: np.ndarray, vectors: np.ndarray, **_: Any) -> Any:
        return ProbeResult(checked=len(ids))


class FakePublisher:
    """Publishes nothing; records the gauges while it publishes and seals, or fails verification."""

    def __init__(self, registry: CollectorRegistry, collection: str, fail: bool = False) -> None:
        self.registry = registry
        self.collection = collection
        self.fail = fail
        self.seen: dict[str, dict[str, tuple[float | None, float | None]]] = {}

    def cleanup(self, state: RefreshState) -> list[str]:
        self.seen["cleanup"] = _activity(self.registry)
        return []

    def publish(self, ckpt: Checkpoint, state: RefreshState, quality: HeldOut | None = None) -> PublishReport:
        self.seen["publish"] = _activity(self.registry)
        if self.fail:
            raise VerifyError("probe failed (fake)")
        return PublishReport(ckpt.manifest.version, self.collection, swapped=True)

    def seal(self, report: PublishReport) -> None:
        self.seen["seal"] = _activity(self.registry)


def _worker(
    settings: Settings, base: Checkpoint, events: list[StoredClick], *, fail: bool = False
) -> tuple[RefreshWorker, FakePublisher, CollectorRegistry]:
    registry = CollectorRegistry()
    live = f"{settings.milvus.alias}_v1"
    reader = FakeReader(_histories(), events)
    worker = RefreshWorker(
        settings,
        cast(VectorStore, FakeStore(live)),
        cast(StateReader, cast(Any, reader)),
        metrics=RefreshMetrics(registry),
    )
    import_checkpoint(base, worker.registry)  # v1, live through the fake alias
    publisher = FakePublisher(registry, f"{settings.milvus.alias}_v2", fail=fail)
    worker.publisher = cast(Publisher, publisher)
    return worker, publisher, registry


def _clicks(users: range) -> list[StoredClick]:
    return [StoredClick(f"e{u}", u, (u % 4) * 10 + 1, 1_000, None) for u in users]


def test_every_series_is_there_at_zero_from_the_start() -> None:
    registry = CollectorRegistry()
    RefreshMetrics(registry)
    assert _activity(registry) == {a: (0.0, 0.0) for a in ACTIVITIES}


def test_during_sets_the_gauge_while_the_block_runs_and_counts_it_started_even_when_it_fails() -> None:
    registry = CollectorRegistry()
    metrics = RefreshMetrics(registry)
    with metrics.during("swap"):
        assert _activity(registry)["swap"] == (1.0, 1.0)
        assert _activity(registry)["round"] == (0.0, 0.0)
    with pytest.raises(RuntimeError), metrics.during("swap"):
        raise RuntimeError("boom")
    assert _activity(registry)["swap"] == (0.0, 2.0)
    with pytest.raises(KeyError):
        metrics.during("nap").__enter__()


def test_a_round_is_busy_from_its_clean_up_to_its_end_and_the_swap_covers_publish_to_seal(
    settings: Settings, base: Checkpoint
) -> None:
    worker, publisher, registry = _worker(settings, base, _clicks(range(1, 41)))
    report = worker.run_round()
    assert report is not None and report.error is None and report.published is not None
    assert publisher.seen["cleanup"]["round"] == (1.0, 1.0)  # the round's first Milvus work
    assert publisher.seen["cleanup"]["swap"] == (0.0, 0.0)  # training still to come
    assert publisher.seen["publish"]["round"][0] == 1.0 and publisher.seen["publish"]["swap"] == (1.0, 1.0)
    assert publisher.seen["seal"]["swap"] == (1.0, 1.0)  # the flush is part of the swap
    assert publisher.seen["publish"]["fast_path"] == (0.0, 0.0)
    assert _activity(registry) == {"round": (0.0, 1.0), "swap": (0.0, 1.0), "fast_path": (0.0, 0.0)}


def test_a_rejected_version_ends_the_swap_and_a_failed_round_ends_the_round(
    settings: Settings, base: Checkpoint
) -> None:
    worker, publisher, registry = _worker(settings, base, _clicks(range(1, 41)), fail=True)
    report = worker.run_round()
    assert report is not None and report.error is not None and "fake" in report.error
    assert "seal" not in publisher.seen
    assert _activity(registry)["round"] == (0.0, 1.0) and _activity(registry)["swap"] == (0.0, 1.0)

    # a user with a single click: nothing to train on, the round raises before it publishes
    worker, publisher, registry = _worker(settings, base, [StoredClick("x", 999, 1, 1_000, None)])
    with pytest.raises(ValueError, match="no user"):
        worker.run_round()
    assert "publish" not in publisher.seen
    assert _activity(registry)["round"] == (0.0, 1.0) and _activity(registry)["swap"] == (0.0, 0.0)


def test_a_fast_path_step_is_busy_while_it_inserts_and_a_step_with_nothing_new_is_not_counted(
    settings: Settings, base: Checkpoint
) -> None:
    registry = CollectorRegistry()
    live = f"{settings.milvus.alias}_v1"
    store = FakeStore(live, registry)
    clicks = [StoredClick(f"n{u}", u, NEW_ITEM, 1_000, None) for u in (1, 5, 9)]  # cluster-1 fans click a new item
    reader = FakeReader(_histories(), clicks)
    fast = FastPath(
        settings,
        cast(VectorStore, store),
        cast(StateReader, cast(Any, reader)),
        metrics=RefreshMetrics(registry),
    )
    vocab = ItemVocab.identity(41)
    fast._live = _Live(live, "v1", vocab, FrozenModel.from_net(base.load_net(), "v1"), True)
    report = fast.step()
    assert report is not None and report.added == [NEW_ITEM]
    assert store.seen == [{"round": (0.0, 0.0), "swap": (0.0, 0.0), "fast_path": (1.0, 1.0)}]
    assert _activity(registry)["fast_path"] == (0.0, 1.0)
    assert fast.step() is None  # no new click, the item is announced: no candidate
    assert _activity(registry)["fast_path"] == (0.0, 1.0)
