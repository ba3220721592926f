"""Retention of the ingest state: exactly the last N clicks per user plus the training buffer,
against a plain Python model of the same events; reads, recall, restarts and the disk file."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from model.config import MindConfig
from model.serving import ServingTower
from schemas.messages import ClickEvent, RecallReply, RecallRequest
from tests.workers.exact_search import exact_search
from workers.infra.vector_store import SearchResult
from workers.ingest.retention import Retention
from workers.ingest.state_reader import Cursor, StateReader
from workers.ingest.state_store import SCHEMA_VERSION, PartitionStore, RetentionPolicy, partition_path
from workers.recall.engine import RecallEngine
from workers.refresh.state import RefreshState
from workers.settings import RefreshSettings, StateRetentionSettings

TOPIC = "clicks"


@dataclass(frozen=True)
class Row:
    seq: int
    user: int
    item: int
    ts: int


def _events(rng: np.random.Generator, start: int, n: int, users: int) -> list[ClickEvent]:
    """Clicks with few distinct event times (ties broken by arrival) and some late arrivals."""
    out = []
    for k in range(start, start + n):
        ts = 1000 + k // 3 - (int(rng.integers(0, 40)) if rng.random() < 0.1 else 0)
        out.append(ClickEvent(event_id=f"e{k}", user_id=int(rng.integers(1, users + 1)), item_id=k + 1, ts=ts))
    return out


def _rows(store: PartitionStore) -> list[Row]:
    rows = store._conn.execute("SELECT seq, user_id, item_id, ts FROM events ORDER BY seq").fetchall()
    return [Row(*r) for r in rows]


def _model_kept(all_rows: Sequence[Row], policy: RetentionPolicy, consumed: int) -> set[int]:
    """The kept set computed from every event ever applied: per user the newest ``history`` by
    (ts, seq), plus every seq after the boundary."""
    last = max(r.seq for r in all_rows)
    boundary = policy.boundary(last, consumed)
    by_user: dict[int, list[Row]] = defaultdict(list)
    for r in all_rows:
        by_user[r.user].append(r)
    kept = {r.seq for r in all_rows if r.seq > boundary}
    for rows in by_user.values():
        rows.sort(key=lambda r: (r.ts, r.seq), reverse=True)
        kept.update(r.seq for r in rows[: policy.history])
    return kept


def _drain(store: PartitionStore, policy: RetentionPolicy, consumed: int) -> int:
    steps = 0
    while store.retain(policy, consumed).pending:
        steps += 1
        assert steps < 100_000
    return steps


@pytest.mark.parametrize(
    "policy",
    [
        RetentionPolicy(history=5, window=50, batch=37),
        RetentionPolicy(history=1, window=1, batch=7),
        RetentionPolicy(history=20, window=30, max_unconsumed=200, batch=1000),
    ],
)
def test_retention_keeps_exactly_the_last_n_per_user_and_the_window(tmp_path: Path, policy: RetentionPolicy) -> None:
    rng = np.random.default_rng(11)
    store = PartitionStore.open(tmp_path, TOPIC, 0)
    everything: list[Row] = []
    consumed = 0
    n = 0
    for batch in range(40):
        events = _events(rng, n, 97, users=60)
        n += len(events)
        store.apply(events, TOPIC, 0, last_offset=n)
        everything = _rows_seen(everything, store)
        if batch % 3 == 0:  # the refresh consumed up to here (sometimes behind, sometimes ahead of the window)
            consumed = max(consumed, max(r.seq for r in everything) - int(rng.integers(0, 300)))
        store.retain(policy, consumed)  # one bounded step between batches, as the worker does
        kept_now = {r.seq for r in _rows(store)}
        assert kept_now >= _model_kept(everything, policy, consumed), "a kept row was deleted"
    _drain(store, policy, consumed)
    assert {r.seq for r in _rows(store)} == _model_kept(everything, policy, consumed)
    assert store.event_count() == len(everything), "event_count counts every event ever applied"
    deleted, _, _ = store.retention_progress()
    assert deleted == len(everything) - len(_rows(store)) > 0
    store.close()


def _rows_seen(seen: list[Row], store: PartitionStore) -> list[Row]:
    """Every row ever applied: those seen before plus the file's rows with a larger seq."""
    top = seen[-1].seq if seen else 0
    return seen + [r for r in _rows(store) if r.seq > top]


def test_reads_and_the_training_buffer_are_unchanged_by_retention(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    store = PartitionStore.open(tmp_path, TOPIC, 0)
    store.apply(_events(rng, 0, 6000, users=40), TOPIC, 0, last_offset=6000)
    consumed = 4000
    users = list(range(1, 45))
    policy = RetentionPolicy(history=30, window=500, batch=250)
    with StateReader(tmp_path, TOPIC) as reader:
        before = {m: reader.histories(users, m) for m in (1, 20, 30)}
        buffer_before, cursor_before = reader.events_since(Cursor({store.path.name: consumed}))
        count_before = reader.event_count()
        whole_before = len(reader.history(3, 10_000))
        _drain(store, policy, consumed)
        assert store.retention_progress()[0] > 3000
        for maxlen, histories in before.items():
            assert reader.histories(users, maxlen) == histories
        assert reader.events_since(Cursor({store.path.name: consumed})) == (buffer_before, cursor_before)
        assert reader.event_count() == count_before == 6000
        assert 30 <= len(reader.history(3, 10_000)) < whole_before
    store.close()


class _ExactStore:
    """Exact inner-product search over a table whose row i is item id i (row 0 is padding)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def search(
        self,
        name: str,
        queries: np.ndarray,
        top_k: int,
        *,
        with_versions: bool = True,
        max_generation: int | None = None,
    ) -> SearchResult:
        return exact_search(self.table, queries, top_k)


@dataclass(frozen=True)
class _Served:
    version: str
    collection: str
    tower: ServingTower
    generation: int = 0
    max_generation: int | None = None


class _Live:
    def __init__(self, served: _Served) -> None:
        self.served = served

    def current(self, *, force: bool = False) -> _Served:
        return self.served


def test_a_recall_by_user_ids_is_the_same_before_and_after_retention(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    items, dim, k, maxlen = 400, 8, 4, MindConfig().maxlen
    table = rng.standard_normal((items + 1, dim)).astype(np.float32)
    tower = ServingTower(
        table,
        rng.standard_normal((dim, dim)).astype(np.float32),
        rng.standard_normal((k, maxlen)).astype(np.float32),
        iters=3,
        model_version="v1",
    )
    store = PartitionStore.open(tmp_path, TOPIC, 0)
    events = [
        ClickEvent(event_id=f"e{n}", user_id=int(rng.integers(1, 30)), item_id=int(rng.integers(1, items + 1)), ts=n)
        for n in range(15_000)
    ]
    store.apply(events, TOPIC, 0, last_offset=15_000)
    requests = [RecallRequest(user_ids=[u, u + 1], top_k=25) for u in range(1, 31, 2)]
    with StateReader(tmp_path, TOPIC) as reader:
        engine = RecallEngine(_Live(_Served("v1", "items_v1", tower)), _ExactStore(table), reader)
        before = engine.answer(requests)
        assert all(isinstance(r, RecallReply) and r.items for r in before)
        _drain(store, RetentionPolicy(history=StateRetentionSettings().history, window=100), consumed=15_000)
        assert store.retention_progress()[0] > 0
        after = engine.answer(requests)
        assert [r.model_dump(exclude={"took_ms"}) for r in after] == [r.model_dump(exclude={"took_ms"}) for r in before]
    store.close()


def test_the_default_history_covers_every_reader() -> None:
    """The refresh's training histories, the tower and the fast path's co-click reads (mind.maxlen)."""
    assert StateRetentionSettings().history >= max(RefreshSettings().train_history, MindConfig().maxlen)


def test_restart_after_retention_resumes_offsets_and_the_dedupe_window(tmp_path: Path) -> None:
    window = 300
    rng = np.random.default_rng(2)
    events = _events(rng, 0, 2000, users=25)
    plain = PartitionStore.open(tmp_path / "plain", TOPIC, 0, dedupe_window=window)
    kept = PartitionStore.open(tmp_path / "kept", TOPIC, 0, dedupe_window=window)
    for lo in range(0, 2000, 250):
        for store in (plain, kept):
            store.apply(events[lo : lo + 250], TOPIC, 0, last_offset=lo + 249)
    _drain(kept, RetentionPolicy(history=3, window=10, batch=100), consumed=2000)
    assert kept.retention_progress()[0] > 1500
    plain.close()
    kept.close()
    plain = PartitionStore.open(tmp_path / "plain", TOPIC, 0, dedupe_window=window)
    kept = PartitionStore.open(tmp_path / "kept", TOPIC, 0, dedupe_window=window)
    assert kept.last_offset(TOPIC, 0) == plain.last_offset(TOPIC, 0) == 1999
    assert len(kept._seen) == len(plain._seen) == window, "the restart reads the same dedupe window"
    # Every copy re-sent after the restart is a duplicate for both or new for both.
    for n in range(0, 2000, 7):
        assert kept.apply([events[n]], TOPIC, 0, 2000 + n) == plain.apply([events[n]], TOPIC, 0, 2000 + n)
    assert kept.event_count() == plain.event_count()
    kept.close()
    plain.close()


_CRASHER = """
import sys, time
from pathlib import Path
from workers.ingest.state_store import PartitionStore, RetentionPolicy
store = PartitionStore.open(Path(sys.argv[1]), "clicks", 0, dedupe_window=int(sys.argv[2]))
policy = RetentionPolicy(history=4, window=20, batch=int(sys.argv[3]))
print("ready", flush=True)
while True:
    store.retain(policy, consumed=int(sys.argv[4]))
"""


def _deleted_so_far(path: Path) -> int:
    """Rows the retention passes committed as deleted, read beside the writer (WAL: readers never block)."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
        return int(conn.execute("SELECT deleted FROM retention WHERE id = 0").fetchone()[0])


def test_a_kill_in_the_middle_of_a_retention_pass_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    window, consumed = 1500, 2500
    rng = np.random.default_rng(4)
    events = _events(rng, 0, 3000, users=50)
    store = PartitionStore.open(tmp_path, TOPIC, 0, dedupe_window=window)
    store.apply(events, TOPIC, 0, last_offset=2999)
    everything = _rows(store)
    store.close()
    policy = RetentionPolicy(history=4, window=20, batch=3)
    expected = _model_kept(everything, policy, consumed)
    to_delete = len(everything) - len(expected)
    path = partition_path(tmp_path, TOPIC, 0)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    for quarter in (1, 2, 3):  # each kill lands once the pass is a quarter further, mid-pass
        target = to_delete * quarter // 4
        proc = subprocess.Popen(
            [sys.executable, "-c", _CRASHER, str(tmp_path), str(window), "3", str(consumed)],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            deadline = time.monotonic() + 60
            while _deleted_so_far(path) < target:
                assert proc.poll() is None and time.monotonic() < deadline, "the pass stopped short"
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        store = PartitionStore.open(tmp_path, TOPIC, 0, dedupe_window=window)
        left = {r.seq for r in _rows(store)}
        assert left >= expected, "a row of the kept set was lost"
        assert left != expected, f"kill {quarter} came after the pass had finished: it interrupted nothing"
        assert store.retention_progress()[0] == len(everything) - len(left), "deletions counted != rows gone"
        assert store.event_count() == 3000
        store.close()
    store = PartitionStore.open(tmp_path, TOPIC, 0, dedupe_window=window)
    assert store.retention_progress()[0] >= to_delete * 3 // 4, "the killed passes did their part of the work"
    _drain(store, policy, consumed)
    assert {r.seq for r in _rows(store)} == expected
    assert store.retention_progress()[0] == to_delete
    assert store.last_offset(TOPIC, 0) == 2999
    # Redelivery of the dedupe window's events after the kills: every one is a duplicate.
    assert store.apply(events[-window:], TOPIC, 0, 3100) == 0
    assert store.apply([ClickEvent(event_id="new", user_id=1, item_id=1, ts=10_000)], TOPIC, 0, 3101) == 1
    assert store.event_count() == 3001
    store.close()


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def test_the_file_shrinks_after_retention_of_most_of_its_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    store = PartitionStore.open(tmp_path, TOPIC, 0, dedupe_window=1000)
    for lo in range(0, 60_000, 10_000):
        store.apply(_events(rng, lo, 10_000, users=100), TOPIC, 0, last_offset=lo + 9999)
    store.close()
    path = partition_path(tmp_path, TOPIC, 0)
    full = _disk_bytes(path)
    store = PartitionStore.open(tmp_path, TOPIC, 0, dedupe_window=1000)
    policy = RetentionPolicy(history=10, window=1000, batch=2000, vacuum_pages=256)
    _drain(store, policy, consumed=60_000)
    while store.give_back(256):  # the last steps' free pages
        pass
    rows = store._conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert rows <= 100 * 10 + 1000
    store.close()  # the last connection checkpoints the WAL into the (now shorter) file
    small = _disk_bytes(path)
    assert small < full * 0.15, (full, small)


def test_a_schema_2_file_is_switched_to_incremental_vacuum(tmp_path: Path) -> None:
    path = partition_path(tmp_path, TOPIC, 0)
    store = PartitionStore.open(tmp_path, TOPIC, 0)
    store.apply(_events(np.random.default_rng(1), 0, 100, users=5), TOPIC, 0, last_offset=99)
    conn = store._conn
    conn.execute("DROP TABLE digests")
    conn.execute("DROP TABLE retention")
    conn.execute("PRAGMA auto_vacuum=NONE")
    conn.execute("VACUUM")
    conn.execute("PRAGMA user_version=2")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    store.close()
    with StateReader(tmp_path, TOPIC) as reader:
        assert reader.event_count() == 100, "a reader of a file not migrated yet counts its rows"
    store = PartitionStore.open(tmp_path, TOPIC, 0)
    assert store._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert store._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.event_count() == 100
    store.close()
    assert path.exists()


def test_the_worker_step_reads_the_refresh_cursor(tmp_path: Path) -> None:
    settings = StateRetentionSettings(history=2, window=5, batch=10_000, interval_s=60.0)
    retention = Retention.for_state_dir(settings, tmp_path)
    store = PartitionStore.open(tmp_path, TOPIC, 0)
    store.apply(_events(np.random.default_rng(3), 0, 400, users=4), TOPIC, 0, last_offset=399)
    (step,) = retention.step([store], now=0.0)
    assert step.deleted == 0 and step.boundary == 0, "no refresh state: nothing counts as consumed"
    assert retention.step([store], now=1.0) == [], "a caught-up store waits interval_s"
    state = RefreshState(cursor=Cursor({store.path.name: 300}).to_json())
    state.save(RefreshState.file(tmp_path / "refresh"))
    everything = _rows(store)
    (step,) = retention.step([store], now=61.0)
    assert step.boundary == 300 and step.deleted > 0 and not step.pending
    assert {r.seq for r in _rows(store)} == _model_kept(everything, retention.policy, 300)
    store.close()


def test_a_worker_call_repeats_steps_while_rows_are_left_and_the_budget_lasts(tmp_path: Path) -> None:
    store = PartitionStore.open(tmp_path, TOPIC, 0)
    store.apply(_events(np.random.default_rng(6), 0, 6000, users=300), TOPIC, 0, last_offset=5999)
    RefreshState(cursor=Cursor({store.path.name: 6000}).to_json()).save(RefreshState.file(tmp_path / "refresh"))
    everything = _rows(store)
    slow = Retention.for_state_dir(StateRetentionSettings(history=5, window=10, batch=20, budget_s=1e-9), tmp_path)
    (first,) = slow.step([store], now=0.0)
    assert first.pending, "one step per call once the budget is spent"
    fast = Retention.for_state_dir(StateRetentionSettings(history=5, window=10, batch=20, budget_s=60.0), tmp_path)
    steps = fast.step([store], now=0.0)
    assert len(steps) > 10 and not steps[-1].pending
    assert {r.seq for r in _rows(store)} == _model_kept(everything, fast.policy, 6000)
    assert fast.deleted + slow.deleted == store.retention_progress()[0] == 6000 - len(_rows(store))
    store.close()
